"""The uvicorn internals this server builds on, in one place, with the versions they work with.

ws_protocol.py subclasses uvicorn's sans-I/O WebSocket protocol and http_protocols.py its HTTP
protocols (h11, and httptools when installed): uvicorn has no public hook for the limits they
add. Their private methods change between minor releases, so a uvicorn outside SUPPORTED stops
the server at start with one line, rather than failing later, per socket, in ways no test saw.
Keep SUPPORTED in step with the pin in pyproject.toml.
"""

from __future__ import annotations

import uvicorn

from server.operator_errors import OperatorError

SUPPORTED = ((0, 54), (0, 60))  # from 0.54 up to, not including, 0.60


def check_version(version: str) -> None:
    low, high = SUPPORTED
    try:
        release = tuple(int(part) for part in version.split(".")[:2])
    except ValueError:
        release = (-1,)
    if not low <= release < high:
        raise OperatorError(
            f"uvicorn {version} is not supported: chat-server works with uvicorn >={low[0]}.{low[1]},"
            f"<{high[0]}.{high[1]}; install one with: pip install 'uvicorn>={low[0]}.{low[1]},<{high[0]}.{high[1]}'")


check_version(uvicorn.__version__)

from uvicorn.protocols.http.h11_impl import H11Protocol  # noqa: E402
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol  # noqa: E402

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # httptools is optional: uvicorn then serves HTTP with h11
    HttpToolsProtocol = None  # type: ignore[assignment,misc]

__all__ = ["H11Protocol", "HttpToolsProtocol", "SUPPORTED", "WebSocketsSansIOProtocol", "check_version"]
