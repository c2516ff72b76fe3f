"""The two frame rules a person meets in the first hour: `history` without a conversation, and text
that starts with `{` but is not JSON."""

from __future__ import annotations

import pytest

from server.protocol.codes import ErrorCode
from server.protocol.frames import FrameError, HistoryFrame, parse

LIMIT = 1000


@pytest.mark.parametrize("raw", ['{"type":"history"}', '{"type":"history","conversation_id":null}',
                                 '{"type":"history","limit":5}'])
def test_history_without_conversation_id_means_the_current_one(raw):
    frame = parse(raw, LIMIT)
    assert isinstance(frame, HistoryFrame) and frame.conversation_id is None


def test_history_conversation_id_must_still_be_a_string_when_present():
    with pytest.raises(FrameError) as e:
        parse('{"type":"history","conversation_id":5}', LIMIT)
    assert e.value.code is ErrorCode.INVALID


@pytest.mark.parametrize("raw", ["{hello there", "{ not json }", "{'type': 'message'}"])
def test_text_with_a_leading_brace_that_is_not_json_says_how_to_send_text(raw):
    with pytest.raises(FrameError) as e:
        parse(raw, LIMIT)
    assert e.value.code is ErrorCode.INVALID
    assert "without a leading '{'" in e.value.detail and '{"type":"message","content":' in e.value.detail
