"""Nothing the client sent is lost, and no text is given twice: send() and stream() complete across
kill -9 and restart, SIGTERM and restart, a send while the server is down, and a network drop.

Each test owns its server (it kills or restarts it) and runs on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import asyncio

import pytest

from server.client import ChatClient, Message, ReplyStream

ECHO = "You said: "
TEXT = "one two three four five six seven eight"


@pytest.fixture
def slow_server(db, databases, chat_server_factory):
    """Echo with 150 ms before each delta: a reply takes about 1.5 s, time to break things mid-way."""
    return chat_server_factory(CHAT_DATABASE_URL=databases.url(db), CHAT_ECHO_DELAY_MS="150")


class TcpProxy:
    """Forwards 127.0.0.1:port to the server; cut() drops every connection as a network would."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.writers: list[asyncio.StreamWriter] = []
        self.port = 0

    async def __aenter__(self) -> TcpProxy:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.cut()
        self.server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self.writers += [writer, up_writer]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except OSError:
                pass
            finally:
                dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def cut(self) -> None:
        for w in self.writers:
            w.transport.abort()  # RST both ways: no close frame, no FIN
        self.writers.clear()


def user_messages(messages: list[Message]) -> list[tuple[str, str | None, str]]:
    return [(m.id, m.client_id, m.content) for m in messages if m.role == "user"]


def final_reply(messages: list[Message], reply_to: str | None) -> Message:
    return [m for m in messages if m.role == "assistant" and m.reply_to == reply_to][-1]


async def read_breaking(stream: ReplyStream, after: int, breaker) -> list[str]:  # type: ignore[no-untyped-def]
    """The stream's pieces; after the `after`-th one, call breaker() (which may return a task to await)."""
    pieces: list[str] = []
    task = None
    async for piece in stream:
        pieces.append(piece)
        if len(pieces) == after:
            task = breaker()
    if task is not None:
        await task
    return pieces


def test_stream_completes_across_kill_9_and_restart_with_the_same_ids(slow_server):
    async def main() -> None:
        async with ChatClient(slow_server.ws_url, timeout=90) as chat:
            stream = chat.stream(TEXT, client_id="across-a-crash")
            seen: dict[str, str | None] = {}

            def crash() -> asyncio.Task[object]:
                seen.update(reply_to=stream.reply_to, reply=stream.message_id)
                slow_server.kill()
                return asyncio.create_task(slow_server.arestart())

            pieces = await read_breaking(stream, 3, crash)
            reply = stream.reply
            assert reply is not None and reply.status == "complete" and chat.reconnects >= 1
            assert "".join(pieces) == ECHO + TEXT == reply.content  # nothing lost, nothing twice
            assert reply.reply_to == seen["reply_to"] and reply.client_id == "across-a-crash"
            messages = await chat.history()
            assert user_messages(messages) == [(seen["reply_to"], "across-a-crash", TEXT)]
            stored = final_reply(messages, reply.reply_to)
            assert (stored.id, stored.content, stored.status) == (reply.message_id, ECHO + TEXT, "complete")

    asyncio.run(main())


def test_messages_queued_behind_a_reply_all_complete_once_across_kill_9(slow_server):
    async def main() -> None:
        async with ChatClient(slow_server.ws_url, timeout=90) as chat:
            first = chat.stream("first " + TEXT, client_id="q0")
            reading = asyncio.create_task(read_breaking(
                first, 2, lambda: (slow_server.kill(), asyncio.create_task(slow_server.arestart()))[1]))
            others = [asyncio.ensure_future(chat.send(f"queued {i}", client_id=f"q{i}")) for i in (1, 2)]
            pieces = await reading
            replies = [first.reply, *await asyncio.gather(*others)]
            assert "".join(pieces) == ECHO + "first " + TEXT
            assert [r.content if r else None for r in replies] == [
                ECHO + "first " + TEXT, ECHO + "queued 1", ECHO + "queued 2"]
            messages = await chat.history()
            assert [(k, c) for _, k, c in user_messages(messages)] == [
                ("q0", "first " + TEXT), ("q1", "queued 1"), ("q2", "queued 2")]
            for r in replies:
                assert r is not None and final_reply(messages, r.reply_to).status == "complete"

    asyncio.run(main())


def test_a_message_sent_while_the_server_is_down_is_delivered_after_it_restarts(slow_server):
    async def main() -> None:
        async with ChatClient(slow_server.ws_url, timeout=90) as chat:
            await chat.send("before")
            slow_server.kill()
            restarting = asyncio.create_task(slow_server.arestart())
            reply = await chat.send("while it was down", client_id="down")
            await restarting
            assert reply.content == ECHO + "while it was down" and reply.status == "complete"
            assert [k for _, k, _ in user_messages(await chat.history())][1:] == ["down"]

    asyncio.run(main())


def test_stream_completes_across_a_graceful_restart(slow_server):
    async def main() -> None:
        async with ChatClient(slow_server.ws_url, timeout=90) as chat:
            stream = chat.stream(TEXT)
            pieces = await read_breaking(stream, 2, lambda: asyncio.create_task(slow_server.arestart()))
            assert stream.reply is not None and stream.reply.status == "complete"
            assert "".join(pieces) == ECHO + TEXT == stream.reply.content
            messages = await chat.history()
            assert len(user_messages(messages)) == 1
            assert final_reply(messages, stream.reply.reply_to).status == "complete"

    asyncio.run(main())


def test_stream_completes_across_a_network_drop(slow_server):
    async def main() -> None:
        async with TcpProxy(slow_server.port) as proxy:
            async with ChatClient(f"ws://127.0.0.1:{proxy.port}/ws", timeout=60) as chat:
                stream = chat.stream(TEXT, client_id="through-a-drop")
                pieces = await read_breaking(stream, 3, proxy.cut)
                assert stream.reply is not None and stream.reply.status == "complete" and chat.reconnects == 1
                assert "".join(pieces) == ECHO + TEXT == stream.reply.content
                messages = await chat.history()
                assert [k for _, k, _ in user_messages(messages)] == ["through-a-drop"]
                assert final_reply(messages, stream.reply.reply_to).content == ECHO + TEXT

    asyncio.run(main())
