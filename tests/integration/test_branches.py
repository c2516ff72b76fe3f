"""Branches on an append-only tree: edit (a message under an explicit parent), regenerate (a new
reply to a stored message), select (the branch through a message becomes current), and history
as the path to the leaf with each message's siblings. In-process, on SQLite and PostgreSQL: the
real turn runner, reply bus and database, a fake socket and a model the test steps."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from support.inprocess import FakeSink, Harness, SteppedModel, aio

from server.bootstrap import start_services
from server.chat.backends import ModelRequest
from server.chat.turn_runner import TurnInProgress
from server.config import Settings
from server.db import tree
from server.db.migrate import upgrade_to_head
from server.protocol.frames import MessageFrame, RegenerateFrame


class RecordingModel(SteppedModel):
    """A stepped model that keeps what each request carried: the context and the new message."""

    context_messages = 40

    def __init__(self, pieces: int = 3):
        super().__init__(pieces)
        self.requests: list[ModelRequest] = []

    async def stream(self, turn: ModelRequest) -> AsyncIterator[str]:
        self.requests.append(turn)
        async for piece in super().stream(turn):
            yield piece


@pytest.fixture(params=["sqlite", "postgres"])
def branches(request, databases) -> Callable[..., Any]:  # type: ignore[no-untyped-def]
    if request.param == "postgres":
        request.getfixturevalue("pg")
    url = databases.url(request.param)

    def make(pieces: int = 3) -> Any:
        @contextlib.asynccontextmanager
        async def running() -> AsyncIterator[Harness]:
            settings = Settings(database_url=url, echo_delay_ms=0)
            await upgrade_to_head(settings)
            svc = await start_services(settings)
            model = RecordingModel(pieces)
            model.end()
            svc.backend = model
            try:
                yield Harness(svc, model)
            finally:
                await svc.bus.shut_down(5)
                await svc.close()

        return running()

    return make


async def turn(h: Harness, content: str, user: str = "u1", **fields: Any) -> dict[str, Any]:
    """One turn to its end: the ack (or error), and the reply's done."""
    sink = FakeSink()
    frame = MessageFrame(content, **fields)
    await h.runner(user).run(frame, sink, None, TurnInProgress())
    frames = {f["type"]: f for f in sink.frames}
    return {"ack": frames.get("ack"), "done": frames.get("done"), "error": frames.get("error"), "frames": sink.frames}


async def regenerate(h: Harness, reply_to: str, client_id: str | None = None, user: str = "u1") -> dict[str, Any]:
    sink = FakeSink()
    await h.runner(user).regenerate(RegenerateFrame(reply_to, client_id), sink, TurnInProgress())
    frames = {f["type"]: f for f in sink.frames}
    return {"ack": frames.get("ack"), "done": frames.get("done"), "error": frames.get("error"), "frames": sink.frames}


async def path(h: Harness, conversation_id: str, user: str = "u1", leaf: str | None = None) -> tree.Branch:
    return await h.svc.db.read(lambda store: tree.branch(store, conversation_id, user, None, 200, leaf))


def ids(branch: tree.Branch) -> list[str]:
    return [m.id for m in branch.messages]


@aio
async def test_a_conversation_that_never_branched_is_one_path_as_before(branches):
    async with branches() as h:
        first = await turn(h, "one")
        conversation = first["ack"]["conversation_id"]
        second = await turn(h, "two", conversation_id=conversation)
        assert first["ack"]["parent_id"] is None
        assert second["ack"]["parent_id"] == first["done"]["message_id"]
        assert first["done"]["reply_to"] == first["ack"]["message_id"]
        branch = await path(h, conversation)
        assert ids(branch) == [first["ack"]["message_id"], first["done"]["message_id"],
                               second["ack"]["message_id"], second["done"]["message_id"]]
        assert branch.leaf_id == second["done"]["message_id"]
        assert all(branch.siblings[m] == [m] for m in ids(branch))


@aio
async def test_an_edit_is_a_sibling_and_becomes_the_current_branch(branches):
    async with branches() as h:
        first = await turn(h, "the question")
        conversation = first["ack"]["conversation_id"]
        second = await turn(h, "a follow-up", conversation_id=conversation)
        edited = await turn(h, "the follow-up, fixed", conversation_id=conversation,
                            parent_id=second["ack"]["parent_id"])
        assert edited["ack"]["parent_id"] == first["done"]["message_id"]
        branch = await path(h, conversation)
        assert ids(branch) == [first["ack"]["message_id"], first["done"]["message_id"],
                               edited["ack"]["message_id"], edited["done"]["message_id"]]
        assert branch.siblings[edited["ack"]["message_id"]] == [second["ack"]["message_id"],
                                                               edited["ack"]["message_id"]]
        # The other branch is still stored, whole, and reachable by its leaf.
        old = await path(h, conversation, leaf=second["done"]["message_id"])
        assert ids(old)[-2:] == [second["ack"]["message_id"], second["done"]["message_id"]]


@aio
async def test_editing_the_first_message_makes_a_new_root_and_the_parent_alone_names_the_conversation(branches):
    async with branches() as h:
        first = await turn(h, "first try")
        conversation = first["ack"]["conversation_id"]
        root = await turn(h, "second try", conversation_id=conversation, parent_id=None)
        assert root["ack"]["parent_id"] is None and root["ack"]["conversation_id"] == conversation
        branch = await path(h, conversation)
        assert ids(branch) == [root["ack"]["message_id"], root["done"]["message_id"]]
        assert branch.siblings[root["ack"]["message_id"]] == [first["ack"]["message_id"], root["ack"]["message_id"]]
        child = await turn(h, "under the first reply", parent_id=first["done"]["message_id"])  # no conversation_id
        assert child["ack"]["conversation_id"] == conversation


@aio
async def test_the_model_sees_only_the_path_to_the_new_message(branches):
    async with branches() as h:
        first = await turn(h, "Q1")
        conversation = first["ack"]["conversation_id"]
        await turn(h, "Q2 on the old branch", conversation_id=conversation)
        await turn(h, "Q2 edited", conversation_id=conversation, parent_id=first["done"]["message_id"])
        seen = h.model.requests[-1]
        assert seen.user_message == "Q2 edited"
        assert [m.content for m in seen.context] == ["Q1", first["done"]["content"]]
        await regenerate(h, first["ack"]["message_id"])
        assert h.model.requests[-1].user_message == "Q1" and h.model.requests[-1].context == []


@aio
async def test_regenerate_adds_a_sibling_reply_that_becomes_the_leaf(branches):
    async with branches() as h:
        first = await turn(h, "tell me a joke")
        conversation = first["ack"]["conversation_id"]
        message_id = first["ack"]["message_id"]
        again = await regenerate(h, message_id, client_id="regen-1")
        assert again["ack"] == {"type": "ack", "client_id": "regen-1", "conversation_id": conversation,
                                "message_id": message_id, "regenerate": True, "duplicate": False}
        assert [f["type"] for f in again["frames"]][:2] == ["ack", "start"]
        new_reply = again["done"]["message_id"]
        assert new_reply != first["done"]["message_id"] and again["done"]["reply_to"] == message_id
        branch = await path(h, conversation)
        assert ids(branch) == [message_id, new_reply] and branch.leaf_id == new_reply
        assert branch.siblings[new_reply] == [first["done"]["message_id"], new_reply]
        # The same client_id again: that regeneration's reply, never another.
        duplicate = await regenerate(h, message_id, client_id="regen-1")
        assert duplicate["ack"]["duplicate"] is True and duplicate["done"]["message_id"] == new_reply
        assert len((await h.svc.db.read(lambda store: tree.tree(store, conversation, "u1")))["items"]) == 3


@aio
async def test_a_message_resent_with_a_regenerations_client_id_gets_that_answer(branches):
    async with branches() as h:
        first = await turn(h, "hello")
        again = await regenerate(h, first["ack"]["message_id"], client_id="shared-key")
        resent = await turn(h, "a different text", client_id="shared-key")
        assert resent["ack"]["duplicate"] is True and resent["ack"]["message_id"] == first["ack"]["message_id"]
        assert resent["ack"]["client_id"] == "shared-key"
        assert resent["done"]["message_id"] == again["done"]["message_id"]


@aio
async def test_regenerate_of_what_is_not_the_users_message_is_not_found_and_stores_nothing(branches):
    async with branches() as h:
        mine = await turn(h, "mine")
        theirs = await turn(h, "theirs", user="u2")
        conversation = mine["ack"]["conversation_id"]
        before = await h.svc.db.read(lambda store: tree.tree(store, conversation, "u1"))
        for target in (mine["done"]["message_id"], theirs["ack"]["message_id"], "9" * 36):
            refused = await regenerate(h, target, client_id=f"k-{target[:6]}")
            assert refused["error"]["code"] == "not_found" and refused["error"]["client_id"] == f"k-{target[:6]}"
            assert refused["ack"] is None
        assert await h.svc.db.read(lambda store: tree.tree(store, conversation, "u1")) == before
        assert (await turn(h, "still usable", conversation_id=conversation))["done"]["status"] == "complete"


@aio
async def test_a_parent_of_another_conversation_or_user_is_not_found_and_stores_nothing(branches):
    async with branches() as h:
        one = await turn(h, "one")
        other = await turn(h, "other", conversation_id=None)
        theirs = await turn(h, "theirs", user="u2")
        conversation = one["ack"]["conversation_id"]
        for parent, fields in ((other["ack"]["message_id"], {"conversation_id": conversation}),
                               (theirs["ack"]["message_id"], {}), ("0" * 36, {})):
            refused = await turn(h, "edit", client_id="k-edit", parent_id=parent, **fields)
            assert refused["error"]["code"] == "not_found" and refused["error"]["client_id"] == "k-edit"
        assert len((await path(h, conversation)).messages) == 2
        accepted = await turn(h, "edit", client_id="k-edit", parent_id=one["ack"]["message_id"])
        assert accepted["ack"]["duplicate"] is False, "the refused ones stored nothing under the client_id"


@aio
async def test_select_makes_the_newest_leaf_below_a_message_current(branches):
    async with branches() as h:
        first = await turn(h, "root question")
        conversation = first["ack"]["conversation_id"]
        a = await turn(h, "branch A", conversation_id=conversation)
        b = await turn(h, "branch B", conversation_id=conversation, parent_id=first["done"]["message_id"])
        b2 = await turn(h, "B goes on", conversation_id=conversation)
        leaf = await h.svc.db.write(lambda store: tree.select_branch(store, conversation, "u1", a["ack"]["message_id"]))
        assert leaf == a["done"]["message_id"] and (await path(h, conversation)).leaf_id == leaf
        leaf = await h.svc.db.write(lambda store: tree.select_branch(store, conversation, "u1",
                                                                     first["ack"]["message_id"]))
        assert leaf == b2["done"]["message_id"], "at each step the newest child"
        with pytest.raises(tree.NotFound):
            await h.svc.db.write(lambda store: tree.select_branch(store, conversation, "u2", b["ack"]["message_id"]))


@aio
async def test_an_edit_made_while_a_reply_streams_stands_when_that_reply_is_stored(branches):
    async with branches(pieces=4) as h:
        first = await turn(h, "a question")
        conversation = first["ack"]["conversation_id"]
        h.model.hold()
        streaming = await turn_started(h, "a second, slow", conversation_id=conversation)
        # Another tab edits that message while its reply streams.
        edit_sink = FakeSink()
        edit = asyncio.ensure_future(h.runner("u1").run(
            MessageFrame("the second, edited", conversation, None, first["done"]["message_id"]), edit_sink, None,
            TurnInProgress()))
        await edit_sink.until(lambda s: bool(s.of("ack")))
        h.model.end()
        await asyncio.gather(streaming["task"], edit)
        edited = edit_sink.of("ack")[0]
        branch = await path(h, conversation)
        assert ids(branch)[-2] == edited["message_id"], "the edit's branch stays current"
        assert branch.siblings[edited["message_id"]] == [streaming["message_id"], edited["message_id"]]
        replies = [m for m in (await h.svc.db.read(lambda store: tree.tree(store, conversation, "u1")))["items"]
                   if m["role"] == "assistant"]
        assert len(replies) == 3 and all(r["status"] == "complete" for r in replies), "nothing lost"


@aio
async def test_a_select_made_while_a_reply_streams_stands_and_a_flip_back_takes_the_reply(branches):
    async with branches(pieces=4) as h:
        first = await turn(h, "a question")
        conversation = first["ack"]["conversation_id"]
        other = await turn(h, "another branch", conversation_id=conversation, parent_id=None)
        h.model.hold()
        streaming = await turn_started(h, "continue the other", conversation_id=conversation)
        leaf = await h.svc.db.write(lambda store: tree.select_branch(store, conversation, "u1",
                                                                     first["ack"]["message_id"]))
        assert leaf == first["done"]["message_id"]
        h.model.end()
        await streaming["task"]
        assert (await path(h, conversation)).leaf_id == first["done"]["message_id"], "the select stands"
        leaf = await h.svc.db.write(lambda store: tree.select_branch(store, conversation, "u1",
                                                                     other["ack"]["message_id"]))
        assert leaf == streaming["sink"].of("done")[0]["message_id"]


async def turn_started(h: Harness, content: str, **fields: Any) -> dict[str, Any]:
    sink = FakeSink()
    task = h.send("u1", sink, content, **fields)
    await sink.until(lambda s: bool(s.of("start")))
    ack = sink.of("ack")[0]
    return {"task": task, "sink": sink, "conversation_id": ack["conversation_id"], "message_id": ack["message_id"]}


@aio
async def test_regenerate_while_a_reply_to_that_message_streams_is_busy(branches):
    async with branches(pieces=4) as h:
        h.model.hold()
        started = await turn_started(h, "slow")
        busy = await regenerate(h, started["message_id"], client_id="too-soon")
        assert busy["error"]["code"] == "busy" and busy["error"]["client_id"] == "too-soon"
        h.model.end()
        await started["task"]
        assert (await regenerate(h, started["message_id"], client_id="too-soon"))["done"]["status"] == "complete"


@aio
async def test_a_resend_after_an_interrupted_reply_adds_its_sibling_which_becomes_the_leaf(branches):
    """The contract's idempotency rule on a tree: the interrupted reply stays stored, the fresh one
    is its sibling, and history (the current branch) ends with the fresh one."""
    async with branches(pieces=4) as h:
        h.model.hold()
        sink = FakeSink()
        task = h.send("u1", sink, "cut me off", client_id="k-cut")
        await sink.until(lambda s: bool(s.of("start")))
        conversation = sink.of("ack")[0]["conversation_id"]
        interrupted = sink.of("start")[0]["message_id"]
        h.svc.bus.stop("u1", interrupted, "interrupted")  # as when its detached time runs out
        await sink.until(lambda s: bool(s.of("done")))
        await task
        h.model.end()
        again = await turn(h, "cut me off", client_id="k-cut")
        assert again["ack"]["duplicate"] is True and again["done"]["status"] == "complete"
        fresh = again["done"]["message_id"]
        assert fresh != interrupted
        branch = await path(h, conversation)
        assert [m.id for m in branch.messages][1:] == [fresh] and branch.leaf_id == fresh
        assert branch.siblings[fresh] == [interrupted, fresh]
        statuses = {m["id"]: m["status"]
                    for m in (await h.svc.db.read(lambda store: tree.tree(store, conversation, "u1")))["items"]}
        assert statuses[interrupted] == "interrupted" and statuses[fresh] == "complete"
