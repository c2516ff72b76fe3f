"""The `openai` backend against a fake OpenAI-compatible server on loopback (tests/e2e/fake_llm.py).

Real HTTP and server-sent events between the chat server's `openai` SDK and the fake; a real
WebSocket client on the other side. Shown: a normal reply and the context the model received
(system prompt, order, budget); failures before the first token (retried) and after it (not
retried, partial reply kept); 401; timeouts before the first token and mid-stream; cancel and
disconnect closing the upstream stream promptly; usage, model and first_token_ms stored; the API
key never in a frame or the log; a backend unreachable at start-up.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fake_llm import DEFAULT_CHUNKS, FakeLLM
from support.client import Client, Rest, Turn, aio, poll
from support.servers import ServerProcess, free_port

KEY = "sk-test-SECRET123"
SYSTEM = "You are a test."
BUDGET = 300  # CHAT_CONTEXT_CHARS: small, so that a few 100-character messages overflow it
FULL = "".join(DEFAULT_CHUNKS)
SLOW = {"chunks": [f"t{i} " for i in range(100)], "delay": 0.05}  # 5 s: a cancel lands mid-stream
CLOSE_BOUND_S = 2.0  # the contract is "about a second"; slack for a loaded CI machine
DETACHED_S = 0.5  # how long a reply goes on after its socket left


def openai_env(base_url: str) -> dict[str, str]:
    return {"CHAT_LLM": "openai", "OPENAI_BASE_URL": base_url, "OPENAI_API_KEY": KEY, "CHAT_MODEL": "fake-model",
            "CHAT_LLM_FIRST_TOKEN_TIMEOUT_S": "1", "CHAT_LLM_IDLE_TIMEOUT_S": "1", "CHAT_LLM_RETRIES": "2",
            "CHAT_SYSTEM_PROMPT": SYSTEM, "CHAT_CONTEXT_CHARS": str(BUDGET),
            "CHAT_DETACHED_REPLY_S": str(DETACHED_S)}


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeLLM]:
    f = FakeLLM().start()
    yield f
    f.stop()


@pytest.fixture(scope="module")
def llm_servers(fake: FakeLLM, databases: Any, tmp_root: Path) -> Iterator[Callable[[str], ServerProcess]]:
    """One chat server per database for this module, all talking to the module's fake."""
    made: dict[str, ServerProcess] = {}

    def get(db: str) -> ServerProcess:
        if db not in made:
            workdir = Path(tempfile.mkdtemp(prefix="srv-openai-", dir=tmp_root))
            made[db] = ServerProcess(databases.url(db), openai_env(fake.base_url), workdir).start()
        return made[db]

    yield get
    for s in made.values():
        s.kill()


@pytest.fixture
def llm_server(llm_servers: Callable[[str], ServerProcess]) -> ServerProcess:
    """The module's SQLite server: most of these tests are about the backend, not the database."""
    return llm_servers("sqlite")


@pytest.fixture
def llm_server_each_db(db: str, llm_servers: Callable[[str], ServerProcess]) -> ServerProcess:
    return llm_servers(db)  # built here, outside the test's event loop (creating a database runs its own)


def system_and(*messages: tuple[str, str]) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM}, *({"role": r, "content": c} for r, c in messages)]


def assert_key_kept_secret(server: ServerProcess, *turns: Turn) -> None:
    for t in turns:
        assert KEY not in json.dumps(t.frames)
    assert KEY not in server.log_text()


def assert_failed(t: Turn, content: str) -> str:
    """The turn ended in `done` error with this partial content; its detail."""
    assert t.done is not None, t.frames
    assert t.done["status"] == "error", t.done
    assert t.done["content"] == t.text == content
    detail = t.done.get("error") or ""
    assert detail.strip(), t.done
    return detail


async def assert_next_turn_completes(c: Client, fake: FakeLLM, content: str = "and now?") -> Turn:
    """The socket is usable after the failure: a normal turn on it completes."""
    before = len(fake.calls)
    t = await c.complete(content)
    assert t.done["content"] == t.text == FULL
    assert len(fake.calls) == before + 1
    return t


async def stored(server: ServerProcess, c: Client, conversation_id: str, count: int) -> list[dict[str, Any]]:
    rest = Rest(server, c.token)
    messages = await poll(lambda: rest.all_messages(conversation_id), lambda ms: len(ms) >= count, timeout=20)
    assert len(messages) == count, messages
    return messages


# -- a normal reply ---------------------------------------------------------------------------------
@aio
async def test_normal_reply_streams_chunks_and_stores_usage_model_and_first_token(llm_server_each_db, fake):
    server = llm_server_each_db
    fake.reset()
    c = await Client.open(server)
    try:
        t = await c.complete("hello model")
        assert [d["content"] for d in t.deltas] == list(DEFAULT_CHUNKS)
        assert t.done["content"] == FULL

        [call] = fake.calls
        assert call.body["model"] == "fake-model" and call.body["stream"] is True
        assert call.body["stream_options"]["include_usage"] is True
        assert call.body["messages"] == system_and(("user", "hello model"))
        assert call.headers["authorization"] == f"Bearer {KEY}"  # the key is in use: its absence below means something
        assert call.finished

        usage = {"prompt_tokens": len(SYSTEM) + len("hello model"), "completion_tokens": len(DEFAULT_CHUNKS)}
        conversation_id = t.ack["conversation_id"]
        h = await c.history(conversation_id)
        over_http = Rest(server, c.token).all_messages(conversation_id)
        for messages in (h["messages"], over_http):
            _, reply = messages
            assert (reply["role"], reply["status"], reply["content"]) == ("assistant", "complete", FULL)
            assert reply["model"] == "fake-model" and reply["usage"] == usage
            assert isinstance(reply["first_token_ms"], int) and reply["first_token_ms"] >= 0
        assert_key_kept_secret(server, t)
    finally:
        await c.close()


@aio
async def test_nul_and_lone_surrogates_from_the_model_are_dropped_and_the_reply_is_stored(llm_server_each_db, fake):
    """Valid JSON can carry both, and neither database stores them: one such piece used to fail
    the whole reply's store (and leave its claim behind)."""
    server = llm_server_each_db
    fake.reset({"chunks": ["ok ", "nul\u0000here ", "half \ud83d pair ", "\u0000", "whole \U0001f600 end"]})
    c = await Client.open(server)
    try:
        t = await c.complete("say something odd")
        expected = "ok nulhere half  pair whole \U0001f600 end"
        assert t.done["status"] == "complete" and t.done["content"] == expected == t.text, t.done
        assert len(t.deltas) == 4, "a piece with nothing left is not sent"
        messages = await stored(server, c, t.ack["conversation_id"], 2)
        assert messages[1]["content"] == expected and messages[1]["status"] == "complete"
        await assert_next_turn_completes(c, fake)
    finally:
        await c.close()


# -- the context the model receives -------------------------------------------------------------------
@aio
async def test_context_is_system_prompt_then_earlier_turns_in_order_then_new_message(llm_server, fake):
    fake.reset({"chunks": ["one"]}, {"chunks": ["two"]}, {"chunks": ["three"]})
    c = await Client.open(llm_server)
    try:
        await c.complete("first question")
        await c.complete("second question")
        await c.complete("third question")
        assert [call.body["messages"] for call in fake.calls] == [
            system_and(("user", "first question")),
            system_and(("user", "first question"), ("assistant", "one"), ("user", "second question")),
            system_and(("user", "first question"), ("assistant", "one"), ("user", "second question"),
                       ("assistant", "two"), ("user", "third question")),
        ]
    finally:
        await c.close()


@aio
async def test_oldest_messages_are_dropped_whole_to_fit_the_context_budget(llm_server, fake):
    fake.reset()
    asked = [(word + " ") * (100 // (len(word) + 1)) for word in ("one", "two", "three", "four")]
    c = await Client.open(llm_server)
    try:
        for question in asked:
            await c.complete(question)
    finally:
        await c.close()
    before: list[tuple[str, str]] = []  # the conversation before each question
    for call, question in zip(fake.calls, asked, strict=True):
        sent = call.body["messages"]
        assert sent[0] == {"role": "system", "content": SYSTEM}
        assert sent[-1] == {"role": "user", "content": question}
        context = [(m["role"], m["content"]) for m in sent[1:-1]]
        # The latest earlier messages, whole (never a truncated one) and in order...
        assert context == before[len(before) - len(context):], sent
        # ...as many as fit the budget: the next older one would not have.
        used = sum(len(content) for _, content in context) + len(question)
        assert used <= BUDGET, sent
        if len(context) < len(before):
            assert used + len(before[len(before) - len(context) - 1][1]) > BUDGET, sent
        before += [("user", question), ("assistant", FULL)]
    assert 0 < len(fake.calls[-1].body["messages"]) - 2 < 6  # the last turn dropped some and kept some


@aio
async def test_new_message_is_sent_even_when_it_alone_exceeds_the_budget(llm_server, fake):
    fake.reset()
    c = await Client.open(llm_server)
    try:
        await c.complete("short one")
        long = "x" * (BUDGET + 50)
        await c.complete(long)
        assert fake.calls[-1].body["messages"] == system_and(("user", long))
    finally:
        await c.close()


# -- failures -----------------------------------------------------------------------------------------
@aio
async def test_failure_after_two_chunks_ends_in_error_with_the_partial_reply(llm_server, fake):
    chunks = ["Alpha ", "beta ", "gamma ", "delta "]
    fake.reset({"fail_after": 2, "chunks": chunks})
    c = await Client.open(llm_server)
    try:
        t = await c.turn("tell me")
        detail = assert_failed(t, "Alpha beta ")
        assert "backend" in detail.lower(), detail
        assert len(fake.calls) == 1  # not retried once tokens were shown
        conversation_id = t.ack["conversation_id"]
        h = await c.history(conversation_id)
        assert [(m["role"], m["status"], m["content"]) for m in h["messages"]] == [
            ("user", "complete", "tell me"), ("assistant", "error", "Alpha beta ")]

        nxt = await assert_next_turn_completes(c, fake, "go on")
        # What the person saw of the failed reply is part of the context.
        assert fake.calls[-1].body["messages"] == system_and(
            ("user", "tell me"), ("assistant", "Alpha beta "), ("user", "go on"))
        assert_key_kept_secret(llm_server, t, nxt)
    finally:
        await c.close()


@aio
async def test_401_is_not_retried_and_names_the_key_setting(llm_server, fake):
    fake.reset({"status": 401})  # the fake echoes the key in its error body, as careless upstreams do
    c = await Client.open(llm_server)
    try:
        t = await c.turn("who am I")
        detail = assert_failed(t, "")
        assert "401" in detail and "OPENAI_API_KEY" in detail, detail
        assert len(fake.calls) == 1
        h = await c.history(t.ack["conversation_id"])
        reply = h["messages"][1]
        assert (reply["status"], reply["content"], reply["first_token_ms"]) == ("error", "", None)

        nxt = await assert_next_turn_completes(c, fake, "still there?")
        # An empty failed reply is left out of the context.
        assert fake.calls[-1].body["messages"] == system_and(("user", "who am I"), ("user", "still there?"))
        assert_key_kept_secret(llm_server, t, nxt)
    finally:
        await c.close()


@aio
async def test_500_before_the_first_token_is_retried_and_the_reply_completes(llm_server, fake):
    fake.reset({"status": 500})
    c = await Client.open(llm_server)
    try:
        t = await c.complete("try again please")
        assert t.done["content"] == t.text == FULL
        assert len(fake.calls) == 2
        assert fake.calls[0].body == fake.calls[1].body
        assert_key_kept_secret(llm_server, t)
    finally:
        await c.close()


@aio
async def test_failure_after_the_first_token_is_not_retried(llm_server, fake):
    fake.reset({"fail_after": 1})
    c = await Client.open(llm_server)
    try:
        t = await c.turn("one token only")
        assert_failed(t, DEFAULT_CHUNKS[0])
        assert len(fake.calls) == 1
        nxt = await assert_next_turn_completes(c, fake)
        assert_key_kept_secret(llm_server, t, nxt)
    finally:
        await c.close()


@aio
async def test_hang_before_the_first_token_times_out_on_every_attempt(llm_server, fake):
    fake.reset(*[{"hang_before_first": 60}] * 3)
    c = await Client.open(llm_server)
    try:
        t = await c.turn("are you there", timeout=60)
        detail = assert_failed(t, "")
        assert "timeout" in detail.lower(), detail
        assert len(fake.calls) == 3  # CHAT_LLM_RETRIES=2
        for call in fake.calls:  # each attempt's stream was given up, not left running
            assert fake.wait_closed(call) is not None
            assert call.chunks_sent == 0
        nxt = await assert_next_turn_completes(c, fake)
        assert_key_kept_secret(llm_server, t, nxt)
    finally:
        await c.close()


@aio
async def test_hang_mid_stream_times_out_with_the_partial_reply(llm_server, fake):
    fake.reset({"hang_after": 2, "seconds": 60})
    c = await Client.open(llm_server)
    try:
        t = await c.turn("stall halfway", timeout=60)
        detail = assert_failed(t, "".join(DEFAULT_CHUNKS[:2]))
        assert "timeout" in detail.lower(), detail
        [call] = fake.calls
        assert fake.wait_closed(call) is not None
        h = await c.history(t.ack["conversation_id"])
        assert (h["messages"][1]["status"], h["messages"][1]["content"]) == ("error", "".join(DEFAULT_CHUNKS[:2]))
        nxt = await assert_next_turn_completes(c, fake)
        assert_key_kept_secret(llm_server, t, nxt)
    finally:
        await c.close()


# -- the person leaves: no tokens paid for afterwards -------------------------------------------------
@aio
async def test_cancel_mid_stream_closes_the_upstream_stream_promptly(llm_server, fake):
    fake.reset(SLOW)
    c = await Client.open(llm_server)
    try:
        await c.message("a long story")
        t = await c.collect(stop_after_deltas=3)
        await c.send({"type": "cancel"})
        cancelled_at = time.monotonic()
        rest = await c.collect()
        t.frames += rest.frames
        assert t.done is not None and t.done["status"] == "cancelled", t.frames
        assert t.done["content"] == t.text and t.text.startswith("t0 t1 t2 ")

        [call] = fake.calls
        closed_at = fake.wait_closed(call)
        assert closed_at is not None, "the upstream stream was not closed after cancel"
        assert closed_at - cancelled_at < CLOSE_BOUND_S
        assert not call.finished and call.chunks_sent < len(SLOW["chunks"])

        h = await c.history(t.ack["conversation_id"])
        assert (h["messages"][1]["status"], h["messages"][1]["content"]) == ("cancelled", t.text)
        nxt = await assert_next_turn_completes(c, fake)
        assert_key_kept_secret(llm_server, t, nxt)
    finally:
        await c.close()


@aio
async def test_a_detached_reply_whose_time_runs_out_closes_the_upstream_stream(llm_server, fake):
    fake.reset(SLOW)
    c = await Client.open(llm_server)
    await c.message("another long story")
    t = await c.collect(stop_after_deltas=3)
    left_at = time.monotonic()
    await c.close()

    [call] = fake.calls
    closed_at = fake.wait_closed(call)
    assert closed_at is not None, "the upstream stream was not closed when the detached reply stopped"
    assert DETACHED_S * 0.8 < closed_at - left_at < DETACHED_S + CLOSE_BOUND_S, "it went on, then stopped"
    assert not call.finished and call.chunks_sent < len(SLOW["chunks"])

    messages = await stored(llm_server, c, t.ack["conversation_id"], 2)
    reply = messages[1]
    assert reply["status"] == "interrupted"
    assert reply["content"].startswith(t.text) and "".join(SLOW["chunks"]).startswith(reply["content"])
    assert reply["model"] == "fake-model" and isinstance(reply["first_token_ms"], int)
    assert_key_kept_secret(llm_server, t)


# -- a backend that is not there ----------------------------------------------------------------------
def readyz(server: ServerProcess) -> httpx.Response:
    return httpx.get(server.base_url + "/readyz", timeout=10)


@aio
async def test_backend_unreachable_at_startup_keeps_the_server_up_and_turns_end_in_error(make_server):
    port = free_port()
    server = make_server("sqlite", **openai_env(f"http://127.0.0.1:{port}/v1"))
    r = readyz(server)
    assert r.status_code == 503 and r.json()["backend"] == "unreachable" and r.json()["database"] == "ok", r.text

    c = await Client.open(server)  # still accepts sockets
    late_fake: FakeLLM | None = None
    try:
        t = await c.turn("anyone?", timeout=60)
        detail = assert_failed(t, "")
        assert "unreachable" in detail, detail

        # The backend comes up: the same socket's next turn completes, and /readyz follows.
        late_fake = FakeLLM(port=port).start()
        nxt = await c.complete("now?")
        assert nxt.done["content"] == FULL and len(late_fake.calls) == 1
        ready = await poll(lambda: readyz(server),
                           lambda resp: resp.status_code == 200, timeout=20)
        assert ready.status_code == 200 and ready.json()["backend"] == "ok", ready.text
        assert_key_kept_secret(server, t, nxt)
    finally:
        await c.close()
        if late_fake is not None:
            late_fake.stop()
