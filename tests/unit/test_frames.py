"""Client frame parsing and server error frames (server/protocol/frames.py), tested directly.

Every rule of the chat.v1 "Frames from the client" section that can be decided from one frame alone:
plain-text shorthand, JSON shape, field types, content limits counted in code points, and which errors
echo the client_id.
"""

from __future__ import annotations

import json

import orjson
import pytest

from server.protocol.codes import ErrorCode
from server.protocol.frames import (
    ABSENT,
    DEFAULT_HISTORY_LIMIT,
    CancelFrame,
    FrameError,
    HistoryFrame,
    MessageFrame,
    parse,
    storable,
)
from server.protocol.outgoing import encode, error

LIMIT = 100


def frame(**fields: object) -> str:
    return json.dumps(fields)


def refused(raw: str, max_chars: int = LIMIT) -> FrameError:
    with pytest.raises(FrameError) as info:
        parse(raw, max_chars)
    return info.value


# -- plain text ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("raw", ["hello", "  hello  ", "[1, 2]", '"quoted"', "héllo 𝄞", "a}{", "line\nbreak"])
def test_plain_text_is_a_message_with_the_whole_frame_as_content(raw):
    assert parse(raw, LIMIT) == MessageFrame(content=raw, conversation_id=ABSENT, client_id=None)


@pytest.mark.parametrize("raw", ["", " ", "\n\t  ", "\u3000"])
def test_blank_plain_text_is_invalid(raw):
    assert refused(raw).code is ErrorCode.INVALID


def test_plain_text_over_the_limit_is_too_large():
    assert parse("x" * LIMIT, LIMIT).content == "x" * LIMIT
    assert refused("x" * (LIMIT + 1)).code is ErrorCode.TOO_LARGE


@pytest.mark.parametrize("raw", ["a\x00b", "a\ud800b", "\udfff tail"])
def test_plain_text_with_nul_or_lone_surrogate_is_invalid(raw):
    assert refused(raw).code is ErrorCode.INVALID


# -- JSON shape ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("prefix", [" ", "\n", "\t\r\n  "])
def test_leading_whitespace_before_brace_is_still_json(prefix):
    assert parse(prefix + '{"type":"cancel"}', LIMIT) == CancelFrame()
    # Were it taken as plain text, this would be a message whose content is the raw JSON.
    assert parse(prefix + frame(type="message", content="hi"), LIMIT) == MessageFrame("hi")


@pytest.mark.parametrize("raw, why", [
    ("{", "truncated"),
    ("{'type': 'cancel'}", "single quotes"),
    ('{"type":"cancel"} trailing', "trailing garbage"),
    ('{"type":"cancel"}{"type":"cancel"}', "two objects"),
    ("{}", "no type"),
    ('{"type": null}', "null type"),
    ('{"type": 1}', "numeric type"),
    ('{"type": ["message"]}', "list type"),
    ('{"type": "Message", "content": "x"}', "type is case-sensitive"),
    ('{"type": "delete"}', "unknown type"),
    ('{"type": ""}', "empty type"),
])
def test_malformed_json_frames_are_invalid(raw, why):
    e = refused(raw)
    assert e.code is ErrorCode.INVALID, why
    assert e.client_id is None and e.detail


def test_unknown_type_detail_names_it_without_echoing_a_huge_one():
    e = refused(frame(type="x" * 10_000))
    assert e.code is ErrorCode.INVALID and len(e.detail) < 300


def nested(depth: int) -> str:
    return '{"type":"message","content":"x","extra":' + "[" * depth + "]" * depth + "}"


def test_moderately_nested_json_in_an_ignored_field_is_accepted():
    assert parse(nested(100), 10_000) == MessageFrame("x")


@pytest.mark.parametrize("depth", [2_000, 200_000])
def test_deeply_nested_json_is_invalid_not_a_recursion_error(depth):
    assert refused(nested(depth), 10 * depth).code is ErrorCode.INVALID


def test_deeply_nested_objects_are_invalid():
    depth = 100_000
    assert refused('{"a":' * depth + "1" + "}" * depth).code is ErrorCode.INVALID


def test_cancel_is_parsed_and_extra_fields_are_ignored():
    assert parse('{"type":"cancel"}', LIMIT) == CancelFrame()
    assert parse(frame(type="cancel", client_id=5, reason="bored"), LIMIT) == CancelFrame()


# -- message -------------------------------------------------------------------------------------------
def test_message_fields_are_carried():
    assert parse(frame(type="message", content="hi", conversation_id="c1", client_id="k1"), LIMIT) == \
        MessageFrame(content="hi", conversation_id="c1", client_id="k1")


def test_conversation_id_absent_null_and_string_are_distinct():
    absent = parse(frame(type="message", content="hi"), LIMIT)
    null = parse(frame(type="message", content="hi", conversation_id=None), LIMIT)
    given = parse(frame(type="message", content="hi", conversation_id="conv-1"), LIMIT)
    assert absent.conversation_id is ABSENT
    assert null.conversation_id is None
    assert given.conversation_id == "conv-1"


@pytest.mark.parametrize("conversation_id", [1, 1.5, True, [], {}, ["c"]])
def test_conversation_id_of_wrong_type_is_invalid_and_echoes_client_id(conversation_id):
    e = refused(frame(type="message", content="hi", conversation_id=conversation_id, client_id="k"))
    assert e.code is ErrorCode.INVALID and e.client_id == "k"


@pytest.mark.parametrize("fields, code, echoed", [
    # content problems, with a string client_id: echoed
    ({"client_id": "k"}, ErrorCode.INVALID, "k"),  # no content
    ({"client_id": "k", "content": None}, ErrorCode.INVALID, "k"),
    ({"client_id": "k", "content": 5}, ErrorCode.INVALID, "k"),
    ({"client_id": "k", "content": ["hi"]}, ErrorCode.INVALID, "k"),
    ({"client_id": "k", "content": ""}, ErrorCode.INVALID, "k"),
    ({"client_id": "k", "content": " \n\t "}, ErrorCode.INVALID, "k"),
    ({"client_id": "k", "content": "a\x00b"}, ErrorCode.INVALID, "k"),
    ({"client_id": "k", "content": "x" * (LIMIT + 1)}, ErrorCode.TOO_LARGE, "k"),
    # client_id of the wrong length: echoed, since it is a string
    ({"client_id": "", "content": "hi"}, ErrorCode.INVALID, ""),
    ({"client_id": "k" * 65, "content": "hi"}, ErrorCode.INVALID, "k" * 65),
    # client_id that is not a string: never echoed
    ({"client_id": 7, "content": "hi"}, ErrorCode.INVALID, None),
    ({"client_id": True, "content": "hi"}, ErrorCode.INVALID, None),
    ({"client_id": ["k"], "content": "hi"}, ErrorCode.INVALID, None),
    ({"client_id": {"k": 1}, "content": "hi"}, ErrorCode.INVALID, None),
    ({"client_id": 7, "content": "x" * (LIMIT + 1)}, ErrorCode.INVALID, None),
    # no client_id at all
    ({"content": "x" * (LIMIT + 1)}, ErrorCode.TOO_LARGE, None),
    ({"content": ""}, ErrorCode.INVALID, None),
    ({"client_id": None, "content": ""}, ErrorCode.INVALID, None),
])
def test_message_errors_and_client_id_echo(fields, code, echoed):
    e = refused(frame(type="message", **fields))
    assert (e.code, e.client_id) == (code, echoed)
    assert error(e.code, e.detail, e.client_id).get("client_id") == echoed


@pytest.mark.parametrize("client_id", ["k", "k" * 64, "𝄞" * 64, "ключ-1"])
def test_client_id_of_1_to_64_code_points_is_accepted(client_id):
    assert parse(frame(type="message", content="hi", client_id=client_id), LIMIT).client_id == client_id


def test_null_client_id_means_none():
    assert parse(frame(type="message", content="hi", client_id=None), LIMIT).client_id is None


def test_content_limit_counts_code_points_not_bytes_or_utf16_units():
    astral = "𝄞"  # 4 bytes in UTF-8, 2 units in UTF-16, 12 bytes as a \\uXXXX\\uXXXX escape
    at_limit = astral * LIMIT
    escaped = json.dumps({"type": "message", "content": at_limit}, ensure_ascii=True)
    assert "\\ud834\\udd1e" in escaped
    assert parse(escaped, LIMIT).content == at_limit
    assert parse(frame(type="message", content=at_limit), LIMIT).content == at_limit
    assert refused(json.dumps({"type": "message", "content": at_limit + astral})).code is ErrorCode.TOO_LARGE


@pytest.mark.parametrize("escape", ["\\ud800", "\\udfff", "x\\ud834", "\\udd1e\\ud834"])
def test_lone_surrogate_escape_in_content_is_invalid(escape):
    # orjson refuses it as JSON, or the content check does: either way, `invalid`.
    e = refused('{"type":"message","client_id":"k","content":"' + escape + '"}')
    assert e.code is ErrorCode.INVALID


def test_nul_escape_in_content_is_invalid():
    assert refused('{"type":"message","content":"a\\u0000b"}').code is ErrorCode.INVALID


def test_content_is_kept_verbatim():
    content = "  leading and trailing  \n\ttabs, \"quotes\", emoji 😀, RTL עברית  "
    assert parse(frame(type="message", content=content), LIMIT * 10).content == content


# -- history -------------------------------------------------------------------------------------------
def test_history_defaults():
    assert DEFAULT_HISTORY_LIMIT == 50
    assert parse(frame(type="history", conversation_id="c"), LIMIT) == HistoryFrame("c", None, 50)
    assert parse(frame(type="history", conversation_id="c", limit=None, before=None), LIMIT) == \
        HistoryFrame("c", None, 50)


@pytest.mark.parametrize("limit", [1, 2, 50, 199, 200])
def test_history_limit_in_bounds_is_accepted(limit):
    assert parse(frame(type="history", conversation_id="c", limit=limit, before="m1"), LIMIT) == \
        HistoryFrame("c", "m1", limit)


@pytest.mark.parametrize("limit", [0, -1, 201, 10**20, True, False, 1.0, 50.5, "50", [50], {}])
def test_history_limit_out_of_bounds_or_not_an_integer_is_invalid(limit):
    assert refused(frame(type="history", conversation_id="c", limit=limit)).code is ErrorCode.INVALID


@pytest.mark.parametrize("before", [1, 1.5, True, ["m"], {}])
def test_history_before_must_be_a_string(before):
    assert refused(frame(type="history", conversation_id="c", before=before)).code is ErrorCode.INVALID


@pytest.mark.parametrize("fields", [{"conversation_id": 3}, {"conversation_id": []}])
def test_history_conversation_id_when_present_is_a_string(fields):  # absent: tests/unit/test_frames_ops.py
    assert refused(frame(type="history", **fields)).code is ErrorCode.INVALID


# -- server frames -------------------------------------------------------------------------------------
def test_error_frame_without_client_id_has_no_such_key():
    f = error(ErrorCode.BUSY, "too many waiting")
    assert f == {"type": "error", "code": "busy", "detail": "too many waiting"}


@pytest.mark.parametrize("client_id", ["k", ""])
def test_error_frame_repeats_a_string_client_id(client_id):
    f = error(ErrorCode.TOO_LARGE, "too long", client_id)
    assert f == {"type": "error", "code": "too_large", "detail": "too long", "client_id": client_id}


@pytest.mark.parametrize("code", list(ErrorCode))
def test_encoded_error_is_compact_json_with_the_wire_code(code):
    text = encode(error(code, "détail 𝄞", "k")).decode("utf-8")  # a text frame's payload: UTF-8
    assert "\n" not in text and ", " not in text
    assert orjson.loads(text) == {"type": "error", "code": code.value, "detail": "détail 𝄞", "client_id": "k"}


def test_error_codes_are_the_wire_names():
    assert sorted(c.value for c in ErrorCode) == sorted(
        ["invalid", "too_large", "not_found", "busy", "rate_limited", "unavailable", "internal"])


# -- ids no database can hold ---------------------------------------------------------------------------
UNSTORABLE_IDS = {"NUL": r"a\u0000b", "lone high surrogate": r"\ud800", "lone low surrogate": r"x\udfff"}


@pytest.mark.parametrize("escaped", UNSTORABLE_IDS.values(), ids=UNSTORABLE_IDS.keys())
def test_client_id_holding_nul_or_lone_surrogate_is_invalid_and_echoed(escaped):
    with pytest.raises(FrameError) as e:
        parse(f'{{"type":"message","content":"hi","client_id":"{escaped}"}}', LIMIT)
    assert e.value.code is ErrorCode.INVALID and e.value.client_id == json.loads(f'"{escaped}"')


@pytest.mark.parametrize("escaped", UNSTORABLE_IDS.values(), ids=UNSTORABLE_IDS.keys())
def test_conversation_id_holding_nul_or_lone_surrogate_is_not_found(escaped):
    with pytest.raises(FrameError) as e:
        parse(f'{{"type":"message","content":"hi","client_id":"k","conversation_id":"{escaped}"}}', LIMIT)
    assert e.value.code is ErrorCode.NOT_FOUND and e.value.client_id == "k"
    with pytest.raises(FrameError) as e:
        parse(f'{{"type":"history","conversation_id":"{escaped}"}}', LIMIT)
    assert e.value.code is ErrorCode.NOT_FOUND


@pytest.mark.parametrize("escaped", UNSTORABLE_IDS.values(), ids=UNSTORABLE_IDS.keys())
def test_history_before_holding_nul_or_lone_surrogate_is_invalid(escaped):
    with pytest.raises(FrameError) as e:
        parse(f'{{"type":"history","conversation_id":"c","before":"{escaped}"}}', LIMIT)
    assert e.value.code is ErrorCode.INVALID


def test_storable_refuses_only_nul_and_lone_surrogates():
    assert storable("ключ 🙂 \u2028 é")
    assert not storable("a\x00") and not storable("\ud800") and not storable("x\udfffy")


def test_error_repeating_a_lone_surrogate_client_id_is_still_json_that_round_trips():
    client_id = json.loads(r'"x\udfff"')
    payload = encode(error(ErrorCode.INVALID, "bad", client_id))
    payload.decode("utf-8")  # valid UTF-8, sendable as a text frame: the surrogate is escaped, not raw
    assert json.loads(payload)["client_id"] == client_id


def test_storable_text_drops_what_neither_database_takes_and_keeps_the_rest():
    from server.protocol.frames import storable, storable_text

    for text in ["plain", "é and 😀", "", "\u2028 line separator"]:
        assert storable_text(text) == text
    assert storable_text("a\x00b") == "ab"
    assert storable_text("half \ud83d pair \udfff") == "half  pair "
    assert storable(storable_text("x\x00\ud800y😀"))


def test_select_takes_an_optional_client_id_and_repeats_it_in_its_refusals():
    from server.protocol.frames import SelectFrame

    ok = parse('{"type":"select","conversation_id":"c","message_id":"m","client_id":"sel-1"}', 100)
    assert ok == SelectFrame("c", "m", "sel-1")
    assert parse('{"type":"select","conversation_id":"c","message_id":"m"}', 100) == SelectFrame("c", "m")
    for raw, code in (('{"type":"select","conversation_id":"c","client_id":"sel-2"}', ErrorCode.INVALID),
                      ('{"type":"select","conversation_id":"c","message_id":"' + "x" * 40 + '","client_id":"sel-2"}',
                       ErrorCode.NOT_FOUND)):
        with pytest.raises(FrameError) as e:
            parse(raw, 100)
        assert (e.value.code, e.value.client_id) == (code, "sel-2")
