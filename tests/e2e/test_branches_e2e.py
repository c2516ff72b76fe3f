"""Branches end to end: edit (a message under an explicit parent), regenerate (a new reply to a
stored message), select (the branch through a message becomes current), the history frame and
GET .../messages as the path to the leaf, and GET .../tree; against real server processes over
loopback, on SQLite and PostgreSQL.

Also: ids that name nothing of the user's get not_found and store nothing; the model (a fake
OpenAI-compatible server) sees only the path; a regeneration cut by kill -9 is stored
interrupted, and its client_id resent gets a fresh reply beside it.
"""

from __future__ import annotations

import contextlib
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fake_llm import FakeLLM
from support.client import Client, Rest, Turn, aio, cid, poll, words
from support.servers import ServerProcess

ECHO = "You said: "
USER_KEYS = {"id", "role", "content", "status", "client_id", "created_at", "parent_id", "siblings"}
ASSISTANT_KEYS = USER_KEYS | {"reply_to", "model", "usage", "first_token_ms", "feedback"}


# -- helpers ---------------------------------------------------------------------------------------
async def regenerate(c: Client, reply_to: Any, client_id: str | None = None, timeout: float = 30) -> Turn:
    frame: dict[str, Any] = {"type": "regenerate", "reply_to": reply_to}
    if client_id is not None:
        frame["client_id"] = client_id
    await c.send(frame)
    return await c.collect(timeout)


async def select(c: Client, conversation_id: str, message_id: str) -> dict[str, Any]:
    await c.send({"type": "select", "conversation_id": conversation_id, "message_id": message_id})
    return await c.recv()


def tree_of(rest: Rest, conversation_id: str) -> dict[str, Any]:
    r = rest.http.get(f"/api/conversations/{conversation_id}/tree")
    assert r.status_code == 200, r.text
    return r.json()


def path_of(rest: Rest, conversation_id: str, **params: Any) -> dict[str, Any]:
    r = rest.messages(conversation_id, limit=200, **params)
    assert r.status_code == 200, r.text
    return r.json()


def ids(page: dict[str, Any]) -> list[str]:
    return [m["id"] for m in page["messages"]]


def by_id(tree: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {item["id"]: item for item in tree["items"]}


def assert_echo_turn(t: Turn, content: str) -> None:
    """start, the deltas, done: complete, the echo of `content`, answering the ack's message."""
    assert t.done is not None and t.done["status"] == "complete", t.frames
    assert t.start is not None and t.start["message_id"] == t.done["message_id"]
    assert t.done["content"] == t.text == ECHO + content
    assert t.start["reply_to"] == t.done["reply_to"] == t.ack["message_id"]


def assert_chain_intact(tree: dict[str, Any]) -> None:
    """Every parent is a stored message of the tree, stored before its child; every reply's
    parent is the message it answers; the leaf is a stored message."""
    seen: set[str] = set()
    for item in tree["items"]:
        assert item["parent_id"] is None or item["parent_id"] in seen, item
        if item["role"] == "assistant":
            assert item["parent_id"] == item["reply_to"], item
        else:
            assert "reply_to" not in item, item
        seen.add(item["id"])
    assert tree["leaf_id"] in seen


@contextlib.asynccontextmanager
async def sockets(server: ServerProcess) -> AsyncIterator[Callable[..., Awaitable[Client]]]:
    """open(**kw): a socket on `server` (a new user without a token), all closed at the end."""
    opened: list[Client] = []

    async def open_(**kw: Any) -> Client:
        c = await Client.open(server, **kw)
        opened.append(c)
        return c

    try:
        yield open_
    finally:
        for c in opened:
            await c.close()


# -- edit, history, ?leaf, tree ------------------------------------------------------------------------
@aio
async def test_an_edit_is_a_sibling_that_becomes_the_path_over_the_wire_and_http(server):
    async with sockets(server) as user:
        c = await user()
        rest = Rest(server, c.token)
        k1 = cid("q1")
        t1 = await c.complete("question one", client_id=k1, conversation_id=None)
        conv, m1, r1 = t1.ack["conversation_id"], t1.ack["message_id"], t1.done["message_id"]
        assert t1.ack == {"type": "ack", "client_id": k1, "conversation_id": conv, "message_id": m1,
                          "parent_id": None, "duplicate": False}
        assert t1.done == {"type": "done", "conversation_id": conv, "message_id": r1, "reply_to": m1,
                           "status": "complete", "content": ECHO + "question one"}
        assert_echo_turn(t1, "question one")

        t2 = await c.complete("question two", conversation_id=conv)
        m2, r2 = t2.ack["message_id"], t2.done["message_id"]
        assert t2.ack["parent_id"] == r1

        # The edit of question two: a child of r1, with no conversation_id (the parent's is used).
        k3 = cid("edit")
        t3 = await c.complete("question two, edited", client_id=k3, parent_id=r1)
        m3, r3 = t3.ack["message_id"], t3.done["message_id"]
        assert t3.ack == {"type": "ack", "client_id": k3, "conversation_id": conv, "message_id": m3,
                          "parent_id": r1, "duplicate": False}
        assert_echo_turn(t3, "question two, edited")

        # The history frame: the path root -> leaf, each message with its parent and its siblings.
        h = await c.history(conv)
        assert h["type"] == "history" and h["conversation_id"] == conv
        assert h["leaf_id"] == r3 and h["has_more"] is False
        assert ids(h) == [m1, r1, m3, r3]
        messages = {m["id"]: m for m in h["messages"]}
        for m in h["messages"]:
            assert set(m) == (ASSISTANT_KEYS if m["role"] == "assistant" else USER_KEYS), m
        assert [messages[i]["parent_id"] for i in (m1, r1, m3, r3)] == [None, m1, r1, m3]
        assert messages[m3]["siblings"] == [m2, m3]
        assert [messages[i]["siblings"] for i in (m1, r1, r3)] == [[m1], [r1], [r3]]
        assert messages[r3]["reply_to"] == m3 and messages[r3]["content"] == ECHO + "question two, edited"

        # GET .../messages: the same page as the frame.
        over_http = path_of(rest, conv)
        assert over_http == {k: v for k, v in h.items() if k != "type"}

        # The other branch, by its leaf, over HTTP and on the socket; the current leaf does not move.
        old = path_of(rest, conv, leaf=r2)
        assert ids(old) == [m1, r1, m2, r2] and old["leaf_id"] == r2
        assert {m["id"]: m["siblings"] for m in old["messages"]}[m2] == [m2, m3]
        old_frame = await c.history(conv, leaf=r2)
        assert {k: v for k, v in old_frame.items() if k != "type"} == old
        # A leaf in the middle of a path: the path up to it.
        assert ids(path_of(rest, conv, leaf=m2)) == [m1, r1, m2]

        # The tree: every message, oldest first, no contents, the current leaf.
        tree = tree_of(rest, conv)
        assert tree["leaf_id"] == r3
        assert [(i["id"], i["parent_id"], i["role"], i["status"]) for i in tree["items"]] == [
            (m1, None, "user", "complete"), (r1, m1, "assistant", "complete"), (m2, r1, "user", "complete"),
            (r2, m2, "assistant", "complete"), (m3, r1, "user", "complete"), (r3, m3, "assistant", "complete")]
        for item in tree["items"]:
            expected = {"id", "parent_id", "role", "status", "created_at"}
            if item["role"] == "assistant":
                expected.add("reply_to")
            assert set(item) == expected, item
            assert item["created_at"] == messages.get(item["id"], item)["created_at"]
        assert by_id(tree)[r3]["reply_to"] == m3 and by_id(tree)[r2]["reply_to"] == m2
        assert set(tree_of(rest, conv)) == {"leaf_id", "items"}

        # A message with no parent_id follows the current leaf: the edited branch.
        t4 = await c.complete("and then", conversation_id=conv)
        assert t4.ack["parent_id"] == r3
        assert ids(path_of(rest, conv)) == [m1, r1, m3, r3, t4.ack["message_id"], t4.done["message_id"]]


@aio
async def test_parent_null_is_a_new_root_of_the_named_conversation(server):
    async with sockets(server) as user:
        c = await user()
        rest = Rest(server, c.token)
        t1 = await c.complete("first try", conversation_id=None)
        conv, m1 = t1.ack["conversation_id"], t1.ack["message_id"]
        root = await c.complete("second try", conversation_id=conv, parent_id=None)
        assert root.ack["parent_id"] is None and root.ack["conversation_id"] == conv
        page = path_of(rest, conv)
        assert ids(page) == [root.ack["message_id"], root.done["message_id"]]
        assert page["messages"][0]["siblings"] == [m1, root.ack["message_id"]]
        assert [c["id"] for c in rest.conversations()] == [conv], "no new conversation"
        # Without a conversation_id, on a socket that has one: a new root there as well.
        again = await c.complete("third try", parent_id=None)
        assert again.ack["conversation_id"] == conv and again.ack["parent_id"] is None
        assert path_of(rest, conv)["messages"][0]["siblings"] == [m1, root.ack["message_id"], again.ack["message_id"]]


# -- regenerate ----------------------------------------------------------------------------------------
@aio
async def test_regenerate_adds_a_sibling_reply_that_becomes_the_leaf_and_its_client_id_is_idempotent(server):
    async with sockets(server) as user:
        c = await user()
        tab = await user(token=c.token, sync=True)  # the same user's other tab, on the same process
        rest = Rest(server, c.token)
        t1 = await c.complete("tell me a joke", conversation_id=None)
        conv, m1, r1 = t1.ack["conversation_id"], t1.ack["message_id"], t1.done["message_id"]
        first_on_tab = await tab.collect()
        assert first_on_tab.types()[0] == "message_added"

        kr = cid("regen")
        again = await regenerate(c, m1, kr)
        assert again.ack == {"type": "ack", "client_id": kr, "conversation_id": conv, "message_id": m1,
                             "regenerate": True, "duplicate": False}
        assert again.types()[:2] == ["ack", "start"] and again.types()[-1] == "done"
        assert_echo_turn(again, "tell me a joke")
        r2 = again.done["message_id"]
        assert r2 != r1
        assert again.start == {"type": "start", "conversation_id": conv, "message_id": r2, "reply_to": m1}
        assert again.done == {"type": "done", "conversation_id": conv, "message_id": r2, "reply_to": m1,
                              "status": "complete", "content": ECHO + "tell me a joke"}

        # The other tab hears the regeneration as a reply (no message_added: no message was added).
        heard = await tab.collect()
        assert heard.types()[0] == "start" and "message_added" not in heard.types(), heard.frames
        assert heard.done["message_id"] == r2 and heard.text == heard.done["content"]

        page = path_of(rest, conv)
        assert ids(page) == [m1, r2] and page["leaf_id"] == r2
        assert page["messages"][1]["siblings"] == [r1, r2] and page["messages"][1]["parent_id"] == m1
        tree = tree_of(rest, conv)
        assert tree["leaf_id"] == r2 and [i["id"] for i in tree["items"]] == [m1, r1, r2]
        assert by_id(tree)[r2]["reply_to"] == m1 and by_id(tree)[r2]["parent_id"] == m1

        # The same client_id again: that regeneration's reply, straight away; nothing stored.
        dup = await regenerate(c, m1, kr)
        assert dup.types() == ["ack", "done"], dup.frames
        assert dup.ack == {"type": "ack", "client_id": kr, "conversation_id": conv, "message_id": m1,
                           "regenerate": True, "duplicate": True}
        assert dup.done == again.done
        # client_ids are one namespace: a message sent with it is that regeneration.
        resent = await c.turn("some other text", client_id=kr, conversation_id=conv)
        assert resent.types() == ["ack", "done"], resent.frames
        assert resent.ack["duplicate"] is True and resent.ack["message_id"] == m1 and resent.ack["client_id"] == kr
        assert resent.done["message_id"] == r2
        assert tree_of(rest, conv) == tree

        # A regenerate with a client_id that a message used, or that named another message's
        # regeneration, is refused and changes nothing.
        t2 = await c.complete("second message", client_id=cid("m2"), conversation_id=conv)
        tree = tree_of(rest, conv)
        for reply_to, used in ((m1, t2.ack["client_id"]), (t2.ack["message_id"], kr)):
            refused = await regenerate(c, reply_to, used)
            assert refused.types() == ["error"] and refused.error["code"] == "invalid", refused.frames
            assert refused.error["client_id"] == used
        assert tree_of(rest, conv) == tree

        # Without a client_id: a new reply each time, each the leaf.
        plain = await regenerate(c, t2.ack["message_id"])
        assert plain.ack["client_id"] is None and plain.ack["duplicate"] is False
        assert_echo_turn(plain, "second message")
        assert path_of(rest, conv)["leaf_id"] == plain.done["message_id"]
        assert ids(path_of(rest, conv)) == [m1, r2, t2.ack["message_id"], plain.done["message_id"]]


@aio
async def test_a_message_resent_with_a_regenerates_client_id_gets_that_regenerations_reply(server):
    async with sockets(server) as user:
        c = await user()
        t1 = await c.complete("hello", conversation_id=None)
        m1 = t1.ack["message_id"]
        kr = cid("regen")
        mine = await regenerate(c, m1, kr)
        later = await regenerate(c, m1)  # another reply to the same message, after it
        assert later.done["message_id"] != mine.done["message_id"]
        again = await regenerate(c, m1, kr)
        assert again.types() == ["ack", "done"] and again.done["message_id"] == mine.done["message_id"]
        resent = await c.turn("hello", client_id=kr)
        assert resent.ack["duplicate"] is True and resent.ack["message_id"] == m1
        assert resent.ack.get("regenerate") is True, "answered as that regenerate's resend"
        assert resent.done["message_id"] == mine.done["message_id"], "the regeneration kr named, as for regenerate"


@aio
async def test_regenerate_while_a_reply_to_that_message_streams_is_busy_and_stores_nothing(slow_server):
    server = slow_server
    c = await Client.open(server)
    other = await Client.open(server, token=c.token)
    try:
        rest = Rest(server, c.token)
        content = "slow " + words(20)
        await c.message(content, client_id=cid(), conversation_id=None)
        started = await c.collect(stop_after_deltas=1)
        conv, m1 = started.ack["conversation_id"], started.ack["message_id"]
        k = cid("busy")
        busy = await regenerate(other, m1, k)
        assert busy.types() == ["error"] and busy.error["code"] == "busy" and busy.error["client_id"] == k
        rest_of_turn = await c.collect()
        r1 = rest_of_turn.done["message_id"]
        tree = tree_of(rest, conv)
        assert [i["id"] for i in tree["items"]] == [m1, r1] and tree["leaf_id"] == r1
        # The refusal recorded nothing under its client_id: sent again, it is a new regeneration.
        later = await regenerate(other, m1, k)
        assert later.ack["duplicate"] is False and later.done["status"] == "complete"
        assert tree_of(rest, conv)["leaf_id"] == later.done["message_id"]
    finally:
        await c.close()
        await other.close()


# -- select --------------------------------------------------------------------------------------------
@aio
async def test_a_selects_client_id_comes_back_in_its_answer_and_its_refusal(server):
    """An extension of select: without it a client could match a select's error to its request
    only by the order it sent them (a resume's error carries no client_id either)."""
    async with sockets(server) as user:
        c = await user()
        t = await c.complete("one", conversation_id=None)
        conv = t.ack["conversation_id"]
        await c.send({"type": "select", "conversation_id": conv, "message_id": t.ack["message_id"],
                      "client_id": "sel-ok"})
        assert await c.recv() == {"type": "selected", "conversation_id": conv, "leaf_id": t.done["message_id"],
                                  "client_id": "sel-ok"}
        await c.send({"type": "select", "conversation_id": conv, "message_id": "0" * 36, "client_id": "sel-bad"})
        refused = await c.recv()
        assert refused["type"] == "error" and refused["code"] == "not_found" and refused["client_id"] == "sel-bad"


@aio
async def test_select_makes_the_newest_leaf_below_a_message_current_and_tells_sync_tabs(server):
    async with sockets(server) as user:
        c = await user()
        rest = Rest(server, c.token)
        t1 = await c.complete("root question", conversation_id=None)
        conv, m1, r1 = t1.ack["conversation_id"], t1.ack["message_id"], t1.done["message_id"]
        a = await c.complete("branch A", conversation_id=conv)
        b = await c.complete("branch B", conversation_id=conv, parent_id=r1)
        b2 = await c.complete("B goes on", conversation_id=conv)
        assert b2.ack["parent_id"] == b.done["message_id"]
        tab = await user(token=c.token, sync=True)
        plain = await user(token=c.token)  # not ?sync=1: hears nothing

        sel = await select(c, conv, a.ack["message_id"])
        assert sel == {"type": "selected", "conversation_id": conv, "leaf_id": a.done["message_id"]}
        assert await tab.recv() == sel
        assert ids(path_of(rest, conv)) == [m1, r1, a.ack["message_id"], a.done["message_id"]]
        assert tree_of(rest, conv)["leaf_id"] == a.done["message_id"]
        h = await c.history(conv)
        assert h["leaf_id"] == a.done["message_id"] and ids(h)[-1] == a.done["message_id"]

        # From the root: at each step the newest child, so branch B's end.
        sel = await select(c, conv, m1)
        assert sel == {"type": "selected", "conversation_id": conv, "leaf_id": b2.done["message_id"]}
        assert await tab.recv() == sel
        # A leaf selects itself; a select sent on the sync tab is answered there, and reaches no
        # socket without ?sync=1.
        sel = await select(tab, conv, a.done["message_id"])
        assert sel["leaf_id"] == a.done["message_id"]
        # A message without a parent_id now follows the selected leaf.
        t = await c.complete("after select", conversation_id=conv)
        assert t.ack["parent_id"] == a.done["message_id"]
        heard = await tab.collect()
        assert heard.first("message_added")["message"]["parent_id"] == a.done["message_id"]
        with pytest.raises(TimeoutError):
            await plain.recv(timeout=0.3)
        with pytest.raises(TimeoutError):
            await tab.recv(timeout=0.3)  # its own select was not echoed twice, nothing else came
        assert_chain_intact(tree_of(rest, conv))


# -- bad ids ---------------------------------------------------------------------------------------------
@aio
async def test_ids_that_name_nothing_of_the_users_are_not_found_store_nothing_and_the_socket_goes_on(server):
    async with sockets(server) as user:
        c = await user()
        rest = Rest(server, c.token)
        one = await c.complete("one", conversation_id=None)
        conv, m1, r1 = one.ack["conversation_id"], one.ack["message_id"], one.done["message_id"]
        two = await c.complete("other conversation", conversation_id=None)
        conv_b, m_b = two.ack["conversation_id"], two.ack["message_id"]
        stranger = await user()
        theirs = await stranger.complete("theirs", conversation_id=None)
        conv_d, m_d, r_d = theirs.ack["conversation_id"], theirs.ack["message_id"], theirs.done["message_id"]
        unknown = str(uuid.uuid4())

        before = {k: tree_of(rest, k) for k in (conv, conv_b)}
        path_before = path_of(rest, conv)
        theirs_before = tree_of(Rest(server, stranger.token), conv_d)

        used: list[tuple[str, str]] = []  # (kind, client_id) refused

        async def refused(frame: dict[str, Any], kind: str) -> None:
            k = cid(kind)
            used.append((kind, k))
            await c.send({**frame, "client_id": k})
            err = await c.expect_error("not_found")
            assert err["client_id"] == k, err

        for parent, extra in ((unknown, {}), (m_b, {"conversation_id": conv}), (m_d, {}),
                              (r_d, {"conversation_id": conv}), ("x" * 40, {})):
            await refused({"type": "message", "content": "an edit", "parent_id": parent, **extra}, "message")
        # A new root in someone else's conversation, or an unknown one.
        for target in (conv_d, unknown):
            await refused({"type": "message", "content": "a root", "parent_id": None, "conversation_id": target},
                          "message")
        for reply_to in (unknown, r1, m_d, r_d, "y" * 40):
            await refused({"type": "regenerate", "reply_to": reply_to}, "regenerate")

        for conversation_id, message_id in ((conv, m_d), (conv, m_b), (conv_d, m_d), (conv, unknown), (unknown, m1),
                                            (conv_b, m1)):
            await c.send({"type": "select", "conversation_id": conversation_id, "message_id": message_id})
            err = await c.expect_error("not_found")
            assert "client_id" not in err

        for leaf in (unknown, m_b, r_d):
            err = await c.history(conv, leaf=leaf)
            assert err["type"] == "error" and err["code"] == "not_found", err
            r = rest.messages(conv, leaf=leaf)
            assert r.status_code == 404, r.text
        assert rest.messages(conv_d).status_code == 404
        for conversation_id in (conv_d, unknown):
            assert rest.http.get(f"/api/conversations/{conversation_id}/tree").status_code == 404
        assert rest.messages(conv, leaf="z" * 40).status_code == 404

        # Nothing stored, no leaf moved, for this user or the other.
        assert {k: tree_of(rest, k) for k in (conv, conv_b)} == before
        assert path_of(rest, conv) == path_before
        assert tree_of(Rest(server, stranger.token), conv_d) == theirs_before
        assert [x["id"] for x in rest.conversations()] == [conv_b, conv]

        # The socket goes on, and the refused client_ids were never recorded: used now, they are new.
        msg_k = next(k for kind, k in used if kind == "message")
        t = await c.complete("still usable", client_id=msg_k, conversation_id=conv)
        assert t.ack["duplicate"] is False and t.ack["parent_id"] == r1
        regen_k = next(k for kind, k in used if kind == "regenerate")
        again = await regenerate(c, m1, regen_k)
        assert again.ack["duplicate"] is False and again.done["status"] == "complete"


@aio
async def test_malformed_regenerate_and_select_frames_are_invalid(server):
    async with sockets(server) as user:
        c = await user()
        t = await c.complete("hello", conversation_id=None)
        conv, m1 = t.ack["conversation_id"], t.ack["message_id"]
        tree = tree_of(Rest(server, c.token), conv)
        for reply_to in ({}, {"reply_to": None}, {"reply_to": 5}, {"reply_to": [m1]}, {"reply_to": {"id": m1}}):
            k = cid("bad")
            await c.send({"type": "regenerate", "client_id": k, **reply_to})
            err = await c.expect_error("invalid")
            assert err["client_id"] == k, err
        await c.send({"type": "regenerate", "reply_to": m1, "client_id": 7})
        err = await c.expect_error("invalid")
        assert "client_id" not in err
        for fields in ({"conversation_id": conv}, {"conversation_id": conv, "message_id": None},
                       {"conversation_id": conv, "message_id": 3}, {"message_id": m1}, {"conversation_id": 1,
                                                                                        "message_id": m1}):
            await c.send({"type": "select", **fields})
            await c.expect_error("invalid")
        await c.send({"type": "message", "content": "edit", "parent_id": 12, "client_id": "k-p"})
        assert (await c.expect_error("invalid"))["client_id"] == "k-p"
        await c.send({"type": "history", "conversation_id": conv, "leaf": 12})
        await c.expect_error("invalid")
        assert tree_of(Rest(server, c.token), conv) == tree
        after = await c.complete("still fine", conversation_id=conv)
        assert after.ack["parent_id"] == t.done["message_id"]


# -- what the model sees ------------------------------------------------------------------------------------
SYSTEM = "You are a branch test."


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeLLM]:
    f = FakeLLM().start()
    yield f
    f.stop()


@pytest.fixture(scope="module")
def llm_servers(fake: FakeLLM, databases: Any, tmp_root: Path) -> Iterator[Callable[[str], ServerProcess]]:
    made: dict[str, ServerProcess] = {}

    def get(db: str) -> ServerProcess:
        if db not in made:
            env = {"CHAT_LLM": "openai", "OPENAI_BASE_URL": fake.base_url, "OPENAI_API_KEY": "sk-test-branches",
                   "CHAT_MODEL": "fake-model", "CHAT_SYSTEM_PROMPT": SYSTEM, "CHAT_CONTEXT_CHARS": "20000",
                   "CHAT_LLM_RETRIES": "0"}
            workdir = Path(tempfile.mkdtemp(prefix="srv-branches-llm-", dir=tmp_root))
            made[db] = ServerProcess(databases.url(db), env, workdir).start()
        return made[db]

    yield get
    for s in made.values():
        s.kill()


@pytest.fixture
def llm_server(db: str, llm_servers: Callable[[str], ServerProcess]) -> ServerProcess:
    return llm_servers(db)


def sent(fake: FakeLLM) -> list[tuple[str, str]]:
    """What the last chat request carried: (role, content) of each message."""
    return [(m["role"], m["content"]) for m in fake.calls[-1].body["messages"]]


@aio
async def test_the_model_sees_only_the_path_after_an_edit_and_a_regenerate(llm_server, fake):
    fake.reset(*({"chunks": [f"A{i}"], "delay": 0} for i in range(1, 9)))
    c = await Client.open(llm_server)
    try:
        t1 = await c.complete("Q1", conversation_id=None)
        conv, m1, r1 = t1.ack["conversation_id"], t1.ack["message_id"], t1.done["message_id"]
        assert t1.done["content"] == "A1"
        t2 = await c.complete("Q2 old", conversation_id=conv)
        t3 = await c.complete("Q3 old", conversation_id=conv)
        assert sent(fake) == [("system", SYSTEM), ("user", "Q1"), ("assistant", "A1"), ("user", "Q2 old"),
                              ("assistant", "A2"), ("user", "Q3 old")]
        # The edit of Q2: the model sees the path to r1 and the new message; nothing of Q2/Q3 old.
        t4 = await c.complete("Q2 new", parent_id=r1)
        assert t4.done["content"] == "A4"
        assert sent(fake) == [("system", SYSTEM), ("user", "Q1"), ("assistant", "A1"), ("user", "Q2 new")]
        # Going on from the edit's branch.
        await c.complete("Q3 new", conversation_id=conv)
        assert sent(fake) == [("system", SYSTEM), ("user", "Q1"), ("assistant", "A1"), ("user", "Q2 new"),
                              ("assistant", "A4"), ("user", "Q3 new")]
        # Regenerating the old branch's Q3: the path to it, not the current branch.
        regen = await regenerate(c, t3.ack["message_id"])
        assert regen.done["content"] == "A6" and regen.done["status"] == "complete"
        assert sent(fake) == [("system", SYSTEM), ("user", "Q1"), ("assistant", "A1"), ("user", "Q2 old"),
                              ("assistant", "A2"), ("user", "Q3 old")]
        # Regenerating the first message: the system prompt and it alone.
        regen = await regenerate(c, m1)
        assert regen.done["content"] == "A7"
        assert sent(fake) == [("system", SYSTEM), ("user", "Q1")]
        # A new message follows that regeneration, now the leaf.
        await c.complete("Q2 after", conversation_id=conv)
        assert sent(fake) == [("system", SYSTEM), ("user", "Q1"), ("assistant", "A7"), ("user", "Q2 after")]
        assert len(fake.calls) == 8 and t2.done["content"] == "A2"
    finally:
        await c.close()


# -- a regeneration cut by kill -9 -------------------------------------------------------------------------
@aio
async def test_a_regeneration_cut_by_kill_9_is_stored_interrupted_and_its_resend_gets_a_fresh_sibling(db,
                                                                                                     make_server):
    server = make_server(db, CHAT_ECHO_DELAY_MS=100)  # the kill lands long before the first piece
    c = await Client.open(server)
    token = c.token
    content = "answer me"
    first = await c.complete(content, conversation_id=None)
    conv, m1, r1 = first.ack["conversation_id"], first.ack["message_id"], first.done["message_id"]
    kr = cid("regen")
    await c.send({"type": "regenerate", "reply_to": m1, "client_id": kr})
    ack = await c.expect("ack")
    assert ack == {"type": "ack", "client_id": kr, "conversation_id": conv, "message_id": m1,
                   "regenerate": True, "duplicate": False}
    server.kill()
    await c.close()

    server.restart()
    rest = Rest(server, token)
    tree = await poll(lambda: tree_of(rest, conv), lambda t: len(t["items"]) == 3, timeout=20)
    items = tree["items"]
    assert [i["id"] for i in items[:2]] == [m1, r1], items
    cut = items[2]
    assert (cut["role"], cut["status"], cut["reply_to"]) == ("assistant", "interrupted", m1), cut
    assert cut["parent_id"] == m1, f"the interrupted reply is stored as a sibling of {r1}, under {m1}: {cut}"
    assert_chain_intact(tree)
    page = path_of(rest, conv)
    assert ids(page)[0] == m1, page

    c2 = await Client.open(server, token=token)
    try:
        fresh = await regenerate(c2, m1, kr)
        assert fresh.ack == {**ack, "duplicate": True}, fresh.frames
        assert fresh.types()[:2] == ["ack", "start"] and fresh.types()[-1] == "done", fresh.types()
        assert_echo_turn(fresh, content)
        r3 = fresh.done["message_id"]
        assert r3 not in (r1, cut["id"])
        tree = tree_of(rest, conv)
        assert [(i["id"], i["parent_id"], i["status"]) for i in tree["items"]] == [
            (m1, None, "complete"), (r1, m1, "complete"), (cut["id"], m1, "interrupted"), (r3, m1, "complete")]
        assert tree["leaf_id"] == r3
        page = path_of(rest, conv)
        assert ids(page) == [m1, r3] and page["messages"][1]["siblings"] == [r1, cut["id"], r3]
        # Resent once more: that reply, nothing new.
        dup = await regenerate(c2, m1, kr)
        assert dup.types() == ["ack", "done"] and dup.done["message_id"] == r3
        assert len(tree_of(rest, conv)["items"]) == 4
    finally:
        await c2.close()


def test_helpers_are_consistent() -> None:
    """assert_chain_intact refuses a parent stored after its child, and an orphan."""
    good = {"leaf_id": "b", "items": [{"id": "a", "parent_id": None, "role": "user"},
                                      {"id": "b", "parent_id": "a", "role": "assistant", "reply_to": "a"}]}
    assert_chain_intact(good)
    for bad in ({"leaf_id": "b", "items": good["items"][::-1]},
                {"leaf_id": "c", "items": good["items"]},
                {"leaf_id": "b", "items": [good["items"][0], {**good["items"][1], "parent_id": None}]}):
        with pytest.raises(AssertionError):
            assert_chain_intact(bad)
