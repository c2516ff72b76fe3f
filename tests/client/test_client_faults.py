"""Refusals, a server that is down, and waits that run out: clear exceptions, never a hang."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from server.client import ChatClient, ChatTimeout, ConnectionFailed, Refused


def test_token_mode_refuses_a_missing_or_forged_token_naming_the_reason(chat_server_factory):
    server = chat_server_factory(CHAT_AUTH_SECRET="s3cret-for-tests-only-0123456789abcdef")

    async def main() -> None:
        for token in (None, "not-a-jwt"):
            with pytest.raises(Refused) as refused:
                async with ChatClient(server.ws_url, token=token):
                    pass
            assert refused.value.code == "refused" and (refused.value.status == 403 or refused.value.close_code == 1008)
            assert "refused" in str(refused.value) and ("403" in str(refused.value) or "1008" in str(refused.value))

    asyncio.run(main())


def test_too_many_sockets_is_refused_with_1013(chat_server_factory):
    server = chat_server_factory(CHAT_MAX_SOCKETS_PER_USER="1")

    async def main() -> None:
        async with ChatClient(server.ws_url) as first:
            with pytest.raises(Refused) as refused:
                async with ChatClient(server.ws_url, token=first.token):
                    pass
            assert refused.value.close_code == 1013 and "try again later" in str(refused.value)
            assert (await first.send("still here")).ok

    asyncio.run(main())


def test_a_server_that_is_down_raises_after_bounded_retries():
    with socket.socket() as s:  # a port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    async def main() -> None:
        began = time.monotonic()
        with pytest.raises(ConnectionFailed) as failed:
            async with ChatClient(f"ws://127.0.0.1:{port}/ws", retries=2, backoff=0.1):
                pass
        assert time.monotonic() - began < 5
        assert failed.value.code == "connection" and "3 attempts" in str(failed.value)

    asyncio.run(main())


def test_a_done_that_never_arrives_times_out_naming_the_message(chat_server_factory):
    server = chat_server_factory(CHAT_ECHO_DELAY_MS="2000")

    async def main() -> None:
        async with ChatClient(server.ws_url) as chat:
            began = time.monotonic()
            with pytest.raises(ChatTimeout) as timed_out:
                await chat.send("slow one", client_id="the-slow-one", timeout=0.5)
            assert time.monotonic() - began < 3
            assert isinstance(timed_out.value, TimeoutError) and timed_out.value.client_id == "the-slow-one"
            assert "done" in str(timed_out.value) and "the-slow-one" in str(timed_out.value)

    asyncio.run(main())


def test_a_server_that_dies_for_good_fails_what_waits(chat_server_factory):
    server = chat_server_factory(CHAT_ECHO_DELAY_MS="200")

    async def main() -> None:
        async with ChatClient(server.ws_url, retries=2, backoff=0.1) as chat:
            stream = chat.stream("one two three four five")
            async for _ in stream:
                server.kill()
    with pytest.raises(ConnectionFailed) as failed:
        asyncio.run(main())
    assert "could not reconnect" in str(failed.value)
