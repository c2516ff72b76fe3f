"""A fake OpenAI-compatible model server on loopback, for the `openai` backend tests.

Real HTTP/1.1 on 127.0.0.1: POST /v1/chat/completions with "stream": true answers server-sent
events over chunked transfer encoding (`data: {chat.completion.chunk}` events, a final chunk with
finish_reason, a usage chunk with empty choices when stream_options.include_usage, then
`data: [DONE]`); GET /v1/models lists one model. The real `openai` SDK in the chat server talks to it.

Each chat request takes the next step of a script (then the default: a normal reply), so that
retries can be counted:
    {}                                   a normal reply (optionally "chunks", "delay", "model", "usage")
    {"status": 500}                      an HTTP error with an OpenAI-style JSON body (any status)
    {"hang_before_first": s}             headers and the role chunk, then silence for s seconds
    {"hang_after": n, "seconds": s}      n content chunks, then silence for s seconds, then the rest
    {"fail_after": n}                    n content chunks, then the TCP connection is dropped mid-body
A request without "stream" (a title) gets one chat.completion whose content is the step's "content"
(else its chunks joined), after its "delay". `models` is what GET /v1/models lists.
Every chat request is recorded as a Call (body, headers, how many content chunks went out, and the
monotonic time at which the fake saw the client close its stream: a failed write, or EOF on the
socket while it was waiting between chunks).
"""

from __future__ import annotations

import json
import select
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

DEFAULT_CHUNKS = ("Hello", " from", " the", " fake", " model.")


@dataclass
class Call:
    """One chat-completions request as the fake saw it."""

    body: dict[str, Any]
    headers: dict[str, str]
    step: dict[str, Any]
    started_at: float = field(default_factory=time.monotonic)
    chunks_sent: int = 0
    closed_by_client_at: float | None = None  # monotonic; None while (or if) the client kept it open
    finished: bool = False  # the whole reply went out, usage included


class ClientClosed(Exception):
    pass


class FakeLLM:
    def __init__(self, port: int = 0, chunks: tuple[str, ...] | list[str] = DEFAULT_CHUNKS, delay: float = 0.005):
        self.default_chunks = list(chunks)
        self.default_delay = delay
        self.calls: list[Call] = []
        self.model_listings = 0
        self.models = ["fake-model"]
        self._script: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                if self.path.rstrip("/").endswith("/models"):
                    with fake._lock:
                        fake.model_listings += 1
                    self._json(200, {"object": "list", "data": [{"id": m, "object": "model", "created": 0,
                                                                 "owned_by": "fake"} for m in fake.models]})
                else:
                    self._json(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    self._json(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})
                    return
                body = json.loads(raw or b"{}")
                with fake._lock:
                    step = fake._script.pop(0) if fake._script else {}
                    call = Call(body, {k.lower(): v for k, v in self.headers.items()}, step)
                    fake.calls.append(call)
                try:
                    self._answer(call)
                except ClientClosed:
                    call.closed_by_client_at = time.monotonic()
                    self.close_connection = True
                except (BrokenPipeError, ConnectionResetError):
                    call.closed_by_client_at = time.monotonic()
                    self.close_connection = True

            # -- one chat request --------------------------------------------------------------
            def _answer(self, call: Call) -> None:
                step, body = call.step, call.body
                if "status" in step:
                    status = step["status"]
                    key = self.headers.get("Authorization", "").removeprefix("Bearer ")
                    # A careless upstream echoes the key back: the chat server must not pass it on.
                    message = (f"Incorrect API key provided: {key}" if status == 401
                               else step.get("message", f"fake failure {status}"))
                    self._json(status, {"error": {"message": message, "type": "fake_error", "code": status}})
                    return
                if not body.get("stream"):  # a short request (a title): one JSON answer
                    content = step.get("content", "".join(step.get("chunks", fake.default_chunks)))
                    self._wait(step.get("delay", 0))
                    self._json(200, {"id": "chatcmpl-fake", "object": "chat.completion", "created": 0,
                                     "model": body.get("model", "fake"),
                                     "choices": [{"index": 0, "finish_reason": "stop",
                                                  "message": {"role": "assistant", "content": content}}],
                                     "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})
                    call.finished = True
                    return
                chunks = list(step.get("chunks", fake.default_chunks))
                delay = step.get("delay", fake.default_delay)
                model = step.get("model", body.get("model", "fake"))
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-cache")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                self._event(model, {"role": "assistant", "content": ""})
                if "hang_before_first" in step:
                    self._wait(step["hang_before_first"])
                for i, piece in enumerate(chunks):
                    if step.get("fail_after") == i:
                        self._drop()
                        return
                    if step.get("hang_after") == i:
                        self._wait(step.get("seconds", 30))
                    self._wait(delay)
                    self._event(model, {"content": piece})
                    call.chunks_sent += 1
                if step.get("fail_after") == len(chunks):
                    self._drop()
                    return
                self._event(model, {}, finish="stop")
                if (body.get("stream_options") or {}).get("include_usage"):
                    prompt_tokens = sum(len(m.get("content") or "") for m in body.get("messages", []))
                    usage = step.get("usage", {"prompt_tokens": prompt_tokens, "completion_tokens": len(chunks)})
                    usage = {**usage, "total_tokens": usage["prompt_tokens"] + usage["completion_tokens"]}
                    self._event(model, None, usage=usage)
                call.finished = True  # before the last bytes: the client may act on them at once
                self._write(b"data: [DONE]\n\n")
                self.wfile.write(b"0\r\n\r\n")

            def _event(self, model: str, delta: dict[str, Any] | None, finish: str | None = None,
                       usage: dict[str, int] | None = None) -> None:
                obj: dict[str, Any] = {
                    "id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": int(time.time()),
                    "model": model,
                    "choices": [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]}
                if usage is not None:
                    obj["usage"] = usage
                self._write(f"data: {json.dumps(obj)}\n\n".encode())

            def _write(self, data: bytes) -> None:
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")

            def _wait(self, seconds: float) -> None:
                """Stay silent for `seconds`, watching the socket: EOF means the client closed it."""
                deadline = time.monotonic() + seconds
                while (left := deadline - time.monotonic()) > 0 and not fake._stopping.is_set():
                    readable, _, _ = select.select([self.connection], [], [], min(left, 0.05))
                    if readable:
                        try:
                            peeked = self.connection.recv(1, socket.MSG_PEEK)
                        except OSError:
                            raise ClientClosed() from None
                        if not peeked:
                            raise ClientClosed()
                        time.sleep(min(left, 0.01))  # unexpected bytes: not a close; keep waiting

            def _drop(self) -> None:
                """Like a crashing model server: the chunked body is never finished."""
                self.close_connection = True
                try:
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

            def _json(self, status: int, obj: dict[str, Any]) -> None:
                data = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="fake-llm", daemon=True)

    def start(self) -> FakeLLM:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def reset(self, *script: dict[str, Any]) -> None:
        """Forget earlier calls; the next chat requests follow `script`, then answer normally."""
        with self._lock:
            self.calls = []
            self._script = list(script)

    def wait_closed(self, call: Call, timeout: float = 10.0) -> float | None:
        """When the fake saw the client close this call's stream (None if it did not within timeout)."""
        deadline = time.monotonic() + timeout
        while call.closed_by_client_at is None and time.monotonic() < deadline:
            time.sleep(0.02)
        return call.closed_by_client_at

    def wait_calls(self, n: int, timeout: float = 10.0) -> list[Call]:
        deadline = time.monotonic() + timeout
        while len(self.calls) < n and time.monotonic() < deadline:
            time.sleep(0.02)
        return list(self.calls)
