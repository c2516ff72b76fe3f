"""NOTIFY payloads: packed under PostgreSQL's 8000 bytes, pieces split and merged back exactly."""

from __future__ import annotations

import random

import pytest

from server.chat import pg_payload as pp


def deliver(records: list[bytes], into: list[str]) -> bool:
    assembler = pp.Assembler(into)
    ok = True
    for payload in pp.pack(records):
        assert len(payload.encode()) <= pp.MAX_PAYLOAD
        for record in pp.unpack(payload):
            ok = assembler.add(*record[2:6]) and ok
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
    assert not assembler.add(3, ["c "], 0)
    assert got == ["a "]
    assert assembler.add(2, ["b ", "c "], 0) and got == ["a ", "b ", "c "]


def test_a_fragment_of_a_stream_that_was_cut_is_dropped():
    got: list[str] = []
    assembler = pp.Assembler(got)
    assert assembler.add(1, ["x" * 10], 1)  # a fragment; its rest never comes
    assert assembler.add(1, ["whole "], 0)  # the owner sends again from seq 1
    assert got == ["whole "]
    assert not assembler.add(2, ["rest of a lost start"], 0, 1), "a continuation without its start is a gap"
    assert got == ["whole "]


def test_records_are_packed_in_order_and_an_oversized_record_is_refused():
    records = [pp.encode([pp.STOP, "u", str(i), "cancelled"]) for i in range(500)]
    payloads = pp.pack(records, limit=1000)
    assert len(payloads) > 1 and all(len(p.encode()) <= 1000 for p in payloads)
    assert [r[2] for p in payloads for r in pp.unpack(p)] == [str(i) for i in range(500)]
    with pytest.raises(ValueError):
        pp.pack([b"x" * 2000], limit=1000)
