"""Inbox and Writable: what uvicorn's protocol needs from its asyncio.Queue and asyncio.Event."""

from __future__ import annotations

import asyncio

import pytest
from support.client import aio

from server.web.ws_protocol import Inbox, Writable


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
