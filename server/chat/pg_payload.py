"""What crosses processes in a NOTIFY payload, and how: pure functions, no I/O.

A payload is a JSON array of records, each a short array whose first item names it. PostgreSQL
caps a payload below 8000 bytes, so records are packed into payloads of at most MAX_PAYLOAD
bytes, and a reply's pieces are split into records that fit; a piece bigger than a record
is cut into fragments (`more` = 1 on a record whose last piece goes on in the next record,
`continued` = 1 on the record whose first piece is the rest).
Ids and small pieces only: never a whole reply, never a user message (a receiver that needs
one reads it from the database).
"""

from __future__ import annotations

from typing import Any

import orjson

MAX_PAYLOAD = 7900  # bytes; PostgreSQL refuses 8000 and more

# Record kinds.
STOP = "s"  # [s, user, reply_id, reason]: stop that reply wherever it is generated
STOP_CONVERSATION = "x"  # [x, conversation_id]: stop every reply in it (a DELETE)
DELETED = "d"  # [d, user, conversation_id]: tell the user's sync sockets
ANNOUNCE = "a"  # [a, user, message_id, reply_id, conversation_id]: a user message committed
INTEREST = "i"  # [i, from_owner, reply_id, after]: send me the pieces after `after`, then the rest
UNINTEREST = "u"  # [u, from_owner, reply_id]: no one follows it here any more
PIECES = "p"  # [p, reply_id, first_seq, [pieces], more, continued]
FINISHED = "f"  # [f, reply_id, status, seq, error]: stored (status) or not (a failure code); seq -1: unknown
GONE = "g"  # [g, reply_id]: not in flight here (stored, or never was)


def encode(record: list[Any] | str) -> bytes:
    return orjson.dumps(record)


def pack(encoded: list[bytes], limit: int = MAX_PAYLOAD) -> list[str]:
    """Encoded records into as few payloads as fit under `limit` bytes, in order."""
    payloads: list[str] = []
    batch: list[bytes] = []
    size = 2
    for record in encoded:
        if len(record) + 2 > limit:
            raise ValueError(f"a record of {len(record)} bytes does not fit a payload")
        if batch and size + len(record) + 1 > limit:
            payloads.append((b"[" + b",".join(batch) + b"]").decode())
            batch, size = [], 2
        batch.append(record)
        size += len(record) + 1
    if batch:
        payloads.append((b"[" + b",".join(batch) + b"]").decode())
    return payloads


def unpack(payload: str) -> list[list[Any]]:
    records = orjson.loads(payload)
    return [r for r in records if isinstance(r, list) and r]


def pieces_records(reply_id: str, first_seq: int, pieces: list[str], limit: int = MAX_PAYLOAD) -> list[bytes]:
    """Pieces first_seq, first_seq + 1, … as encoded PIECES records of at most `limit` - 2 bytes."""
    budget = limit - 2
    overhead = len(encode([PIECES, reply_id, 0, [], 0, 0])) + 12  # the seq's digits, commas
    out: list[bytes] = []
    batch: list[str] = []
    seq, size = first_seq, overhead
    start = first_seq
    continued = 0

    def flush(more: int) -> None:
        nonlocal batch, size, start, continued
        out.append(encode([PIECES, reply_id, start, batch, more, continued]))
        batch, size, continued = [], overhead, more

    for piece in pieces:
        cost = len(encode(piece)) + 1
        if size + cost <= budget:
            batch.append(piece)
            size += cost
            seq += 1
            continue
        if batch:
            flush(0)
            start = seq
        if overhead + cost <= budget:
            batch.append(piece)
            size += cost
            seq += 1
            continue
        # One piece bigger than a record: fragments, each continued by the next record.
        rest = piece
        while rest:
            fragment = _longest_prefix(rest, budget - overhead - 1)
            rest = rest[len(fragment):]
            batch.append(fragment)
            if rest:
                flush(1)
                start = seq
        size = overhead + len(encode(fragment)) + 1
        seq += 1
    if batch:
        flush(0)
    return out


def _longest_prefix(text: str, budget: int) -> str:
    """The longest prefix of `text` whose JSON form fits in `budget` bytes (at least one character)."""
    lo, hi = 1, len(text)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if len(encode(text[:mid])) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return text[:lo]


class Assembler:
    """The receiving end of one reply's PIECES records: whole pieces in order, fragments joined,
    repeats ignored, and a gap (a record starting past what is known) reported, never filled."""

    __slots__ = ("pieces", "_partial_seq", "_partial")

    def __init__(self, pieces: list[str]):
        self.pieces = pieces  # the mirror reply's own list: piece n has seq n
        self._partial_seq = 0
        self._partial = ""

    def add(self, first_seq: int, pieces: list[str], more: int, continued: int = 0) -> bool:
        """Take one record; False when it leaves a gap (ask the owner again from len(pieces))."""
        pieces = list(pieces)
        if continued:
            if self._partial_seq != first_seq or not pieces:
                self._partial_seq, self._partial = 0, ""
                return False  # the rest of a piece whose start was lost
            pieces[0] = self._partial + pieces[0]
        # Otherwise a fragment waiting is dropped: a new stream (a resend) brings its piece whole.
        self._partial_seq, self._partial = 0, ""
        if more and pieces:
            last = pieces.pop()
            self._partial_seq, self._partial = first_seq + len(pieces), last
        known = len(self.pieces)
        if first_seq > known + 1:
            self._partial_seq, self._partial = 0, ""
            return False
        skip = known + 1 - first_seq  # the ones already known
        self.pieces.extend(pieces[skip:])
        if self._partial_seq and self._partial_seq != len(self.pieces) + 1:
            self._partial_seq, self._partial = 0, ""  # a fragment of a piece already known
        return True
