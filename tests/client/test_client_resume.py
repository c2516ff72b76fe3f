"""The contract's replies that outlive a socket, through ChatClient: a dropped socket resumes the
same reply (not a regenerated one), another socket lists and resumes a reply in flight, `?sync=1`
events, and cancel by id from another socket. On SQLite and on PostgreSQL.

These need the server side of `seq`, `resume`, `replies_in_flight` and sync (chat.v1's newer parts).
"""

from __future__ import annotations

import asyncio

import pytest
from test_client_reconnect import ECHO, TEXT, TcpProxy, final_reply, read_breaking

from server.client import ChatClient, ChatError, Event

PIECES = len((ECHO + TEXT).split(" "))  # the echo model streams one delta per word


@pytest.fixture
def slow_server(db, databases, chat_server_factory):
    return chat_server_factory(CHAT_DATABASE_URL=databases.url(db), CHAT_ECHO_DELAY_MS="150")


def test_a_dropped_socket_resumes_the_same_reply(slow_server):
    async def main() -> None:
        async with TcpProxy(slow_server.port) as proxy:
            async with ChatClient(f"ws://127.0.0.1:{proxy.port}/ws", timeout=60) as chat:
                stream = chat.stream(TEXT)
                seen: dict[str, str | None] = {}

                def drop() -> None:
                    seen["reply"] = stream.message_id
                    proxy.cut()

                pieces = await read_breaking(stream, 3, drop)
                reply = stream.reply
                assert reply is not None and chat.reconnects == 1
                assert "".join(pieces) == ECHO + TEXT == reply.content and reply.status == "complete"
                # Followed, not generated again: the same reply, listed in flight when the client came back.
                assert reply.message_id == seen["reply"]
                assert [r.message_id for r in chat.replies_in_flight] == [reply.message_id]
                messages = await chat.history()
                assert [(m.id, m.status) for m in messages if m.role == "assistant"] == [(reply.message_id, "complete")]

    asyncio.run(main())


def test_another_socket_lists_a_reply_in_flight_and_resumes_it(slow_server):
    async def main() -> None:
        async with ChatClient(slow_server.ws_url) as a:
            stream = a.stream(TEXT)
            pieces_a: list[str] = []
            async for piece in stream:
                pieces_a.append(piece)
                if len(pieces_a) == 2:
                    break
            async with ChatClient(slow_server.ws_url, token=a.token) as b:
                [in_flight] = b.replies_in_flight
                assert (in_flight.message_id, in_flight.reply_to) == (stream.message_id, stream.reply_to)
                assert in_flight.conversation_id == a.conversation_id and 2 <= in_flight.seq < PIECES
                followed = b.resume(in_flight.message_id, after=in_flight.seq)
                pieces_b = [piece async for piece in followed]
                assert followed.reply is not None and followed.reply.status == "complete"
                assert len(pieces_b) == PIECES - in_flight.seq
                assert followed.reply.content == ECHO + TEXT and followed.reply.content.endswith("".join(pieces_b))
                reply_a = await stream  # the rest of it, after the break
                assert reply_a.message_id == followed.reply.message_id and reply_a.content == ECHO + TEXT
                # Stored by now: resume by the user message gives the stored reply alone.
                stored = await b.resume(reply_to=stream.reply_to)
                assert (stored.message_id, stored.content) == (reply_a.message_id, ECHO + TEXT)
                with pytest.raises(ChatError) as not_found:
                    await b.resume("no-such-reply")
                assert not_found.value.code == "not_found"

    asyncio.run(main())


def test_sync_events_tell_another_tab_what_happened(slow_server):
    async def main() -> None:
        async with ChatClient(slow_server.ws_url) as a:
            await a.send("first")
            async with ChatClient(slow_server.ws_url, token=a.token, sync=True) as tab:
                events: list[Event] = []

                async def listen() -> None:
                    async for event in tab.events():
                        events.append(event)
                        if event.type == "done":
                            return

                listening = asyncio.create_task(listen())
                reply = await a.send("hello other tab")
                await asyncio.wait_for(listening, 30)
                kinds = [e.type for e in events]
                assert kinds[:2] == ["message_added", "start"] and kinds[-1] == "done", kinds
                assert set(kinds[2:-1]) == {"delta"}
                added = events[0].message
                assert added is not None and (added.content, added.id) == ("hello other tab", reply.reply_to)
                assert events[-1].message_id == reply.message_id and events[-1].frame["content"] == reply.content
                assert "".join(e.frame["content"] for e in events if e.type == "delta") == reply.content
                assert [d.frame["seq"] for d in events if d.type == "delta"] == list(range(1, len(kinds) - 2))
                await tab.send("my own")  # the tab's own message is no event for it
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(anext(aiter(tab.events())), 0.5)

    asyncio.run(main())


def test_cancel_by_id_from_another_socket(slow_server):
    async def main() -> None:
        async with ChatClient(slow_server.ws_url) as a, ChatClient(slow_server.ws_url, token=a.token) as b:
            stream = a.stream(TEXT)
            async for _ in stream:
                if stream.seq == 1:
                    await b.cancel(stream.message_id)
            assert stream.reply is not None and stream.reply.status == "cancelled"
            assert len(stream.reply.content) < len(ECHO + TEXT)
            assert final_reply(await a.history(), stream.reply_to).status == "cancelled"

    asyncio.run(main())
