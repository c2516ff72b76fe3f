"""Keep-alive over a real socket: the server pings, a client that answers stays, one that does not
is closed, and the server answers a client's own ping.

The server drops the handshake's request and response once the socket is accepted (to keep an
idle socket small); these tests show that the connection's life after the handshake does not need
them. The client here is websockets' sans-I/O protocol over a plain TCP stream, so the test sees
every ping and decides whether its pong reaches the server.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from support.client import Client, aio, poll
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri

PING_INTERVAL_S = 0.3  # and the same pong deadline: the server's ping timeout is its interval


@pytest.fixture
def pinging_server(db, session_servers):
    return session_servers(db, CHAT_WS_PING_INTERVAL_S=PING_INTERVAL_S)


class RawClient:
    """One WebSocket on websockets' sans-I/O client. With answer_pings=False, whatever the protocol
    would send (its automatic pongs included) is dropped, like a client that hangs."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, proto: ClientProtocol,
                 answer_pings: bool):
        self.reader, self.writer, self.proto = reader, writer, proto
        self.answer_pings = answer_pings
        self.pending: list[object] = []

    @classmethod
    async def open(cls, url: str, answer_pings: bool = True) -> RawClient:
        uri = parse_uri(url)
        reader, writer = await asyncio.open_connection(uri.host, uri.port)
        proto = ClientProtocol(uri)
        proto.send_request(proto.connect())
        client = cls(reader, writer, proto, answer_pings=True)  # the handshake itself always goes out
        client.flush()
        response = await client.next_event()
        assert isinstance(response, Response) and response.status_code == 101, response
        client.answer_pings = answer_pings
        return client

    def flush(self) -> None:
        data = b"".join(self.proto.data_to_send())
        if self.answer_pings and data:
            self.writer.write(data)

    async def next_event(self, timeout: float = 15) -> object:
        """The next handshake response or frame; None once the server has closed the TCP stream."""
        while not self.pending:
            data = await asyncio.wait_for(self.reader.read(65536), timeout)
            if data:
                self.proto.receive_data(data)
            else:
                self.proto.receive_eof()
            self.pending.extend(self.proto.events_received())
            self.flush()
            if not data and not self.pending:
                return None
        return self.pending.pop(0)

    async def next_frame(self, timeout: float = 15) -> Frame | None:
        event = await self.next_event(timeout)
        assert event is None or isinstance(event, Frame), event
        return event

    def send_text(self, text: str) -> None:
        self.proto.send_text(text.encode())
        self.writer.write(b"".join(self.proto.data_to_send()))

    def ping(self, payload: bytes) -> None:
        self.proto.send_ping(payload)
        self.writer.write(b"".join(self.proto.data_to_send()))

    def close(self) -> None:
        self.writer.transport.abort()


async def read_ready(client: RawClient) -> dict:
    frame = await client.next_frame()
    assert frame is not None and frame.opcode is Opcode.TEXT, frame
    ready = json.loads(frame.data)
    assert ready["type"] == "ready", ready
    return ready


@aio
async def test_a_client_that_answers_pings_stays_open_and_can_chat(pinging_server):
    client = await RawClient.open(pinging_server.ws_url)
    try:
        await read_ready(client)
        pings = 0
        while pings < 4:  # more than a whole pong deadline after the first ping
            frame = await client.next_frame()
            assert frame is not None and frame.opcode is Opcode.PING, frame
            pings += 1
        client.send_text(json.dumps({"type": "message", "content": "still here"}))
        kinds = []
        while "done" not in kinds:
            frame = await client.next_frame()
            assert frame is not None, "the server closed a client that answered its pings"
            if frame.opcode is Opcode.TEXT:
                kinds.append(json.loads(frame.data)["type"])
        assert kinds[0] == "ack" and kinds[-1] == "done", kinds
    finally:
        client.close()


@aio
async def test_a_client_that_does_not_answer_pings_is_closed_1011(pinging_server):
    client = await RawClient.open(pinging_server.ws_url, answer_pings=False)
    try:
        await read_ready(client)
        kinds = []
        while (frame := await client.next_frame()) is not None and frame.opcode is not Opcode.CLOSE:
            kinds.append(frame.opcode)
        assert frame is not None, "the TCP stream ended without a close frame"
        assert kinds and set(kinds) == {Opcode.PING}, kinds
        assert client.proto.close_rcvd is not None and client.proto.close_rcvd.code == 1011
    finally:
        client.close()
    # The server's side is gone too: the handler ended and the socket left the hub. (The other
    # tests on this server close their sockets as well.)
    assert await poll(lambda: pinging_server.metric("chat_sockets_open"), lambda n: n == 0,
                      timeout=15, interval=0.1) == 0


@aio
async def test_the_server_answers_a_clients_ping(server):
    client = await Client.open(server)  # websockets' own client: ping() waits for the matching pong
    try:
        pong = await client.ws.ping(b"are you there")
        await asyncio.wait_for(pong, 15)
        await client.complete("after the ping")
    finally:
        await client.close()


@aio
async def test_the_server_answers_a_raw_ping_with_the_same_payload(server):
    client = await RawClient.open(server.ws_url)
    try:
        await read_ready(client)
        client.ping(b"\x00payload\xff")
        frame = await client.next_frame()
        assert frame is not None and frame.opcode is Opcode.PONG and frame.data == b"\x00payload\xff", frame
    finally:
        client.close()
