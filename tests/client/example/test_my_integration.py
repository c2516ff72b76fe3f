"""Tests of an integration with chat-server, using only the installed package: no conftest."""

import asyncio

import pytest

from server.client import ChatClient, ChatError


def test_a_reply_and_the_history(chat_server):
    async def main():
        async with ChatClient(chat_server.ws_url) as chat:  # open mode: a new user, a minted token
            reply = await chat.send("hello")
            assert (reply.status, reply.content) == ("complete", "You said: hello")
            pieces = [piece async for piece in chat.stream("tell me more")]
            assert "".join(pieces) == "You said: tell me more"
            messages = await chat.history(reply.conversation_id)
            assert [(m.role, m.status) for m in messages] == [("user", "complete"), ("assistant", "complete")] * 2
            assert messages[1].id == reply.message_id and chat.user_id and chat.token

    asyncio.run(main())


def test_a_reply_survives_a_crash_of_the_server(chat_server_factory):
    server = chat_server_factory(CHAT_ECHO_DELAY_MS="50")  # the echo model types slowly

    async def main():
        async with ChatClient(server.ws_url) as chat:
            pieces = []
            async for piece in chat.stream("one two three four five six"):
                pieces.append(piece)
                if len(pieces) == 2:
                    server.kill()  # SIGKILL in the middle of the reply
                    server.restart()  # same port, same database; returns once it answers
            assert "".join(pieces) == "You said: one two three four five six"  # nothing lost or doubled

    asyncio.run(main())


def test_errors_carry_the_protocol_code(chat_server):
    async def main():
        async with ChatClient(chat_server.ws_url) as chat:
            with pytest.raises(ChatError) as error:
                await chat.send("   ")
            assert error.value.code == "invalid"

    asyncio.run(main())


@pytest.fixture
def anyio_backend():
    return "asyncio"  # ChatClient runs on asyncio


@pytest.mark.anyio  # anyio's pytest plugin comes with the server's dependencies; pytest-asyncio works too
async def test_an_async_test(chat_server):
    async with ChatClient(chat_server.ws_url) as chat:
        assert (await chat.send("from an async test")).content == "You said: from an async test"
