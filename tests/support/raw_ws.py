"""A WebSocket client written byte by byte over a plain TCP socket, as an attacker would: it sends
whatever frames it is told to (fragments, pings, half a handshake) and reads only when asked.

Blocking, so that an attack runs in a thread of its own and never slows the test's event loop.
"""

from __future__ import annotations

import base64
import os
import socket
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path

CONT, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


def frame(opcode: int, payload: bytes = b"", fin: bool = True) -> bytes:
    """A masked client frame."""
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 1 << 16:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    mask = os.urandom(4)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


class RawWebSocket:
    def __init__(self, port: int, path: str = "/ws", headers: dict[str, str] | None = None,
                 timeout: float = 10, rcvbuf: int | None = None, host: str | None = None):
        self.sock = socket.socket()
        if rcvbuf is not None:  # a small receive window: a client that does not read backs up fast
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect(("127.0.0.1", port))
        self.buffer = b""
        host = host or f"127.0.0.1:{port}"
        lines = [f"GET {path} HTTP/1.1", f"Host: {host}", "Upgrade: websocket", "Connection: Upgrade",
                 "Sec-WebSocket-Key: " + base64.b64encode(os.urandom(16)).decode(), "Sec-WebSocket-Version: 13"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        while b"\r\n\r\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed during the handshake")
            self.buffer += chunk
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        self.response_head = head.decode("latin-1")
        self.status = int(self.response_head.split(" ", 2)[1])

    def header(self, name: str) -> str | None:
        for line in self.response_head.split("\r\n")[1:]:
            key, _, value = line.partition(":")
            if key.strip().lower() == name.lower():
                return value.strip()
        return None

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _read(self, n: int) -> bytes:
        while len(self.buffer) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            self.buffer += chunk
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def recv_frame(self) -> tuple[int, bytes]:
        b0, b1 = self._read(2)
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack("!H", self._read(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", self._read(8))[0]
        return b0 & 0x0F, self._read(n)

    def close_code(self, timeout: float = 10) -> int | None:
        """Read until the server's close frame; its code (None: the connection ended without one)."""
        self.sock.settimeout(timeout)
        try:
            while True:
                opcode, payload = self.recv_frame()
                if opcode == CLOSE:
                    return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
        except (OSError, ConnectionError):
            return None

    def close(self) -> None:
        self.sock.close()


class Attack(threading.Thread):
    """Runs `step(sock)` over and over on a raw socket, reconnecting when the server closes it,
    until stopped. Counts the steps and the connections the server ended."""

    def __init__(self, port: int, step: Callable[[RawWebSocket], None], path: str = "/ws",
                 rcvbuf: int | None = 4096, on_open: Callable[[RawWebSocket], None] | None = None):
        super().__init__(daemon=True)
        self.port, self.step, self.path, self.rcvbuf, self.on_open = port, step, path, rcvbuf, on_open
        self.stopped = threading.Event()
        self.steps = 0
        self.connections = 0
        self.ended = 0
        self.statuses: list[int] = []

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                ws = RawWebSocket(self.port, self.path, timeout=2, rcvbuf=self.rcvbuf)
            except OSError:
                time.sleep(0.05)
                continue
            self.connections += 1
            self.statuses.append(ws.status)
            try:
                if ws.status == 101 and self.on_open is not None:
                    self.on_open(ws)
                while ws.status == 101 and not self.stopped.is_set():
                    self.step(ws)
                    self.steps += 1
            except OSError:
                self.ended += 1
            finally:
                ws.close()
            if ws.status != 101:
                time.sleep(0.05)

    def stop(self) -> None:
        self.stopped.set()
        self.join(10)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")
