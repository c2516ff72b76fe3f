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
