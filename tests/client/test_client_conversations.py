"""Conversations over ChatClient's HTTP calls against a real server, on SQLite and on PostgreSQL:
rename() and conversations() (and the `conversation_updated` event of another tab), settings()
and models(), search() and its pages, export() as JSON (every branch) and Markdown (the current
one), feedback() and `Message.feedback` in history; each with its errors as `ChatError` codes."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable

import pytest

from server.client import ChatClient, ChatError, Conversation, Event, Feedback, SearchHit

ECHO = "You said: "


def word() -> str:
    """A word no other test (nor another run on the shared server) uses."""
    return "w" + uuid.uuid4().hex[:12]


async def code_of(call: Awaitable[object]) -> str:
    """The `ChatError` code that `call` raises."""
    with pytest.raises(ChatError) as error:
        await call
    return error.value.code


def test_a_snippet_as_plain_text_pieces() -> None:
    hit = SearchHit("c", "m", "user", "a &amp; <mark>Zebra</mark> &lt;b&gt;&quot;<mark>x</mark>", None)
    assert hit.parts() == [("a & ", False), ("Zebra", True), (' <b>"', False), ("x", True)]
    assert hit.text == 'a & Zebra <b>"x'


def test_rename_shows_in_conversations_and_another_tab_hears_it(server) -> None:
    async def main() -> None:
        async with ChatClient(server.ws_url) as chat, ChatClient(server.ws_url) as other:
            first = await chat.send("plans for the weekend")
            cid = first.conversation_id
            listed = (await chat.conversations()).items
            assert [c.id for c in listed] == [cid]
            assert listed[0].title_source == "words" and "plans" in listed[0].title.lower()

            async with ChatClient(server.ws_url, token=chat.token, sync=True) as tab:
                events: list[Event] = []

                async def listen() -> None:
                    async for event in tab.events():
                        events.append(event)
                        if event.type == "conversation_updated":
                            return

                listening = asyncio.create_task(listen())
                renamed = await chat.rename(cid, "Trip to the lake")
                assert (renamed.id, renamed.title, renamed.title_source) == (cid, "Trip to the lake", "user")
                await asyncio.wait_for(listening, 10)
                event = events[-1]
                assert event.conversation_id == cid
                assert event.conversation == renamed

            second = await chat.send("something else", conversation_id=None)
            page = await chat.conversations()
            assert [c.id for c in page.items] == [second.conversation_id, cid] and not page.has_more
            assert page.items[1] == renamed == await chat.conversation(cid)
            assert [c.id for c in (await chat.conversations(q="LAKE trip")).items] == [cid]
            assert (await chat.conversations(q="lake weekend")).items == []  # every word of q
            one = await chat.conversations(limit=1)
            assert [c.id for c in one.items] == [second.conversation_id] and one.has_more
            rest = await chat.conversations(before=one.items[0].id, limit=1)
            assert [c.id for c in rest.items] == [cid] and not rest.has_more

            assert (await other.conversations()).items == []  # nothing of another user's
            assert await code_of(other.rename(cid, "mine now")) == "not_found"
            assert await code_of(other.conversation(cid)) == "not_found"
            assert await code_of(chat.rename(cid, "x" * 201)) == "invalid"
            assert await code_of(chat.rename(cid, "   ")) == "invalid"
            assert (await chat.conversations(q="lake")).items == [renamed]  # nothing changed by those

    asyncio.run(main())


def test_settings_round_trip_and_the_models(server) -> None:
    async def main() -> None:
        async with ChatClient(server.ws_url) as chat, ChatClient(server.ws_url) as other:
            models = await chat.models()
            assert (models.ids, models.default) == (["echo"], "echo")
            cid = (await chat.send("hello")).conversation_id
            fresh = (await chat.conversations()).items[0]
            assert (fresh.id, fresh.model, fresh.system_prompt) == (cid, None, None)

            both = await chat.settings(cid, system_prompt="Answer briefly.", model="echo")
            assert (both.model, both.system_prompt) == ("echo", "Answer briefly.")
            assert (await chat.conversations()).items[0] == both == await chat.conversation()
            model_back = await chat.settings(cid, model=None)  # the prompt is left as it is
            assert (model_back.model, model_back.system_prompt) == (None, "Answer briefly.")
            prompt_back = await chat.settings(None, system_prompt=None)  # None: the current conversation
            assert (prompt_back.id, prompt_back.model, prompt_back.system_prompt) == (cid, None, None)
            assert (await chat.send("still answered")).content == ECHO + "still answered"

            assert await code_of(chat.settings(cid, model="no-such-model")) == "invalid"
            assert await code_of(chat.settings(cid, system_prompt="x" * 32_001)) == "invalid"
            assert await code_of(other.settings(cid, model="echo")) == "not_found"
            with pytest.raises(ValueError):
                await chat.settings(cid)  # nothing to change
            now = (await chat.conversations()).items[0]
            assert (now.id, now.title, now.model, now.system_prompt) == (cid, prompt_back.title, None, None)

    asyncio.run(main())


def test_search_finds_only_the_users_own_messages_page_by_page(server) -> None:
    async def main() -> None:
        shared, own = word(), word()
        async with ChatClient(server.ws_url) as chat, ChatClient(server.ws_url) as other:
            theirs = await other.send(f"{shared} belongs to the other user")
            mine = [await chat.send(f"note {i}: {shared} {own}", conversation_id=None) for i in range(3)]
            escaped = await chat.send(f"{shared} <b>bold</b> & more")
            my_ids = {r.reply_to for r in [*mine, escaped]} | {r.message_id for r in [*mine, escaped]}

            everything = await chat.search(shared, limit=200)
            assert not everything.has_more
            found = [h.message_id for h in everything.items]
            assert len(found) == len(set(found))
            assert {r.reply_to for r in [*mine, escaped]} <= set(found) <= my_ids
            assert theirs.reply_to not in found and theirs.message_id not in found
            assert [h.created_at for h in everything.items] == sorted((h.created_at for h in everything.items),
                                                                       reverse=True)  # newest first
            hit = next(h for h in everything.items if h.message_id == escaped.reply_to)
            assert hit.conversation_id == escaped.conversation_id and hit.role == "user"
            assert (shared, True) in hit.parts() and "<b>bold</b> & more" in hit.text
            assert "<b>" not in hit.snippet.replace("<mark>", "").replace("</mark>", "")  # escaped

            first = await chat.search(shared.upper(), limit=2)  # any case
            assert [h.message_id for h in first.items] == found[:2] and first.has_more
            second = await chat.search(shared, before=first.items[-1].message_id, limit=2)
            assert [h.message_id for h in second.items] == found[2:4]
            assert [h.message_id async for h in chat.search_all(shared, limit=3)] == found

            both_words = [h.message_id for h in (await chat.search(f"{own} {shared}")).items]
            assert {r.reply_to for r in mine} <= set(both_words) and escaped.reply_to not in both_words
            assert (await chat.search(own[:-1])).items == []  # whole words only
            assert [h.message_id for h in (await other.search(shared)).items if h.role == "user"] == [theirs.reply_to]

            for bad in ("", "   ", "x" * 201):
                assert await code_of(chat.search(bad)) == "invalid", bad

    asyncio.run(main())


def test_export_has_every_branch_as_json_and_the_current_one_as_markdown(server) -> None:
    async def main() -> None:
        async with ChatClient(server.ws_url) as chat, ChatClient(server.ws_url) as other:
            first = await chat.send("alpha question")
            second = await chat.send("beta follow-up")
            edited = await chat.edit(second.reply_to, "gamma follow-up")
            cid = first.conversation_id
            tree = await chat.tree(cid)

            exported = await chat.export(cid)
            conversation, messages = exported["conversation"], exported["messages"]
            assert conversation["id"] == cid and conversation["leaf_id"] == edited.message_id == tree.leaf_id
            assert Conversation.from_wire(conversation) == (await chat.conversations()).items[0]
            edges = sorted((m["id"], m["parent_id"]) for m in messages)
            assert len(messages) == 6 and edges == sorted((n.id, n.parent_id) for n in tree.items)
            times = [m["created_at"] for m in messages]
            assert times == sorted(times)  # oldest first
            contents = {m["id"]: m["content"] for m in messages}
            assert contents[second.reply_to] == "beta follow-up" and contents[edited.reply_to] == "gamma follow-up"
            assert contents[second.message_id] == ECHO + "beta follow-up"
            replies = [m for m in messages if m["role"] == "assistant"]
            assert {m["reply_to"] for m in replies} == {first.reply_to, second.reply_to, edited.reply_to}
            assert all("feedback" in m for m in replies)

            markdown = await chat.export(cid, format="markdown")
            assert isinstance(markdown, str)
            for text in ("alpha question", ECHO + "alpha question", "gamma follow-up", ECHO + "gamma follow-up"):
                assert text in markdown, text
            assert "beta" not in markdown  # the other branch
            assert markdown.index("alpha question") < markdown.index("gamma follow-up")

            assert await code_of(other.export(cid)) == "not_found"
            assert await code_of(other.export(cid, format="markdown")) == "not_found"
            assert await code_of(chat.export("no-such-conversation")) == "not_found"
            with pytest.raises(ValueError):
                await chat.export(cid, format="pdf")  # type: ignore[call-overload]

    asyncio.run(main())


def test_feedback_on_a_reply_shows_in_history(server) -> None:
    async def main() -> None:
        async with ChatClient(server.ws_url) as chat, ChatClient(server.ws_url) as other:
            reply = await chat.send("rate this")
            kept = await chat.send("and leave this one")
            assert await chat.feedback(reply, 1, "helpful") == Feedback(1, "helpful")
            messages = {m.id: m for m in await chat.history()}
            assert messages[reply.message_id].feedback == Feedback(1, "helpful")
            assert messages[kept.message_id].feedback is None and messages[reply.reply_to].feedback is None

            down = await chat.feedback(messages[reply.message_id], -1, "wrong after all")  # a Message
            assert down == Feedback(-1, "wrong after all")
            assert {m.id: m.feedback for m in await chat.history()}[reply.message_id] == down
            exported = {m["id"]: m for m in (await chat.export())["messages"]}
            assert Feedback.from_wire(exported[reply.message_id]["feedback"]) == down
            assert exported[kept.message_id]["feedback"] is None

            assert await code_of(chat.feedback(reply.reply_to, 1)) == "invalid"  # a user message
            assert await code_of(chat.feedback(kept.message_id, 2)) == "invalid"
            assert await code_of(chat.feedback(kept.message_id, 1, "x" * 2001)) == "invalid"
            assert await code_of(other.feedback(kept.message_id, 1)) == "not_found"  # someone else's
            assert await code_of(chat.feedback("no-such-message", 1)) == "not_found"
            assert {m.id: m.feedback for m in await chat.history()}[kept.message_id] is None  # none of them stored

    asyncio.run(main())
