"""The HTTP API beside the socket, for what has no frame (a conversation's whole tree).

Plain `urllib` in a worker thread: the client needs no HTTP library for one GET. The API's base is
the socket's URL with `ws`/`wss` made `http`/`https` and its last `/ws` taken off, unless the
client was given one. HTTP statuses become the client's `ChatError` codes.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

from .errors import ChatError, ChatTimeout, ConnectionFailed, Refused

CODES: Final = {400: "invalid", 404: "not_found", 422: "invalid", 429: "rate_limited", 503: "unavailable"}


def api_base(ws_url: str) -> str:
    """`ws://host:port/prefix/ws?x` → `http://host:port/prefix`."""
    parts = urlsplit(ws_url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    path = parts.path[:-3] if parts.path.endswith("/ws") else parts.path
    return urlunsplit((scheme, parts.netloc, path.rstrip("/"), "", ""))


async def get_json(url: str, headers: Mapping[str, str], timeout: float) -> Any:
    """GET `url` and parse its JSON body; a ChatError for anything but a 2xx answer."""
    return await asyncio.to_thread(_get, url, dict(headers), timeout)


def _get(url: str, headers: dict[str, str], timeout: float) -> Any:
    request = urllib.request.Request(url, headers={**headers, "Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as e:
        raise _error(e, url) from None
    except TimeoutError:
        raise ChatTimeout(f"no answer within {timeout:g}s from {url}") from None
    except (urllib.error.URLError, OSError) as e:
        raise ConnectionFailed(f"cannot reach {url}: {e!r}") from e


def _error(e: urllib.error.HTTPError, url: str) -> ChatError:
    try:
        detail = str(json.loads(e.read()).get("detail") or e.reason)
    except Exception:
        detail = str(e.reason)
    if e.code in (401, 403):
        return Refused(f"{url} refused the token: HTTP {e.code}: {detail}", status=e.code)
    code = CODES.get(e.code, "internal" if e.code >= 500 else "invalid")
    return ChatError(code, f"HTTP {e.code} from {url}: {detail}")
