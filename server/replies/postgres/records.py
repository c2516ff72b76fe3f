"""What crosses processes in a NOTIFY payload, and how: one frozen dataclass per record kind,
encoded and decoded here and nowhere else. Pure functions, no I/O.

A record travels as a short JSON array, `[kind, version, *fields]` in the dataclass's field
order; a payload is `{"r": [record, …]}`. A record of a kind or version this process does not
know is skipped (and counted by the caller), never a crash: during a rolling upgrade, processes
of two releases share the channel. (An older release, which expected a bare array, skips such a
payload whole.)

PostgreSQL caps a payload below 8000 bytes, so records are packed into payloads of at most
MAX_PAYLOAD bytes, a reply's pieces are split into records that fit, and a piece bigger than a
record is cut into fragments (`more` = 1 on a record whose last piece goes on in the next record,
`continued` = 1 on the record whose first piece is the rest). Any other record that would not fit
is refused where it is made (`RecordTooLarge`); texts that may be long are cut first (`clip`).
Ids and small pieces only: never a whole reply, never a user message (a receiver that needs one
reads it from the database).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import orjson

MAX_PAYLOAD = 7900  # bytes; PostgreSQL refuses 8000 and more
_ENVELOPE = len(b'{"r":[]}')
MAX_RECORD = MAX_PAYLOAD - _ENVELOPE
MAX_TEXT = 1000  # characters of a free text (an error's detail) carried in a record


class RecordTooLarge(ValueError):
    """A record that no payload can carry."""


@dataclass(frozen=True, slots=True)
class Stop:
    """Stop that reply wherever it is generated (cancel by id): only if it is `user_id`'s."""

    KIND: ClassVar[str] = "s"
    VERSION: ClassVar[int] = 1
    user_id: str
    reply_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class StopConversation:
    """Stop every reply of a conversation (a DELETE)."""

    KIND: ClassVar[str] = "x"
    VERSION: ClassVar[int] = 1
    conversation_id: str


@dataclass(frozen=True, slots=True)
class Deleted:
    """Tell the user's sync sockets that a conversation was deleted."""

    KIND: ClassVar[str] = "d"
    VERSION: ClassVar[int] = 1
    user_id: str
    conversation_id: str


@dataclass(frozen=True, slots=True)
class Updated:
    """A conversation's title or settings changed: the user's sync sockets elsewhere read it
    (a system prompt may be far larger than a notification) and hear conversation_updated."""

    KIND: ClassVar[str] = "t"
    VERSION: ClassVar[int] = 1
    user_id: str
    conversation_id: str


@dataclass(frozen=True, slots=True)
class Announce:
    """A user message committed on `owner`: the user's sync sockets elsewhere follow its reply."""

    KIND: ClassVar[str] = "a"
    VERSION: ClassVar[int] = 1
    owner: str
    user_id: str
    message_id: str
    reply_id: str
    conversation_id: str
    regenerated: int = 0  # 1: a new reply to a stored message (no `message_added` before it)


@dataclass(frozen=True, slots=True)
class Selected:
    """A branch of a conversation was selected: tell the user's sync sockets."""

    KIND: ClassVar[str] = "b"
    VERSION: ClassVar[int] = 1
    user_id: str
    conversation_id: str
    leaf_id: str


@dataclass(frozen=True, slots=True)
class Interest:
    """Sent to a reply's owner: send `owner` the pieces after `after`, then the live ones and the end."""

    KIND: ClassVar[str] = "i"
    VERSION: ClassVar[int] = 1
    owner: str
    reply_id: str
    after: int


@dataclass(frozen=True, slots=True)
class Uninterest:
    """Sent to a reply's owner: no one in `owner` follows it any more."""

    KIND: ClassVar[str] = "u"
    VERSION: ClassVar[int] = 1
    owner: str
    reply_id: str


@dataclass(frozen=True, slots=True)
class Pieces:
    """Pieces first_seq, first_seq + 1, … of a reply (see the module's note on fragments)."""

    KIND: ClassVar[str] = "p"
    VERSION: ClassVar[int] = 1
    reply_id: str
    first_seq: int
    pieces: list[str]
    more: int = 0
    continued: int = 0


@dataclass(frozen=True, slots=True)
class Finished:
    """The reply ended: stored with `status`, or not stored (`status` is then a failure code).
    `seq`: the pieces it had, -1 when unknown (a reply a sweep stored)."""

    KIND: ClassVar[str] = "f"
    VERSION: ClassVar[int] = 1
    reply_id: str
    status: str
    seq: int
    error: str | None


@dataclass(frozen=True, slots=True)
class Gone:
    """Sent to who showed interest: the reply is not in flight here (stored, or never was)."""

    KIND: ClassVar[str] = "g"
    VERSION: ClassVar[int] = 1
    reply_id: str


@dataclass(frozen=True, slots=True)
class SeqQuery:
    """Sent to a reply's owner: how many pieces each of these replies has now (`ready` lists it)."""

    KIND: ClassVar[str] = "q"
    VERSION: ClassVar[int] = 1
    owner: str  # who asks
    reply_ids: list[str]


@dataclass(frozen=True, slots=True)
class SeqAnswer:
    """The owner's answer to a SeqQuery, for one reply it generates."""

    KIND: ClassVar[str] = "n"
    VERSION: ClassVar[int] = 1
    reply_id: str
    seq: int


Record = (Stop | StopConversation | Deleted | Announce | Interest | Uninterest | Pieces | Finished | Gone | SeqQuery
          | SeqAnswer | Selected | Updated)
_ALL = (Stop, StopConversation, Deleted, Announce, Interest, Uninterest, Pieces, Finished, Gone, SeqQuery, SeqAnswer,
        Selected, Updated)
KINDS: dict[str, type[Record]] = {cls.KIND: cls for cls in _ALL}
if len(KINDS) != len(_ALL):  # two kinds sharing a letter would be read as one another
    raise RuntimeError("two record kinds share a KIND")


def clip(text: str | None) -> str | None:
    """A free text as a record carries it: at most MAX_TEXT characters."""
    if text is None or len(text) <= MAX_TEXT:
        return text
    return text[: MAX_TEXT - 1] + "…"


def encode(record: Record) -> bytes:
    """One record as it travels; RecordTooLarge when no payload could carry it."""
    raw = orjson.dumps([record.KIND, record.VERSION, *(getattr(record, name) for name in record.__match_args__)])
    if len(raw) > MAX_RECORD:
        raise RecordTooLarge(f"a {type(record).__name__} record of {len(raw)} bytes does not fit a payload")
    return raw


def decode(raw: Any) -> Record | None:
    """A record from its JSON form; None for a kind, version or shape this release does not know
    (a field too many or too few, or of another type)."""
    if not isinstance(raw, list) or len(raw) < 2:
        return None
    cls = KINDS.get(raw[0]) if isinstance(raw[0], str) else None
    if cls is None or raw[1] != cls.VERSION:
        return None
    fields = raw[2:]
    shape = _SHAPES[cls]
    if not len(shape) - _DEFAULTED[cls] <= len(fields) <= len(shape):
        return None
    if not all(_fits(value, kind) for value, kind in zip(fields, shape, strict=False)):
        return None
    return cls(*fields)


def _fits(value: Any, kind: str) -> bool:
    if kind == "str":
        return isinstance(value, str)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "str | None":
        return value is None or isinstance(value, str)
    if kind == "list[str]":
        return isinstance(value, list) and all(isinstance(item, str) for item in value)
    raise AssertionError(f"no check for a field of type {kind}")


# Each kind's field types, in order, as annotated (strings: `from __future__ import annotations`),
# and how many trailing fields have defaults.
_SHAPES = {cls: tuple(str(f.type) for f in dataclasses.fields(cls)) for cls in KINDS.values()}
_DEFAULTED = {cls: sum(f.default is not dataclasses.MISSING for f in dataclasses.fields(cls))
              for cls in KINDS.values()}


def pack(encoded: list[bytes], limit: int = MAX_PAYLOAD) -> list[str]:
    """Encoded records into as few payloads as fit under `limit` bytes, in order."""
    payloads: list[str] = []
    batch: list[bytes] = []
    size = _ENVELOPE
    for record in encoded:
        if len(record) + _ENVELOPE > limit:
            raise RecordTooLarge(f"a record of {len(record)} bytes does not fit a payload")
        if batch and size + len(record) + 1 > limit:
            payloads.append(_payload(batch))
            batch, size = [], _ENVELOPE
        batch.append(record)
        size += len(record) + 1
    if batch:
        payloads.append(_payload(batch))
    return payloads


def _payload(batch: list[bytes]) -> str:
    return (b'{"r":[' + b",".join(batch) + b"]}").decode()


def unpack(payload: str) -> tuple[list[Record], int]:
    """The records of a payload, and how many were skipped (unknown kind or version).
    ValueError when the payload is not one of ours."""
    data = orjson.loads(payload)
    if not isinstance(data, dict) or not isinstance(data.get("r"), list):
        raise ValueError("not a payload of chat-server records")
    records: list[Record] = []
    skipped = 0
    for raw in data["r"]:
        record = decode(raw)
        if record is None:
            skipped += 1
        else:
            records.append(record)
    return records, skipped


def pieces_records(reply_id: str, first_seq: int, pieces: list[str], limit: int = MAX_PAYLOAD) -> list[bytes]:
    """Pieces first_seq, first_seq + 1, … as encoded PIECES records that each fit a payload of `limit`."""
    budget = limit - _ENVELOPE
    overhead = len(encode(Pieces(reply_id, 0, [], 0, 0))) + 12  # the seq's digits, commas
    out: list[bytes] = []
    batch: list[str] = []
    seq, size = first_seq, overhead
    start = first_seq
    continued = 0

    def flush(more: int) -> None:
        nonlocal batch, size, continued
        out.append(encode(Pieces(reply_id, start, batch, more, continued)))
        batch, size, continued = [], overhead, more

    for piece in pieces:
        cost = len(orjson.dumps(piece)) + 1
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
        size = overhead + len(orjson.dumps(fragment)) + 1
        seq += 1
    if batch:
        flush(0)
    return out


def _longest_prefix(text: str, budget: int) -> str:
    """The longest prefix of `text` whose JSON form fits in `budget` bytes (at least one character)."""
    lo, hi = 1, len(text)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if len(orjson.dumps(text[:mid])) <= budget:
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

    def add(self, record: Pieces) -> bool:
        """Take one record; False when it leaves a gap (ask the owner again from len(pieces))."""
        first_seq, pieces = record.first_seq, list(record.pieces)
        if record.continued:
            if self._partial_seq != first_seq or not pieces:
                self._partial_seq, self._partial = 0, ""
                return False  # the rest of a piece whose start was lost
            pieces[0] = self._partial + pieces[0]
        # Otherwise a fragment waiting is dropped: a new stream (a resend) brings its piece whole.
        self._partial_seq, self._partial = 0, ""
        if record.more and pieces:
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
