"""The client's exceptions: one base class whose `code` is the protocol's error code or the client's own."""

from __future__ import annotations


class ChatError(Exception):
    """An `error` frame of the server, or a failure of the client; `code` says which."""

    def __init__(self, code: str, detail: str, *, client_id: str | None = None) -> None:
        super().__init__(f"{code}: {detail}")
        self.code, self.detail, self.client_id = code, detail, client_id


class Refused(ChatError):
    """The server refused the connection: `status` (HTTP) or `close_code` says how."""

    def __init__(self, detail: str, *, status: int | None = None, close_code: int | None = None) -> None:
        super().__init__("refused", detail)
        self.status, self.close_code = status, close_code


class ConnectionFailed(ChatError):
    """No server answered after the configured retries, or the connection was lost for good."""

    def __init__(self, detail: str) -> None:
        super().__init__("connection", detail)


class ChatTimeout(ChatError, TimeoutError):
    """A wait ran out; the message says what it waited for."""

    def __init__(self, detail: str, *, client_id: str | None = None) -> None:
        super().__init__("timeout", detail, client_id=client_id)
