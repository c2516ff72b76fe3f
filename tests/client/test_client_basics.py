"""ChatClient against a real server: send, stream, history, conversations, cancel, errors."""

from __future__ import annotations

import asyncio

import pytest

from server.client import ChatClient, ChatError, Reply

ECHO = "You said: "


def test_send_stream_and_history(chat_server):
    async def main() -> None:
        async with ChatClient(chat_server.ws_url) as chat:
            assert chat.token and chat.user_id
            reply = await chat.send("hello")
            assert isinstance(reply, Reply)
            assert (reply.content, reply.status, reply.ok) == (ECHO + "hello", "complete", True)
            assert reply.reply_to and reply.message_id and reply.conversation_id == chat.conversation_id
            pieces = [p async for p in chat.stream("tell me more")]
            assert pieces == ["You ", "said: ", "tell ", "me ", "more"] and "".join(pieces) == ECHO + "tell me more"
            messages = await chat.history(reply.conversation_id)
            assert [(m.role, m.content, m.status) for m in messages] == [
                ("user", "hello", "complete"), ("assistant", ECHO + "hello", "complete"),
                ("user", "tell me more", "complete"), ("assistant", ECHO + "tell me more", "complete")]
            assert messages[1].id == reply.message_id and messages[0].id == reply.reply_to
            assert messages[1].reply_to == reply.reply_to

    asyncio.run(main())


def test_identity_is_kept_and_conversations_are_chosen(chat_server):
    async def main() -> None:
        async with ChatClient(chat_server.ws_url) as chat:
            first = await chat.send("one")
            chat.new_conversation()
            second = await chat.send("two")
            back = await chat.send("x", conversation_id=first.conversation_id)
            assert second.conversation_id != first.conversation_id == back.conversation_id
            assert chat.conversation_id == first.conversation_id  # the message made it current
            chat.use_conversation(second.conversation_id)
            assert (await chat.send("three")).conversation_id == second.conversation_id
            token, user_id = chat.token, chat.user_id
        async with ChatClient(chat_server.ws_url, token=token, conversation_id=first.conversation_id) as again:
            assert again.user_id == user_id and again.token  # the same user, with a fresh token (open mode)
            assert (await again.send("four")).conversation_id == first.conversation_id
            assert [m.content for m in await again.history()][-2:] == ["four", ECHO + "four"]

    asyncio.run(main())


def test_cancel_stops_the_reply(chat_server_factory):
    server = chat_server_factory(CHAT_ECHO_DELAY_MS="100")

    async def main() -> None:
        async with ChatClient(server.ws_url) as chat:
            stream = chat.stream("a b c d e f g h i j k l m n o p")
            pieces = []
            async for piece in stream:
                pieces.append(piece)
                if len(pieces) == 2:
                    await stream.cancel()
            assert stream.reply is not None and stream.reply.status == "cancelled"
            assert stream.reply.content == "".join(pieces) and len(pieces) < 10
            late = chat.stream("q r s t u v w x y z")
            async for _ in late:
                await chat.cancel()  # the current turn, on this socket
            assert late.reply is not None and late.reply.status == "cancelled"

    asyncio.run(main())


def test_errors_carry_the_contract_code(chat_server_factory):
    server = chat_server_factory(CHAT_MAX_MESSAGE_CHARS="20", CHAT_MAX_WAITING="0", CHAT_ECHO_DELAY_MS="100")

    async def main() -> None:
        async with ChatClient(server.ws_url) as chat:
            with pytest.raises(ChatError) as invalid:
                await chat.send("   ", client_id="blank")
            assert invalid.value.code == "invalid" and invalid.value.client_id == "blank" and invalid.value.detail
            with pytest.raises(ChatError) as too_large:
                await chat.send("x" * 21)
            assert too_large.value.code == "too_large"
            with pytest.raises(ChatError) as not_found:
                await chat.history("no-such-conversation")
            assert not_found.value.code == "not_found"
            results = await asyncio.gather(chat.send("a b c d"), chat.send("e f"), return_exceptions=True)
            assert isinstance(results[0], Reply) and results[0].ok, results
            assert isinstance(results[1], ChatError) and results[1].code == "busy", results
            assert (await chat.send("still usable")).ok

    asyncio.run(main())


def test_an_unknown_conversation_is_not_found_at_connect(chat_server):
    async def main() -> None:
        with pytest.raises(ChatError) as not_found:
            async with ChatClient(chat_server.ws_url, conversation_id="no-such-conversation"):
                pass
        assert not_found.value.code == "not_found" and "no-such-conversation" in str(not_found.value)

    asyncio.run(main())


def test_rate_limited_is_an_error_with_its_code(chat_server_factory):
    server = chat_server_factory(CHAT_RATE_LIMIT_PER_MINUTE="1")

    async def main() -> None:
        async with ChatClient(server.ws_url) as chat:
            codes = []
            for i in range(5):
                try:
                    await chat.send(f"message {i}")
                except ChatError as e:
                    codes.append(e.code)
            assert "rate_limited" in codes and set(codes) == {"rate_limited"}, codes

    asyncio.run(main())
