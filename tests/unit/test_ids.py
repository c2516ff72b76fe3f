"""Ids longer than their column (String(36)) cannot name anything: not_found before any query."""

from __future__ import annotations

import json

import pytest

from server.protocol.codes import ErrorCode
from server.protocol.frames import MAX_ID_CHARS, FrameError, known_id, parse


def test_known_id_takes_uuids_and_refuses_longer_ids_and_nul():
    assert known_id("5b0e" + "0" * 32) and known_id("x" * MAX_ID_CHARS)
    assert not known_id("x" * (MAX_ID_CHARS + 1)) and not known_id("a\x00b")


def test_a_message_naming_a_too_long_conversation_is_parsed_so_a_resend_stays_a_duplicate():
    # Its not_found comes from the turn, after the client_id check and without a query (turns.py).
    frame = parse(json.dumps({"type": "message", "content": "hi", "conversation_id": "c" * 37, "client_id": "k"}),
                  100)
    assert frame.conversation_id == "c" * 37


@pytest.mark.parametrize("frame", [
    {"type": "history", "conversation_id": "c" * 37},
])
def test_a_frame_naming_a_too_long_conversation_is_not_found(frame):
    with pytest.raises(FrameError) as e:
        parse(json.dumps(frame), 100)
    assert e.value.code == ErrorCode.NOT_FOUND
    assert e.value.client_id == frame.get("client_id")


def test_a_too_long_before_is_invalid():
    with pytest.raises(FrameError) as e:
        parse(json.dumps({"type": "history", "conversation_id": "c", "before": "m" * 37}), 100)
    assert e.value.code == ErrorCode.INVALID
