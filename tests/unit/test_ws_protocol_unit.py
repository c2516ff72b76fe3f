"""Inbox and Writable: what uvicorn's protocol needs from its asyncio.Queue and asyncio.Event; and
the frames our protocol writes to the transport itself (write_text, uncork)."""

from __future__ import annotations

import asyncio

import pytest
from support.client import aio
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.streams import StreamReader

from server.web.ws_protocol import CORK_LIMIT, ChatWebSocketProtocol, Inbox, Writable


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


# -- Inbox -------------------------------------------------------------------------------------------
@aio
async def test_inbox_gives_events_in_order_without_waiting_when_some_are_there():
    inbox = Inbox()
    assert inbox.empty()
    for i in range(3):
        inbox.put_nowait(i)
    assert not inbox.empty()
    assert [await inbox.get() for _ in range(3)] == [0, 1, 2]
    assert inbox.empty()


@aio
async def test_inbox_get_waits_for_the_next_put():
    inbox = Inbox()
    getter = asyncio.ensure_future(inbox.get())
    await settle()
    assert not getter.done()
    inbox.put_nowait("connect")
    inbox.put_nowait("receive")  # a second put before the getter runs is kept for the next get
    assert await asyncio.wait_for(getter, 1) == "connect"
    assert await asyncio.wait_for(inbox.get(), 1) == "receive"


@aio
async def test_inbox_cancelled_get_loses_nothing_and_the_next_get_works():
    inbox = Inbox()
    getter = asyncio.ensure_future(inbox.get())
    await settle()
    getter.cancel()
    await settle()
    assert getter.cancelled()
    inbox.put_nowait("disconnect")
    assert await asyncio.wait_for(inbox.get(), 1) == "disconnect"


@aio
async def test_inbox_refuses_a_second_concurrent_reader():
    inbox = Inbox()
    first = asyncio.ensure_future(inbox.get())
    await settle()
    with pytest.raises(RuntimeError):
        await inbox.get()
    inbox.put_nowait("x")
    assert await asyncio.wait_for(first, 1) == "x"


# -- Writable ----------------------------------------------------------------------------------------
@aio
async def test_writable_starts_set_and_wait_returns_at_once():
    writable = Writable()
    assert writable.is_set()
    assert await asyncio.wait_for(writable.wait(), 1) is True


@aio
async def test_writable_cleared_holds_every_sender_until_set():
    writable = Writable()
    writable.clear()
    senders = [asyncio.ensure_future(writable.wait()) for _ in range(3)]
    await settle()
    assert not any(s.done() for s in senders)
    writable.set()
    writable.clear()  # paused again at once: the senders woken by set() still go
    assert await asyncio.wait_for(asyncio.gather(*senders), 1) == [True, True, True]
    late = asyncio.ensure_future(writable.wait())
    await settle()
    assert not late.done()
    writable.set()
    assert await asyncio.wait_for(late, 1) is True


@aio
async def test_writable_a_cancelled_sender_does_not_block_the_others():
    writable = Writable()
    writable.clear()
    gone, stays = asyncio.ensure_future(writable.wait()), asyncio.ensure_future(writable.wait())
    await settle()
    gone.cancel()
    await settle()
    writable.set()
    assert await asyncio.wait_for(stays, 1) is True
    assert gone.cancelled()


# -- frames written straight to the transport ----------------------------------------------------------
class FakeTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closing


def open_protocol() -> tuple[ChatWebSocketProtocol, FakeTransport]:
    """The protocol's state after an accepted handshake, without uvicorn around it."""
    protocol = object.__new__(ChatWebSocketProtocol)
    transport = FakeTransport()
    protocol.transport = transport  # type: ignore[assignment]
    protocol.loop = asyncio.get_running_loop()
    protocol.handshake_complete = True
    protocol.close_sent = False
    protocol.writable = Writable()  # type: ignore[assignment]
    protocol.conn = ServerProtocol()
    protocol.conn.state = State.OPEN
    return protocol, transport


def parsed(data: bytes) -> list[str]:
    """The text frames in `data`, parsed by websockets as a client reads them (unmasked, whole)."""
    reader = StreamReader()
    reader.feed_data(data)
    texts = []
    while reader.buffer:
        parsing = Frame.parse(reader.read_exact, mask=False)
        with pytest.raises(StopIteration) as parsed_frame:
            next(parsing)  # the whole frame is there: it does not wait for more
        frame = parsed_frame.value.value
        assert frame.opcode is Opcode.TEXT and frame.fin
        texts.append(bytes(frame.data).decode())
    return texts


@aio
async def test_frames_of_one_loop_turn_leave_in_one_write_in_order():
    protocol, transport = open_protocol()
    payloads = [b'{"n":%d}' % i for i in range(5)] + [b"x" * 300, b"y" * 70_000]
    for payload in payloads[:6]:
        assert protocol.write_text(payload)
    assert transport.writes == []  # held until the loop turn ends
    await settle()
    assert len(transport.writes) == 1 and parsed(transport.writes[0]) == [p.decode() for p in payloads[:6]]
    assert protocol.write_text(payloads[6])  # a 64-bit length
    await settle()
    assert parsed(transport.writes[1]) == [payloads[6].decode()]


@aio
async def test_a_long_burst_reaches_the_transport_before_the_loop_turn_ends():
    # Its flow control must see it: a resume of a long reply to a client that does not read must
    # not sit whole in the process's memory.
    protocol, transport = open_protocol()
    frame = b"d" * 1000
    for _ in range(CORK_LIMIT // 1000 + 1):
        protocol.write_text(frame)
    assert sum(map(len, transport.writes)) >= CORK_LIMIT
    assert (protocol.corked_bytes if protocol.corked else 0) < CORK_LIMIT


@aio
async def test_no_direct_write_once_closing_paused_or_compressed():
    for block in ("close_sent", "paused", "extension", "transport closing"):
        protocol, transport = open_protocol()
        if block == "close_sent":
            protocol.close_sent = True
        elif block == "paused":
            protocol.writable.clear()
        elif block == "extension":
            protocol.conn.extensions = [object()]  # type: ignore[list-item]
        else:
            transport.closing = True
        assert not protocol.write_text(b"{}"), block
        await settle()
        assert transport.writes == [], block


@aio
async def test_uncork_first_keeps_what_else_is_written_after_the_frames():
    protocol, transport = open_protocol()
    protocol.write_text(b'{"type":"done"}')
    protocol.uncork()  # what send(), a pong or a close frame does before writing
    transport.write(b"\x88\x02\x03\xe8")  # a close frame (1000)
    await settle()
    assert transport.writes[0].endswith(b'{"type":"done"}') and transport.writes[1].startswith(b"\x88")
    assert len(transport.writes) == 2  # the scheduled uncork found nothing more to write
