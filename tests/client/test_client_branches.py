"""Branches through ChatClient against a real server: edit makes a sibling, regenerate a new reply
that becomes the leaf, select flips between branches, history(leaf=) reads another one, tree()
lists them all; a regenerate or an edit whose connection is cut mid-reply completes after the
reconnect with exactly one new message stored. On SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio

import pytest
from test_client_reconnect import ECHO, TEXT, TcpProxy, read_breaking

from server.client import ChatClient, ChatError, Message, Tree


@pytest.fixture
def server(db, databases, chat_server_factory):
    return chat_server_factory(CHAT_DATABASE_URL=databases.url(db))


@pytest.fixture
def slow_server(db, databases, chat_server_factory):
    """Echo with 150 ms before each delta: a reply takes about 1.5 s, time to cut it mid-way."""
    return chat_server_factory(CHAT_DATABASE_URL=databases.url(db), CHAT_ECHO_DELAY_MS="150")


def ids(messages: list[Message]) -> list[str]:
    return [m.id for m in messages]


def test_edit_makes_a_sibling_that_history_shows_with_its_siblings(server):
    async def main() -> None:
        async with ChatClient(server.ws_url) as chat:
            first = await chat.send("the question")
            second = await chat.send("a follow-up")
            before = await chat.history()
            assert before[2].id == second.reply_to and before[2].parent_id == first.message_id
            assert before[2].siblings == (second.reply_to,) and before[0].parent_id is None

            edited = await chat.edit(second.reply_to, "the follow-up, fixed")  # by id: looked up
            assert (edited.content, edited.status) == (ECHO + "the follow-up, fixed", "complete")
            assert edited.conversation_id == first.conversation_id and edited.reply_to != second.reply_to
            page = await chat.history_page()
            assert ids(page.messages) == [first.reply_to, first.message_id, edited.reply_to, edited.message_id]
            assert page.leaf_id == edited.message_id
            assert page.messages[2].parent_id == first.message_id
            assert page.messages[2].siblings == (second.reply_to, edited.reply_to)
            assert page.messages[3].siblings == (edited.message_id,) and page.messages[3].parent_id == edited.reply_to

            root = await chat.edit(page.messages[0], "another question")  # a Message, a root: a new root
            again = await chat.history_page()
            assert [m.content for m in again.messages] == ["another question", ECHO + "another question"]
            assert again.messages[0].parent_id is None
            assert again.messages[0].siblings == (first.reply_to, root.reply_to)
            assert root.conversation_id == first.conversation_id

            with pytest.raises(ValueError):
                await chat.edit(first.message_id, "not mine to edit")  # an assistant message

    asyncio.run(main())


def test_regenerate_select_history_of_a_leaf_and_the_tree(server):
    async def main() -> None:
        async with ChatClient(server.ws_url) as chat:
            first = await chat.send("hello")
            again = await chat.regenerate(first)  # from the Reply: the same user message
            assert (again.reply_to, again.status, again.content) == (first.reply_to, "complete", ECHO + "hello")
            assert again.message_id != first.message_id and again.conversation_id == first.conversation_id
            page = await chat.history_page()
            assert ids(page.messages) == [first.reply_to, again.message_id] and page.leaf_id == again.message_id
            assert page.messages[1].siblings == (first.message_id, again.message_id)

            assert await chat.select(first.message_id) == first.message_id  # back to the first reply
            page = await chat.history_page()
            assert ids(page.messages) == [first.reply_to, first.message_id] and page.leaf_id == first.message_id

            other = await chat.history_page(leaf=again.message_id)  # the other branch, without moving
            assert ids(other.messages) == [first.reply_to, again.message_id] and other.leaf_id == again.message_id
            assert ids(await chat.history(leaf=again.message_id)) == ids(other.messages)
            assert (await chat.history_page()).leaf_id == first.message_id

            assert await chat.select(first.reply_to) == again.message_id  # the newest leaf below it
            tree = await chat.tree()
            assert isinstance(tree, Tree) and tree.leaf_id == again.message_id
            assert [(n.id, n.role) for n in tree.items] == [
                (first.reply_to, "user"), (first.message_id, "assistant"), (again.message_id, "assistant")]
            assert [n.id for n in tree.replies_to(first.reply_to)] == [first.message_id, again.message_id]
            assert [n.id for n in tree.children(None)] == [first.reply_to]
            assert all(n.parent_id == first.reply_to for n in tree.children(first.reply_to))

            stream = chat.regenerate_stream(first.reply_to)  # by id, piece by piece
            pieces = [piece async for piece in stream]
            assert stream.reply is not None and "".join(pieces) == ECHO + "hello" == stream.reply.content
            assert stream.reply_to == first.reply_to
            tree = await chat.tree(first.conversation_id)
            assert len(tree.replies_to(first.reply_to)) == 3 and tree.leaf_id == stream.reply.message_id

    asyncio.run(main())


def test_a_regenerate_resent_with_its_client_id_makes_no_second_reply(server):
    async def main() -> None:
        async with ChatClient(server.ws_url) as chat:
            first = await chat.send("once")
            one = await chat.regenerate(first.reply_to, client_id="regen-once")
            two = await chat.regenerate(first.reply_to, client_id="regen-once")
            assert (two.message_id, two.content, two.reply_to) == (one.message_id, one.content, first.reply_to)
            assert len((await chat.tree()).replies_to(first.reply_to)) == 2

    asyncio.run(main())


def test_branch_operations_carry_the_contract_errors(server, slow_server):
    async def main() -> None:
        async with ChatClient(server.ws_url) as chat:
            first = await chat.send("hello")
            for target in ("no-such-message", first.message_id):  # unknown, and not a user message
                with pytest.raises(ChatError) as regen:
                    await chat.regenerate(target)
                assert regen.value.code == "not_found"
            with pytest.raises(ChatError) as select:
                await chat.select("no-such-message")
            assert select.value.code == "not_found"
            with pytest.raises(ChatError) as leaf:
                await chat.history(leaf="no-such-message")
            assert leaf.value.code == "not_found"
            with pytest.raises(ChatError) as tree:
                await chat.tree("no-such-conversation")
            assert tree.value.code == "not_found"
            assert (await chat.send("still usable")).ok

        async with ChatClient(slow_server.ws_url) as chat, ChatClient(slow_server.ws_url, token=chat.token) as tab:
            stream = chat.stream(TEXT)
            async for _ in stream:
                with pytest.raises(ChatError) as busy:  # another socket: a reply to it is in flight
                    await tab.regenerate(stream.reply_to or "")
                assert busy.value.code == "busy"
                break
            assert (await stream).status == "complete"

    asyncio.run(main())


def test_a_regenerate_cut_mid_reply_completes_after_reconnect_with_exactly_one_new_reply(slow_server):
    async def main() -> None:
        async with TcpProxy(slow_server.port) as proxy:
            async with ChatClient(f"ws://127.0.0.1:{proxy.port}/ws", timeout=60) as chat:
                first = await chat.send(TEXT)
                stream = chat.regenerate_stream(first, client_id="regen-through-a-drop")
                pieces = await read_breaking(stream, 3, proxy.cut)
                reply = stream.reply
                assert reply is not None and reply.status == "complete" and chat.reconnects == 1
                assert "".join(pieces) == ECHO + TEXT == reply.content  # nothing lost, nothing twice
                assert reply.reply_to == first.reply_to and reply.message_id != first.message_id
                assert reply.client_id == "regen-through-a-drop"
                tree = await chat.tree()
                replies = tree.replies_to(first.reply_to)
                assert [n.id for n in replies] == [first.message_id, reply.message_id]
                assert [n.status for n in replies] == ["complete", "complete"] and tree.leaf_id == reply.message_id
                assert len(tree.items) == 3

    asyncio.run(main())


def test_an_edit_cut_mid_reply_completes_after_reconnect_with_exactly_one_new_message(slow_server):
    async def main() -> None:
        async with TcpProxy(slow_server.port) as proxy:
            async with ChatClient(f"ws://127.0.0.1:{proxy.port}/ws", timeout=60) as chat:
                first = await chat.send("short")
                stream = chat.edit_stream(first.reply_to, TEXT, client_id="edit-through-a-drop")
                pieces = await read_breaking(stream, 3, proxy.cut)
                reply = stream.reply
                assert reply is not None and reply.status == "complete" and chat.reconnects == 1
                assert "".join(pieces) == ECHO + TEXT == reply.content
                tree = await chat.tree()
                roots = tree.children(None)
                assert [n.id for n in roots] == [first.reply_to, reply.reply_to]
                assert [n.id for n in tree.replies_to(reply.reply_to or "")] == [reply.message_id]
                assert len(tree.items) == 4 and tree.leaf_id == reply.message_id
                page = await chat.history_page()
                assert page.messages[0].client_id == "edit-through-a-drop"
                assert page.messages[0].siblings == (first.reply_to, reply.reply_to)

    asyncio.run(main())
