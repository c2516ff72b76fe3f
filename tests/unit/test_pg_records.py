"""NOTIFY payloads: records as dataclasses with one codec, packed under PostgreSQL's 8000 bytes,
pieces split and merged back exactly, unknown kinds and versions skipped."""

from __future__ import annotations

import random
import uuid

import pytest

from server.replies.postgres import records as pp


def deliver(records: list[bytes], into: list[str]) -> bool:
    assembler = pp.Assembler(into)
    ok = True
    for payload in pp.pack(records):
        assert len(payload.encode()) <= pp.MAX_PAYLOAD
        records, skipped = pp.unpack(payload)
        assert skipped == 0
        for record in records:
            assert isinstance(record, pp.Pieces)
            ok = assembler.add(record) and ok
    return ok


@pytest.mark.parametrize("seed", range(40))
def test_pieces_of_any_size_arrive_whole_and_in_order(seed):
    rnd = random.Random(seed)
    alphabet = "ab é\"\\\n😀\u2028\x01"
    pieces = ["".join(rnd.choice(alphabet) for _ in range(rnd.choice([1, 7, 300, 5000, 20000])))
              for _ in range(rnd.randint(1, 25))]
    got: list[str] = []
    assert deliver(pp.pieces_records("r", 1, pieces), got)
    assert got == pieces


def test_a_resend_from_an_earlier_seq_adds_only_what_is_new():
    got: list[str] = []
    assert deliver(pp.pieces_records("r", 1, ["a ", "b "]), got)
    assert deliver(pp.pieces_records("r", 1, ["a ", "b ", "c "]), got)
    assert got == ["a ", "b ", "c "]


def test_a_gap_is_reported_and_never_filled():
    got = ["a "]
    assembler = pp.Assembler(got)
    assert not assembler.add(pp.Pieces("r", 3, ["c "]))
    assert got == ["a "]
    assert assembler.add(pp.Pieces("r", 2, ["b ", "c "])) and got == ["a ", "b ", "c "]


def test_a_fragment_of_a_stream_that_was_cut_is_dropped():
    got: list[str] = []
    assembler = pp.Assembler(got)
    assert assembler.add(pp.Pieces("r", 1, ["x" * 10], more=1))  # a fragment; its rest never comes
    assert assembler.add(pp.Pieces("r", 1, ["whole "]))  # the owner sends again from seq 1
    assert got == ["whole "]
    assert not assembler.add(pp.Pieces("r", 2, ["rest of a lost start"], continued=1)), \
        "a continuation without its start is a gap"
    assert got == ["whole "]


def test_records_are_packed_in_order_and_an_oversized_record_is_refused():
    records = [pp.encode(pp.Stop("u", str(i), "cancelled")) for i in range(500)]
    payloads = pp.pack(records, limit=1000)
    assert len(payloads) > 1 and all(len(p.encode()) <= 1000 for p in payloads)
    got = [r for p in payloads for r in pp.unpack(p)[0]]
    assert [r.reply_id for r in got if isinstance(r, pp.Stop)] == [str(i) for i in range(500)]
    with pytest.raises(pp.RecordTooLarge):
        pp.pack([b"x" * 2000], limit=1000)


ONE_OF_EACH: list[pp.Record] = [
    pp.Stop("u", "r", "cancelled"), pp.StopConversation("c"), pp.Deleted("u", "c"),
    pp.Announce("o", "u", "m", "r", "c"), pp.Interest("o", "r", 3), pp.Uninterest("o", "r"),
    pp.Pieces("r", 1, ["a", "b"], 1, 0), pp.Finished("r", "error", 2, "boom"), pp.Gone("r"),
    pp.SeqQuery("o", ["r1", "r2"]), pp.SeqAnswer("r1", 7), pp.Selected("u", "c", "m"), pp.Updated("u", "c"),
    pp.Announce("o", "u", "m", "r", "c", 1),
]


def test_every_kind_survives_its_codec():
    assert {type(r) for r in ONE_OF_EACH} == set(pp.KINDS.values())
    records, skipped = pp.unpack(pp.pack([pp.encode(r) for r in ONE_OF_EACH])[0])
    assert (records, skipped) == (ONE_OF_EACH, 0)


def test_records_of_an_unknown_kind_or_version_are_skipped_and_counted():
    newer = b'["s",2,"u","r","cancelled","a field of the next release"]'
    unknown = b'["z",1,"what the next release adds"]'
    short = b'["s",1,"u"]'
    payload = pp.pack([newer, pp.encode(pp.Gone("r")), unknown, short])[0]
    assert pp.unpack(payload) == ([pp.Gone("r")], 3)


def test_a_payload_not_of_ours_is_refused():
    for payload in ('["s","u","r","cancelled"]', "[]", '{"x":1}', "3"):
        with pytest.raises(ValueError):
            pp.unpack(payload)


def test_a_query_for_100_reply_ids_fits_a_record():
    ids = [str(uuid.uuid4()) for _ in range(100)]
    assert len(pp.encode(pp.SeqQuery("o" * 32, ids))) < pp.MAX_RECORD


def test_a_record_too_large_is_refused_where_it_is_made_and_long_texts_are_clipped():
    with pytest.raises(pp.RecordTooLarge):
        pp.encode(pp.Finished("r", "error", 1, "e" * 10_000))
    clipped = pp.clip("e" * 10_000)
    assert clipped is not None and len(clipped) == pp.MAX_TEXT
    assert len(pp.encode(pp.Finished("r", "error", 1, clipped))) < pp.MAX_RECORD
    assert pp.clip("short") == "short" and pp.clip(None) is None


@pytest.mark.parametrize("raw", [
    ["p", 1, "r", "1", ["a"]],  # a seq that is a string
    ["f", 1, "r", "error", True, None],  # a bool is not a seq
    ["q", 1, "o", ["a", 2]],  # ids that are not all strings
    ["s", 1, "u", None, "cancelled"],  # a required text that is null
    ["p", 1, "r", 1],  # a field too few
])
def test_a_record_of_the_wrong_shape_is_not_decoded(raw):
    assert pp.decode(raw) is None


def test_trailing_fields_with_defaults_may_be_left_out():
    assert pp.decode(["p", 1, "r", 3, ["x"]]) == pp.Pieces("r", 3, ["x"], 0, 0)
