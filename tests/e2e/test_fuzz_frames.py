"""Property-based fuzzing of the socket: thousands of random and mutated client frames on one
persistent socket, while another user keeps completing turns on the same server.

For every frame the server sends: valid JSON, a `type` of the contract, an error `code` of the
contract, the fields each frame type promises, `done` content equal to its deltas, and never a
conversation or message of the other user. After each fuzzed frame the socket must still be open
(unless the frame was oversize, 1009, or invalid UTF-8, 1007) and idle again: a sentinel (a resend
of an already answered client_id, answered from the store) is sent behind the fuzzed frames, and
everything up to the sentinel's `done` is read. A binary frame must get exactly one `invalid`.

One server on SQLite for the module, with the rate and frame limits raised so that they do not
close the socket (they have tests of their own in test_limits.py).
"""

from __future__ import annotations

import json
import tempfile
import threading
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.servers import ServerProcess
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

MAX_CHARS = 200
FRAME_LIMIT = 12 * MAX_CHARS + 4096
SERVER_ENV = {
    "CHAT_MAX_MESSAGE_CHARS": MAX_CHARS,
    "CHAT_RATE_LIMIT_PER_MINUTE": 10_000_000,
    "CHAT_FLOOD_CLOSE_AFTER": 1_000_000,
    "CHAT_MAX_FRAMES_PER_SECOND": 1_000_000,
    "CHAT_SQLITE_SYNCHRONOUS": "NORMAL",  # durability is not what is fuzzed here
}
EXAMPLES = 1500
MAX_CLOSES = 10  # oversize and invalid UTF-8 frames (each closes the socket) sent per run
TIMEOUT = 30.0

TYPES = {"ready", "ack", "start", "delta", "done", "history", "error"}
CODES = {"invalid", "too_large", "not_found", "busy", "rate_limited", "unavailable", "internal"}
DONE_STATUSES = {"complete", "cancelled", "error"}
STORED_STATUSES = {"complete", "cancelled", "error", "interrupted"}


@pytest.fixture(scope="module")
def fuzz_server(databases, tmp_root):
    workdir = Path(tempfile.mkdtemp(prefix="srv-fuzz-", dir=tmp_root))
    srv = ServerProcess(databases.url("sqlite"), {k: str(v) for k, v in SERVER_ENV.items()}, workdir).start()
    yield srv
    srv.kill()


def open_socket(server: ServerProcess, token: str | None = None) -> tuple[ClientConnection, dict[str, Any]]:
    url = server.ws_url + (f"?token={token}" if token else "")
    # A short close_timeout: after a 1009/1007 the server drains and discards input (the client's
    # close reply with it) until the client hangs up, so the client's wait would only add time.
    ws = connect(url, open_timeout=15, close_timeout=0.2, ping_interval=None, max_size=None, proxy=None,
                 legacy=True)
    ready = json.loads(ws.recv(timeout=TIMEOUT))
    assert ready["type"] == "ready" and isinstance(ready["user_id"], str), ready
    return ws, ready


# -- the other user ----------------------------------------------------------------------------------------
class Neighbour(threading.Thread):
    """Completes turns in a loop on its own socket until stopped; records anything that went wrong."""

    def __init__(self, server: ServerProcess):
        super().__init__(daemon=True)
        self.ws, self.ready = open_socket(server)
        self.stopping = threading.Event()
        self.failures: list[str] = []
        self.turns = 0
        self.conversations: list[str] = []
        self.message_ids: list[str] = []
        self.client_ids: list[str] = []
        self.turn()  # one before the fuzz starts, so its ids are known to the fuzzer

    def turn(self) -> None:
        k = f"n-{uuid.uuid4().hex[:12]}"
        content = f"neighbour turn {self.turns}"
        self.ws.send(json.dumps({"type": "message", "content": content, "client_id": k}))
        frames = []
        while not frames or frames[-1]["type"] not in ("done", "error"):
            frames.append(json.loads(self.ws.recv(timeout=TIMEOUT)))
        kinds = [f["type"] for f in frames]
        text = "".join(f["content"] for f in frames if f["type"] == "delta")
        if kinds[:2] != ["ack", "start"] or kinds[-1] != "done" or frames[-1]["status"] != "complete" \
                or frames[-1]["content"] != text or text != "You said: " + content:
            raise AssertionError(f"neighbour turn went wrong: {frames}")
        self.conversations.append(frames[0]["conversation_id"])
        self.message_ids += [frames[0]["message_id"], frames[-1]["message_id"]]
        self.client_ids.append(k)
        self.turns += 1

    def run(self) -> None:
        try:
            while not self.stopping.wait(0.02):  # steady, without starving the fuzzer of CPU
                self.turn()
        except Exception as e:  # reported by the test, in the main thread
            self.failures.append(repr(e))
        finally:
            self.ws.close()

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=TIMEOUT)


# -- frames the fuzzer sends ----------------------------------------------------------------------------------
@dataclass
class Fuzz:
    payload: str | bytes
    binary: bool = False  # bytes sent as a binary frame (else bytes are sent as a text frame)

    @property
    def wire(self) -> bytes:
        return self.payload if isinstance(self.payload, bytes) else self.payload.encode()

    @property
    def expected_close(self) -> int | None:
        if self.binary:
            return None
        if len(self.wire) > FRAME_LIMIT:
            return 1009
        try:
            self.wire.decode("utf-8")
        except UnicodeDecodeError:
            return 1007
        return None


UNICODE_EDGES = ["\x00", "\ud800", "\udfff", "\udc00x", "\ud83d\ude00", "\ufeff", "\u200b", "\u2028", "\u3000",
                 "\xa0", "\uffff", "\U0010ffff", "e\u0301", "\u202e", " ", "\t\n", "😀", "ß", "İ", "\x7f", "\\", '"']
huge_ints = st.integers(min_value=-(2**200), max_value=2**200)
json_scalars = (st.none() | st.booleans() | huge_ints | st.integers() | st.floats()
                | st.text(max_size=40) | st.sampled_from(UNICODE_EDGES))
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=12)
around_the_limit = st.builds(lambda n, ch: ch * n, st.integers(min_value=MAX_CHARS - 2, max_value=MAX_CHARS + 3),
                             st.sampled_from(["z", "é", "😀", "\ud83d\ude00"]))
edge_strings = st.lists(st.sampled_from(UNICODE_EDGES) | st.text(max_size=5), min_size=1, max_size=6).map("".join)


def dumps(value: Any, ascii_only: bool) -> str:
    """JSON text; lone surrogates can only travel as \\u escapes, so those always go ASCII."""
    text = json.dumps(value, ensure_ascii=ascii_only)
    try:
        text.encode()
    except UnicodeEncodeError:
        text = json.dumps(value, ensure_ascii=True)
    return text


@dataclass
class Pools:
    """Ids worth putting into frames: the fuzzer's own, the neighbour's, and unknown ones."""

    own_conversations: list[str] = field(default_factory=list)
    own_messages: list[str] = field(default_factory=list)
    own_client_ids: list[str] = field(default_factory=list)
    neighbour: Neighbour | None = None

    def ids(self) -> list[str]:
        n = self.neighbour
        others = (n.conversations[:3] + n.message_ids[:3] + n.client_ids[:3]) if n else []
        return (self.own_conversations[-5:] + self.own_messages[-5:] + self.own_client_ids[-3:] + others
                + [str(uuid.uuid4()), "", " ", "x" * 64, "x" * 65])


# Weighted by repetition. Frames that close the socket are rarer: each costs a closing handshake
# and a new socket.
KINDS = (["text"] * 4 + ["json value"] * 2 + ["mutated"] * 6 + ["valid"] * 4 + ["edge content"] * 2
         + ["deep nesting", "huge number", "binary", "binary", "leading blank", "oversize", "invalid utf-8"])


def draw_frame(data: st.DataObject, pools: Pools) -> Fuzz:
    kind = data.draw(st.sampled_from(KINDS), label="kind")
    # An index into the pool rather than sampled_from(pool): the pool grows as the fuzz goes, and
    # Hypothesis needs the same choices to mean the same draws.
    ids = st.integers(min_value=0, max_value=63).map(lambda i: pools.ids()[i % len(pools.ids())])
    if kind == "text":
        return Fuzz(data.draw(st.text(max_size=300), label="text"))
    if kind == "json value":
        return Fuzz(dumps(data.draw(json_values, label="value"), data.draw(st.booleans())))
    if kind == "binary":
        return Fuzz(data.draw(st.binary(max_size=300) | st.just(b'{"type":"message","content":"hi"}')), binary=True)
    if kind == "leading blank":
        blank = data.draw(st.sampled_from([" ", "\n", "\t", "\r\n ", "\u3000", "\ufeff"]))
        return Fuzz(blank + dumps(data.draw(st.sampled_from([{"type": "message", "content": "hi"},
                                                             {"type": "cancel"}])), True))
    if kind == "deep nesting":
        depth = data.draw(st.integers(min_value=1, max_value=1800))
        opener, closer = data.draw(st.sampled_from([("[", "]"), ('{"a":', "}")]))
        inner = opener * depth + "1" + closer * depth
        return Fuzz(data.draw(st.sampled_from(['{"type":"message","content":%s}', '{"type":%s}',
                                               '{"type":"history","conversation_id":"c","limit":%s}'])) % inner)
    if kind == "huge number":
        number = data.draw(st.sampled_from(["1" + "0" * 400, "-1e400", "1e400", "9223372036854775808",
                                            "-9223372036854775809", "0.0000001e-400", "NaN", "Infinity"]))
        return Fuzz(data.draw(st.sampled_from(['{"type":"history","conversation_id":"c","limit":%s}',
                                               '{"type":"message","content":"n","client_id":%s}',
                                               '{"type":"message","content":%s}'])) % number)
    if kind == "oversize":
        size = data.draw(st.integers(min_value=FRAME_LIMIT + 1, max_value=FRAME_LIMIT + 3000))
        head = '{"type":"message","content":"'
        return Fuzz(head + "y" * (size - len(head) - 2) + '"}')
    if kind == "invalid utf-8":
        bad = data.draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xc0\xaf",
                                         b"\xe2\x82"]))
        prefix = data.draw(st.sampled_from([b"", b"plain ", b'{"type":"message","content":"']))
        return Fuzz(prefix + bad + (b'"}' if prefix.startswith(b"{") else b""))

    # message / history / cancel, valid or mutated
    frame: dict[str, Any] = data.draw(st.sampled_from(["message", "message", "history", "cancel"]).flatmap(
        lambda t: st.fixed_dictionaries({"type": st.just(t)}, optional={
            "content": st.text(min_size=1, max_size=60) | edge_strings | around_the_limit,
            "client_id": st.text(min_size=1, max_size=64) | ids,
            "conversation_id": ids | st.none(),
        }) if t == "message" else st.fixed_dictionaries({"type": st.just(t)}, optional={
            "conversation_id": ids, "before": ids | st.none(),
            "limit": st.integers(min_value=-2, max_value=202) | st.none(),
        }) if t == "history" else st.just({"type": t})), label="frame")
    if frame["type"] == "message" and "content" not in frame and kind == "valid":
        frame["content"] = "fuzz"
    if frame["type"] == "history" and "conversation_id" not in frame and kind == "valid":
        frame["conversation_id"] = data.draw(ids)
    if kind == "edge content":
        frame = {"type": "message", "content": data.draw(edge_strings, label="content")}
    if kind == "mutated":
        for _ in range(data.draw(st.integers(min_value=1, max_value=3))):
            how = data.draw(st.sampled_from(["delete", "retype", "add", "type"]))
            keys = sorted(frame)
            if how == "delete" and keys:
                del frame[data.draw(st.sampled_from(keys))]
            elif how == "retype" and keys:
                frame[data.draw(st.sampled_from(keys))] = data.draw(json_values | ids)
            elif how == "add":
                frame[data.draw(st.text(max_size=12))] = data.draw(json_values)
            else:
                frame["type"] = data.draw(st.sampled_from(["Message", "message ", "MESSAGE", "", "ack", "done",
                                                           "ready", "history\x00", "cancel"]) | st.text(max_size=8))
    return Fuzz(dumps(frame, data.draw(st.booleans())))


# -- the fuzzed socket ----------------------------------------------------------------------------------------
class Fuzzer:
    def __init__(self, server: ServerProcess, pools: Pools):
        self.server = server
        self.pools = pools
        self.ws, ready = open_socket(server)
        self.token, self.user_id = ready["token"], ready["user_id"]
        self.reply_text: dict[str, str] = {}  # reply id -> concatenated deltas
        self.frames_sent = 0
        self.reopened = 0
        self.closes_skipped = 0
        self.seen: Counter[str] = Counter()  # what came back, for the log
        self.sentinel_key = f"sentinel-{uuid.uuid4().hex}"
        self.sentinel_reply = ""
        self.ws.send(json.dumps({"type": "message", "content": "sentinel", "client_id": self.sentinel_key}))
        frames = self.read_until(lambda f: f["type"] == "done")
        assert [f["type"] for f in frames][:2] == ["ack", "start"], frames
        self.sentinel_reply = frames[-1]["message_id"]

    def reopen(self) -> None:
        self.ws, ready = open_socket(self.server, self.token)
        assert ready["user_id"] == self.user_id and ready["conversation_id"] is None, ready
        self.reopened += 1

    def check(self, frame: Any) -> None:
        """What the contract promises about any frame the server sends."""
        assert isinstance(frame, dict) and frame.get("type") in TYPES, frame
        kind = frame["type"]
        self.seen[kind if kind != "error" else f"error {frame.get('code')}"] += 1
        strings = {"ack": ["conversation_id", "message_id"], "start": ["conversation_id", "message_id", "reply_to"],
                   "delta": ["message_id", "content"], "done": ["conversation_id", "message_id", "content"],
                   "history": ["conversation_id"], "error": ["code", "detail"]}.get(kind, [])
        for name in strings:
            assert isinstance(frame.get(name), str), frame
        n = self.pools.neighbour
        theirs = set(n.conversations + n.message_ids) if n else set()
        assert not theirs & {frame.get("conversation_id"), frame.get("message_id"), frame.get("reply_to")}, frame
        if kind == "error":
            assert frame["code"] in CODES and frame["detail"].strip(), frame
            assert frame.get("client_id") is None or isinstance(frame["client_id"], str), frame
        elif kind == "ack":
            assert isinstance(frame["duplicate"], bool) and (frame["client_id"] is None
                                                             or isinstance(frame["client_id"], str)), frame
            self.pools.own_conversations.append(frame["conversation_id"])
            self.pools.own_messages.append(frame["message_id"])
            if frame["client_id"] and frame["client_id"] != self.sentinel_key:
                self.pools.own_client_ids.append(frame["client_id"])
        elif kind == "start":
            self.reply_text[frame["message_id"]] = ""
        elif kind == "delta":
            assert frame["message_id"] in self.reply_text, frame
            self.reply_text[frame["message_id"]] += frame["content"]
        elif kind == "done":
            assert frame["status"] in DONE_STATUSES, frame
            if frame["message_id"] in self.reply_text:  # a reply streamed here (not one from the store)
                assert frame["content"] == self.reply_text.pop(frame["message_id"]), frame
        elif kind == "history":
            assert isinstance(frame["messages"], list) and isinstance(frame["has_more"], bool), frame
            for m in frame["messages"]:
                assert m["role"] in ("user", "assistant") and m["status"] in STORED_STATUSES, m
                assert isinstance(m["id"], str) and isinstance(m["content"], str), m
                assert m["id"] not in theirs, m

    def read_until(self, stop) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
        frames: list[dict[str, Any]] = []
        while not frames or not stop(frames[-1]):
            raw = self.ws.recv(timeout=TIMEOUT)
            assert isinstance(raw, str), raw
            frame = json.loads(raw)
            self.check(frame)
            frames.append(frame)
        return frames

    def example(self, batch: list[Fuzz]) -> None:
        closing = next((f for f in batch if f.expected_close is not None), None)
        if closing is not None and self.reopened >= MAX_CLOSES:
            # Each close takes the server's closing handshake (up to its drain timer): past the
            # budget, frames that close are left out of the batch rather than slowing the run.
            batch = [f for f in batch if f.expected_close is None]
            closing, self.closes_skipped = None, self.closes_skipped + 1
            if not batch:
                return
        if closing is not None:
            batch = batch[:batch.index(closing) + 1]
        try:
            for fuzz in batch:
                self.ws.send(fuzz.payload, text=not fuzz.binary)
                self.frames_sent += 1
            if closing is None:
                self.ws.send(json.dumps({"type": "message", "content": "sentinel", "client_id": self.sentinel_key}))
                frames = self.read_until(lambda f: f["type"] == "done" and f["message_id"] == self.sentinel_reply)
                if len(batch) == 1 and batch[0].binary:
                    assert [(f["type"], f.get("code")) for f in frames[:1]] == [("error", "invalid")], frames
                    assert [f["type"] for f in frames[1:]] == ["ack", "done"], frames
                return
            self.read_until(lambda f: False)  # until the close
        except ConnectionClosed as e:
            code = e.rcvd.code if e.rcvd else None
            assert closing is not None, f"socket closed ({code}) after {[f.payload[:200] for f in batch]!r}"
            assert code == closing.expected_close, (code, closing.payload[:200])
            self.reopen()


@pytest.mark.timeout(300)
def test_random_and_mutated_frames_never_break_the_contract(fuzz_server):
    pools = Pools()
    pools.neighbour = neighbour = Neighbour(fuzz_server)
    fuzzer = Fuzzer(fuzz_server, pools)
    neighbour.start()

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        size = data.draw(st.integers(min_value=1, max_value=3), label="frames")
        fuzzer.example([draw_frame(data, pools) for _ in range(size)])

    try:
        run()
    finally:
        neighbour.stop()
    print(f"fuzz: {fuzzer.frames_sent} frames, socket closed and reopened {fuzzer.reopened} times "
          f"({fuzzer.closes_skipped} closing frames left out); "
          f"neighbour completed {neighbour.turns} turns; frames received: {dict(fuzzer.seen)}")
    assert neighbour.failures == [] and not neighbour.is_alive()
    assert neighbour.turns > 1
    assert fuzz_server.proc is not None and fuzz_server.proc.poll() is None
    # Idle and usable at the end: a fresh turn on the fuzzed user's socket completes.
    fuzzer.ws.send(json.dumps({"type": "message", "content": "the end", "conversation_id": None}))
    frames = fuzzer.read_until(lambda f: f["type"] in ("done", "error"))
    assert frames[-1]["type"] == "done" and frames[-1]["content"] == "You said: the end", frames
    fuzzer.ws.close()
