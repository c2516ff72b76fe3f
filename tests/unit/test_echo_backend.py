"""The echo backend (server/chat/backends/echo.py): "You said: <message>", one piece per word with its
trailing whitespace, the same every time, and stopped at once when the consuming task is cancelled."""

from __future__ import annotations

import asyncio

import pytest
from support.client import aio

from server.chat.backends import ModelRequest, make_backend
from server.chat.backends.echo import YIELD_EVERY, EchoBackend
from server.config import Settings


async def pieces(message: str, delay_s: float = 0.0) -> list[str]:
    return [p async for p in EchoBackend(delay_s).stream(ModelRequest("conv", message))]


@pytest.mark.parametrize("message", [
    "hello",
    "hello there",
    "  padded  message  ",
    "line one\nline two",
    "tab\tseparated\tvalues",
    "trailing newline\n",
    "emoji 😀 and 𝄞 and ñ",
    "x" * 5_000,
    "{\"type\": \"json\"}",
])
@aio
async def test_pieces_concatenate_to_the_reply(message):
    assert "".join(await pieces(message)) == f"You said: {message}"
    assert EchoBackend.reply_to(message) == f"You said: {message}"


@pytest.mark.parametrize("message, expected", [
    ("hi", ["You ", "said: ", "hi"]),
    ("hello there", ["You ", "said: ", "hello ", "there"]),
    ("a  b", ["You ", "said: ", "a  ", "b"]),
    ("  lead", ["You ", "said:   ", "lead"]),
    ("end  ", ["You ", "said: ", "end  "]),
    ("a\nb\tc\r\nd", ["You ", "said: ", "a\n", "b\t", "c\r\n", "d"]),
])
@aio
async def test_one_piece_per_word_with_its_trailing_whitespace(message, expected):
    assert await pieces(message) == expected


@aio
async def test_piece_count_equals_word_count():
    message = " ".join(f"w{i}" for i in range(300))
    got = await pieces(message)
    assert len(got) == len(f"You said: {message}".split()) == 302
    assert all(p.endswith(" ") for p in got[:-1]) and got[-1] == "w299"


@aio
async def test_same_message_gives_same_pieces():
    message = "the same words, again and again"
    first = await pieces(message)
    assert await pieces(message) == first
    assert await pieces(message, delay_s=0.001) == first


@aio
async def test_delay_does_not_change_the_pieces():
    assert await pieces("a b c", delay_s=0.01) == await pieces("a b c")


async def consume_until_first_piece_then_cancel(stream) -> list[str]:  # type: ignore[no-untyped-def]
    """Consume `stream` in a task, cancel that task once a piece has arrived; the pieces it got."""
    got: list[str] = []
    first = asyncio.Event()

    async def consume() -> None:
        async for p in stream:
            got.append(p)
            first.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first.wait(), timeout=10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    return got


@aio
async def test_cancelling_the_consumer_stops_the_stream():
    backend = EchoBackend(delay_s=0.05)
    stream = backend.stream(ModelRequest("conv", " ".join(f"w{i}" for i in range(200))))
    got = await consume_until_first_piece_then_cancel(stream)
    assert got == ["You "]
    # Nothing more arrives later, and the generator is finished rather than suspended.
    await asyncio.sleep(0.2)
    assert got == ["You "]
    assert stream.ag_frame is None
    with pytest.raises(StopAsyncIteration):
        await stream.__anext__()


@aio
async def test_cancel_is_seen_between_pieces_even_without_delay():
    # With no delay the stream still yields to the loop every YIELD_EVERY pieces, so a cancel lands.
    stream = EchoBackend(0).stream(ModelRequest("conv", " ".join(["w"] * 100_000)))
    got = await consume_until_first_piece_then_cancel(stream)
    assert 1 <= len(got) <= 3 * YIELD_EVERY  # a few loop turns at most, not the 100,002 pieces
    assert stream.ag_frame is None


@aio
async def test_without_delay_a_long_reply_lets_other_tasks_run_every_few_pieces():
    # No pause means a burst, but a bounded one: a reply of 100,000 words must not hold the loop.
    ticks = 0
    pieces_at_tick: list[int] = []
    got: list[str] = []

    async def other_socket() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            pieces_at_tick.append(len(got))
            await asyncio.sleep(0)

    other = asyncio.create_task(other_socket())
    await asyncio.sleep(0)
    async for piece in EchoBackend(0).stream(ModelRequest("conv", " ".join(["w"] * 10_000))):
        got.append(piece)
    other.cancel()
    gaps = [b - a for a, b in zip(pieces_at_tick, pieces_at_tick[1:], strict=False)]
    assert len(got) == 10_002 and ticks >= 10_002 // YIELD_EVERY
    assert max(gaps) <= YIELD_EVERY


@aio
async def test_backend_metadata_and_lifecycle():
    backend = EchoBackend()
    assert backend.name == "echo" and backend.context_messages == 0
    assert await backend.ready() is True
    assert await backend.aclose() is None


def test_make_backend_builds_echo_with_the_configured_delay():
    backend = make_backend(Settings(_env_file=None, llm="echo", echo_delay_ms=250))
    assert isinstance(backend, EchoBackend) and backend.delay_s == 0.25
