"""Bad input over the socket: the error frame or close code it gets, and what it leaves behind.

For every frame the server refuses with an `error`, the socket must stay usable (the next good
message completes a turn) and nothing may be stored for the refused frame: each test runs as a
fresh user, so that user's conversations hold exactly the good turn's two messages afterwards.
An error caused by a message that carried a string `client_id` repeats it, and that client_id is
not used up (sending it again afterwards is not a duplicate).
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from support.client import Client, Refused, Rest, aio, cid

GOOD = "still here"
SMALL_LIMIT = 50  # CHAT_MAX_MESSAGE_CHARS of the small-limit server
SMALL_FRAME_LIMIT = 12 * SMALL_LIMIT + 4096  # bytes: a bigger frame closes with 1009
DEFAULT_LIMIT = 32_000


@pytest.fixture
def small_server(db, session_servers):
    """A shared server per database whose content limit is 50 code points."""
    return session_servers(db, CHAT_MAX_MESSAGE_CHARS=SMALL_LIMIT)


def stored(server, token: str) -> list[list[tuple[str, str]]]:
    """(role, content) of every message of every conversation of this user, newest conversation first."""
    rest = Rest(server, token)
    try:
        return [[(m["role"], m["content"]) for m in rest.all_messages(i["id"])] for i in rest.conversations()]
    finally:
        rest.http.close()


async def good_turn_is_all_that_is_stored(c: Client, server, client_id: str | None = None,
                                          content: str = GOOD, token: str | None = None) -> None:
    """The socket still completes a turn, and that turn is all this user has stored."""
    t = await c.complete(content, client_id=client_id)
    assert t.types()[0] == "ack" and t.ack["duplicate"] is False, t.frames
    assert t.ack["client_id"] == client_id
    assert stored(server, token or c.token) == [[("user", content), ("assistant", f"You said: {content}")]]


def message_frame(fragment: str, client_id: str | None = None) -> str:
    """A raw `message` frame: `fragment` is spliced in as is, so it can hold escapes JSON libraries refuse."""
    head = '{"type":"message",' + (f'"client_id":{json.dumps(client_id)},' if client_id is not None else "")
    return head + fragment + "}"


# -- invalid: frames that are not a valid client frame ---------------------------------------------------
DEEP = 100_000
NOT_A_FRAME = {
    "truncated JSON": '{"type":"message","content":"hi"',
    "not JSON at all": "{hello there}",
    "single quotes": "{'type':'message','content':'hi'}",
    "trailing garbage": '{"type":"message","content":"hi"} and more',
    "two objects": '{"type":"message","content":"a"}{"type":"message","content":"b"}',
    "empty object": "{}",
    "object without type": '{"content":"hi"}',
    "type is a number": '{"type":5,"content":"hi"}',
    "type is null": '{"type":null,"content":"hi"}',
    "type is an object": '{"type":{"name":"message"},"content":"hi"}',
    "unknown type": '{"type":"shout","content":"hi"}',
    "type in another case": '{"type":"Message","content":"hi"}',
    "message without content": '{"type":"message"}',
    "content is a number": message_frame('"content":5'),
    "content is null": message_frame('"content":null'),
    "content is a list": message_frame('"content":["hi"]'),
    "content is an object": message_frame('"content":{"text":"hi"}'),
    "conversation_id is a number": message_frame('"content":"hi","conversation_id":5'),
    "conversation_id is a list": message_frame('"content":"hi","conversation_id":["x"]'),
    "client_id is a number": message_frame('"content":"hi","client_id":5'),
    "client_id is a list": message_frame('"content":"hi","client_id":["k"]'),
    "content empty": message_frame('"content":""'),
    "content blank": message_frame('"content":" \\n\\t\\r "'),
    "content escaped NUL": message_frame('"content":"a\\u0000b"'),
    "content only NUL": message_frame('"content":"\\u0000"'),
    "content lone high surrogate": message_frame('"content":"\\ud800"'),
    "content lone low surrogate": message_frame('"content":"a\\udc00b"'),
    "content reversed surrogate pair": message_frame('"content":"\\ude00\\ud83d"'),
    "plain text with NUL": "a\x00b",
    "plain text blank": " \t\n ",
    "history conversation_id is a number": '{"type":"history","conversation_id":5}',
    "history before is a number": '{"type":"history","conversation_id":"x","before":5}',
    "deeply nested array in content": message_frame('"content":' + "[" * DEEP + "]" * DEEP),
    "deeply nested objects": '{"a":' * 5000 + "1" + "}" * 5000,
}


@pytest.mark.parametrize("frame", list(NOT_A_FRAME.values()), ids=list(NOT_A_FRAME))
@aio
async def test_bad_frame_gets_invalid_and_stores_nothing(server, frame):
    c = await Client.open(server)
    try:
        await c.send(frame)
        err = await c.expect_error("invalid")
        assert err.get("client_id") is None, err
        await good_turn_is_all_that_is_stored(c, server)
    finally:
        await c.close()


@aio
async def test_deeply_nested_extra_field_leaves_the_socket_working(server):
    c = await Client.open(server)
    try:
        # Valid JSON, so a parser without a depth limit may take it as a message; either way the socket lives.
        await c.send('{"type":"message","content":"deep","x":' + "[" * DEEP + "]" * DEEP + "}")
        first = await c.recv()
        expected = [[("user", GOOD), ("assistant", f"You said: {GOOD}")]]
        if first["type"] == "error":
            assert first["code"] == "invalid", first
        else:
            assert first["type"] == "ack", first
            rest = await c.collect()
            assert rest.done is not None and rest.done["status"] == "complete", rest.frames
            expected.append([("user", "deep"), ("assistant", "You said: deep")])
        t = await c.complete(GOOD, conversation_id=None)
        assert t.ack["duplicate"] is False
        assert stored(server, c.token) == expected
    finally:
        await c.close()


@pytest.mark.parametrize("payload", [b'{"type":"message","content":"hi"}', b"hi", b"\x00\xff"],
                         ids=["JSON message", "plain text", "not UTF-8"])
@aio
async def test_binary_frame_gets_invalid_and_stores_nothing(server, payload):
    c = await Client.open(server)
    try:
        await c.send(payload)
        await c.expect_error("invalid")
        await good_turn_is_all_that_is_stored(c, server)
    finally:
        await c.close()


# A message with a string client_id: the error repeats it, and the client_id is not used up.
BAD_MESSAGE_FIELDS = {
    "content empty": '"content":""',
    "content blank": '"content":"   "',
    "content escaped NUL": '"content":"a\\u0000b"',
    # \ud800 is well-formed JSON syntax: the frame is a message that carried a client_id.
    "content lone surrogate": '"content":"\\ud800"',
    "content is a number": '"content":5',
    "content missing": '"conversation_id":null',
    "conversation_id is a number": '"content":"hi","conversation_id":5',
}


@pytest.mark.parametrize("fragment", list(BAD_MESSAGE_FIELDS.values()), ids=list(BAD_MESSAGE_FIELDS))
@aio
async def test_invalid_message_repeats_its_client_id(server, fragment):
    c = await Client.open(server)
    try:
        k = cid()
        await c.send(message_frame(fragment, client_id=k))
        err = await c.expect_error("invalid")
        assert err.get("client_id") == k, err
        await good_turn_is_all_that_is_stored(c, server, client_id=k)
    finally:
        await c.close()


@pytest.mark.parametrize("client_id", ["", "k" * 65, "é" * 65], ids=["empty", "65 chars", "65 code points"])
@aio
async def test_client_id_outside_1_to_64_chars_is_invalid(server, client_id):
    c = await Client.open(server)
    try:
        await c.message("hi", client_id=client_id)
        err = await c.expect_error("invalid")
        assert err.get("client_id") == client_id, err
        await good_turn_is_all_that_is_stored(c, server)
    finally:
        await c.close()


@aio
async def test_client_id_of_64_chars_and_of_1_char_are_accepted(server):
    c = await Client.open(server)
    try:
        long_id = (cid() + "é" * 64)[:64]
        for k in (long_id, "1"):
            t = await c.complete(f"with {len(k)}", client_id=k)
            assert t.ack["client_id"] == k and t.ack["duplicate"] is False
        h = await c.history(t.ack["conversation_id"])
        assert [m["client_id"] for m in h["messages"] if m["role"] == "user"] == [long_id, "1"]
    finally:
        await c.close()


# -- plain text: a frame whose first non-blank character is not `{` is a message ---------------------------
PLAIN_TEXT = {
    "JSON array": "[1]",
    "JSON array of a message": '[{"type":"message","content":"hi"}]',
    "JSON string": '"quoted"',
    "JSON number": "123",
    "JSON null": "null",
    "brace later": 'hello {"type":"cancel"}',
    "closing brace first": '}{"type":"cancel"}',
}


@pytest.mark.parametrize("text", list(PLAIN_TEXT.values()), ids=list(PLAIN_TEXT))
@aio
async def test_frame_not_starting_with_a_brace_is_a_plain_text_message(server, text):
    c = await Client.open(server)
    try:
        await c.send(text)
        t = await c.collect()
        assert t.ack is not None and t.done is not None and t.done["status"] == "complete", t.frames
        assert t.ack["client_id"] is None
        assert t.done["content"] == f"You said: {text}"
        assert stored(server, c.token) == [[("user", text), ("assistant", f"You said: {text}")]]
    finally:
        await c.close()


@aio
async def test_json_object_after_leading_blanks_is_parsed_as_a_frame(server):
    c = await Client.open(server)
    try:
        await c.send(' \n\t{"type":"message","content":"parsed"}')
        t = await c.collect()
        assert t.done is not None and t.done["content"] == "You said: parsed", t.frames
        await c.send('  {"type":"nonsense"}')
        await c.expect_error("invalid")
        assert stored(server, c.token) == [[("user", "parsed"), ("assistant", "You said: parsed")]]
    finally:
        await c.close()


# -- too_large ------------------------------------------------------------------------------------------
@aio
async def test_content_over_the_limit_is_too_large_and_repeats_client_id(small_server):
    c = await Client.open(small_server)
    try:
        k = cid()
        await c.message("x" * (SMALL_LIMIT + 1), client_id=k)
        err = await c.expect_error("too_large")
        assert err.get("client_id") == k, err
        # Counted in code points: 51 astral characters are too many, however many bytes they take.
        await c.message("😀" * (SMALL_LIMIT + 1))
        await c.expect_error("too_large")
        # Plain text counts the same way.
        await c.send("y" * (SMALL_LIMIT + 1))
        await c.expect_error("too_large")
        await good_turn_is_all_that_is_stored(c, small_server, client_id=k)
    finally:
        await c.close()


@aio
async def test_content_at_the_limit_is_accepted_in_code_points(small_server):
    c = await Client.open(small_server)
    try:
        # 50 astral characters: 100 UTF-16 units, 200 UTF-8 bytes, 600 bytes when JSON-escaped.
        content = "😀" * SMALL_LIMIT
        await c.send(message_frame('"content":"' + "\\ud83d\\ude00" * SMALL_LIMIT + '"'))
        t = await c.collect()
        assert t.done is not None and t.done["status"] == "complete", t.frames
        assert stored(small_server, c.token) == [[("user", content), ("assistant", f"You said: {content}")]]
    finally:
        await c.close()


@aio
async def test_largest_readable_frame_with_long_content_is_too_large_not_closed(small_server):
    c = await Client.open(small_server)
    try:
        head = '{"type":"message","content":"'
        frame = head + "x" * (SMALL_FRAME_LIMIT - len(head) - 2) + '"}'
        assert len(frame.encode()) == SMALL_FRAME_LIMIT
        await c.send(frame)
        await c.expect_error("too_large")
        await good_turn_is_all_that_is_stored(c, small_server)
    finally:
        await c.close()


@aio
async def test_content_over_the_default_limit_is_too_large(server):
    c = await Client.open(server)
    try:
        k = cid()
        await c.message("x" * (DEFAULT_LIMIT + 1), client_id=k)
        err = await c.expect_error("too_large")
        assert err.get("client_id") == k, err
        await good_turn_is_all_that_is_stored(c, server, client_id=k)
    finally:
        await c.close()


@aio
async def test_content_at_the_default_limit_fits_even_fully_escaped(server):
    c = await Client.open(server)
    try:
        # The worst escaping: every code point a \\uXXXX\\uXXXX surrogate pair, 12 bytes each.
        frame = message_frame('"content":"' + "\\ud83d\\ude00" * DEFAULT_LIMIT + '"')
        assert len(frame.encode()) <= 12 * DEFAULT_LIMIT + 4096
        await c.send(frame)
        t = await c.collect(timeout=60)
        assert t.done is not None and t.done["status"] == "complete", t.frames[:3]
        assert stored(server, c.token) == [[("user", "😀" * DEFAULT_LIMIT),
                                            ("assistant", "You said: " + "😀" * DEFAULT_LIMIT)]]
    finally:
        await c.close()


# -- close codes -----------------------------------------------------------------------------------------
@aio
async def test_frame_over_the_size_limit_closes_1009_and_stores_nothing(small_server):
    c = await Client.open(small_server)
    head = '{"type":"message","content":"'
    frame = head + "x" * (SMALL_FRAME_LIMIT + 1 - len(head) - 2) + '"}'
    assert len(frame.encode()) == SMALL_FRAME_LIMIT + 1
    await c.send(frame)
    assert await c.closed_code() == 1009
    assert stored(small_server, c.token) == []
    # Only that socket went: the same user connects again and completes a turn.
    again = await Client.open(small_server, token=c.token)
    try:
        assert again.user_id == c.user_id
        await good_turn_is_all_that_is_stored(again, small_server, token=c.token)
    finally:
        await again.close()


@pytest.mark.parametrize("payload", [b'{"type":"message","content":"\xff"}', b"caf\xc3", b"\xed\xa0\x80"],
                         ids=["bad byte in JSON", "truncated sequence", "encoded lone surrogate"])
@aio
async def test_invalid_utf8_in_a_text_frame_closes_1007_and_stores_nothing(server, payload):
    c = await Client.open(server)
    await c.ws.send(payload, text=True)
    assert await c.closed_code() == 1007
    assert stored(server, c.token) == []


@pytest.mark.parametrize("path", ["/nope", "/", "/ws/extra", "/api/conversations"])
@aio
async def test_websocket_on_an_unknown_path_is_refused(server, path):
    elsewhere = SimpleNamespace(ws_url=server.base_url.replace("http://", "ws://") + path)
    with pytest.raises(Refused) as refused:
        await Client.open(elsewhere)
    assert (refused.value.how, refused.value.code) in {("http", 403), ("http", 404), ("close", 1008)}


# -- not_found -------------------------------------------------------------------------------------------
async def someone_elses_conversation(server) -> tuple[Client, str]:
    owner = await Client.open(server)
    t = await owner.complete("mine, not yours")
    return owner, t.ack["conversation_id"]


@aio
async def test_message_to_unknown_or_foreign_conversation_is_not_found_alike(server):
    owner, foreign = await someone_elses_conversation(server)
    c = await Client.open(server)
    try:
        k = cid()
        await c.message("hi", client_id=k, conversation_id="no-such-conversation")
        unknown_err = await c.expect_error("not_found")
        await c.message("hi", client_id=k, conversation_id=foreign)
        foreign_err = await c.expect_error("not_found")
        assert unknown_err == foreign_err and foreign_err.get("client_id") == k
        await c.message("hi", conversation_id=foreign)
        assert (await c.expect_error("not_found")).get("client_id") is None
        await good_turn_is_all_that_is_stored(c, server, client_id=k)
        assert stored(server, owner.token) == [[("user", "mine, not yours"),
                                                ("assistant", "You said: mine, not yours")]]
    finally:
        await c.close()
        await owner.close()


@aio
async def test_connecting_to_unknown_or_foreign_conversation_is_not_found_alike(server):
    owner, foreign = await someone_elses_conversation(server)
    answers = []
    try:
        for wanted in ("no-such-conversation", foreign):
            c = await Client.open(server, conversation_id=wanted)
            try:
                assert c.ready["conversation_id"] is None
                answers.append(await c.expect_error("not_found"))
                # The socket has no current conversation: the next message starts a new one.
                await good_turn_is_all_that_is_stored(c, server)
            finally:
                await c.close()
        assert answers[0] == answers[1]
        assert len(stored(server, owner.token)[0]) == 2
    finally:
        await owner.close()


@aio
async def test_history_of_unknown_or_foreign_conversation_is_not_found_alike(server):
    owner, foreign = await someone_elses_conversation(server)
    c = await Client.open(server)
    try:
        unknown_err = await c.history("no-such-conversation")
        foreign_err = await c.history(foreign)
        assert unknown_err["type"] == foreign_err["type"] == "error"
        assert unknown_err["code"] == "not_found" and unknown_err == foreign_err
        await good_turn_is_all_that_is_stored(c, server)
    finally:
        await c.close()
        await owner.close()


# -- ids holding what no database can hold ---------------------------------------------------------------
# Valid JSON can carry a NUL ("\u0000") or a lone surrogate ("\udfff"); neither database can store
# or look up either. Such an id is refused before it reaches a query, with the answer its field gets.
UNSTORABLE = {"NUL": r"a\u0000b", "lone surrogate": r"x\udfff"}


@pytest.mark.parametrize("escaped", list(UNSTORABLE.values()), ids=list(UNSTORABLE))
@aio
async def test_client_id_no_database_can_hold_is_invalid_and_repeated(server, escaped):
    c = await Client.open(server)
    try:
        for fragment in ('"content":"hi"', '"conversation_id":null'):  # with content, and without
            await c.send(f'{{"type":"message","client_id":"{escaped}",{fragment}}}')
            err = await c.expect_error("invalid")
            assert err["client_id"] == json.loads(f'"{escaped}"'), err  # repeated exactly, escaped
        await good_turn_is_all_that_is_stored(c, server)
    finally:
        await c.close()


@pytest.mark.parametrize("escaped", list(UNSTORABLE.values()), ids=list(UNSTORABLE))
@aio
async def test_conversation_or_message_id_no_database_can_hold_is_not_found_or_invalid(server, escaped):
    c = await Client.open(server)
    try:
        first = await c.complete("first")
        conv = first.ack["conversation_id"]
        k = cid()
        await c.send(message_frame(f'"content":"hi","conversation_id":"{escaped}"', client_id=k))
        assert (await c.expect_error("not_found"))["client_id"] == k
        await c.send(f'{{"type":"history","conversation_id":"{escaped}"}}')
        await c.expect_error("not_found")
        await c.send(f'{{"type":"history","conversation_id":"{conv}","before":"{escaped}"}}')
        await c.expect_error("invalid")
        second = await c.complete("second", client_id=k)  # the refused message did not use up k
        assert second.ack["conversation_id"] == conv and second.done["status"] == "complete"
        assert stored(server, c.token) == [[("user", "first"), ("assistant", "You said: first"),
                                            ("user", "second"), ("assistant", "You said: second")]]
    finally:
        await c.close()


@aio
async def test_connecting_to_a_conversation_id_holding_a_nul_is_not_found(server):
    c = await Client.open(server, conversation_id="a%00b")
    try:
        assert c.ready["conversation_id"] is None
        await c.expect_error("not_found")
        await good_turn_is_all_that_is_stored(c, server)
    finally:
        await c.close()


# -- history arguments ------------------------------------------------------------------------------------
@pytest.mark.parametrize("limit", [0, -1, 201, 10**20, "x", "10", True, False, 1.5, [5]],
                         ids=["0", "-1", "201", "huge", "x", "string 10", "true", "false", "1.5", "list"])
@aio
async def test_history_limit_outside_1_to_200_is_invalid(server, limit):
    c = await Client.open(server)
    try:
        t = await c.complete(GOOD)
        answer = await c.history(t.ack["conversation_id"], limit=limit)
        assert answer["type"] == "error" and answer["code"] == "invalid", answer
        for ok in (1, 200):
            page = await c.history(t.ack["conversation_id"], limit=ok)
            assert page["type"] == "history" and len(page["messages"]) == min(ok, 2), page
        assert stored(server, c.token) == [[("user", GOOD), ("assistant", f"You said: {GOOD}")]]
    finally:
        await c.close()


@aio
async def test_history_before_a_message_of_another_conversation_is_invalid(server):
    owner, foreign = await someone_elses_conversation(server)
    c = await Client.open(server)
    try:
        first = await c.complete("first", conversation_id=None)
        second = await c.complete("second", conversation_id=None)
        a, b = first.ack["conversation_id"], second.ack["conversation_id"]
        assert a != b
        foreign_message = (await owner.history(foreign))["messages"][0]["id"]
        for before in (second.ack["message_id"], foreign_message, "no-such-message", ""):
            answer = await c.history(a, before=before)
            assert answer["type"] == "error" and answer["code"] == "invalid", (before, answer)
        # The same before on its own conversation is fine.
        page = await c.history(b, before=second.done["message_id"])
        assert [m["content"] for m in page["messages"]] == ["second"] and page["has_more"] is False
        assert sorted(len(msgs) for msgs in stored(server, c.token)) == [2, 2]
    finally:
        await c.close()
        await owner.close()
