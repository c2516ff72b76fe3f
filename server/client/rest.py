"""The HTTP API beside the socket, for what has no frame (a conversation's tree, its settings,
search, export, feedback).

Plain `urllib` in a worker thread: the client needs no HTTP library for a few requests. The API's
base is the socket's URL with `ws`/`wss` made `http`/`https` and its last `/ws` taken off, unless
the client was given one. HTTP statuses become the client's `ChatError` codes.
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

CODES: Final = {400: "invalid", 404: "not_found", 413: "too_large", 422: "invalid", 429: "rate_limited",
                503: "unavailable"}


def api_base(ws_url: str) -> str:
    """`ws://host:port/prefix/ws?x` → `http://host:port/prefix`."""
    parts = urlsplit(ws_url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    path = parts.path[:-3] if parts.path.endswith("/ws") else parts.path
    return urlunsplit((scheme, parts.netloc, path.rstrip("/"), "", ""))


async def get_json(url: str, headers: Mapping[str, str], timeout: float) -> Any:
    """GET `url` and parse its JSON body; a ChatError for anything but a 2xx answer."""
    return await _request(url, headers, timeout)


async def get_text(url: str, headers: Mapping[str, str], timeout: float, accept: str = "text/plain") -> str:
    """GET `url` and return its body as text (decoded as its charset says, UTF-8 by default)."""
    return str(await _request(url, headers, timeout, accept=accept, parse=False))


async def put_json(url: str, body: Any, headers: Mapping[str, str], timeout: float) -> Any:
    """PUT `body` as JSON to `url` and parse the JSON answer."""
    return await _request(url, headers, timeout, method="PUT", body=body)


async def patch_json(url: str, body: Any, headers: Mapping[str, str], timeout: float) -> Any:
    """PATCH `url` with `body` as JSON and parse the JSON answer."""
    return await _request(url, headers, timeout, method="PATCH", body=body)


_NO_BODY: Final = object()


async def _request(url: str, headers: Mapping[str, str], timeout: float, *, method: str = "GET",
                  body: Any = _NO_BODY, accept: str = "application/json", parse: bool = True) -> Any:
    """One HTTP request: its JSON answer parsed (None for an empty body), or its text with `parse=False`."""
    return await asyncio.to_thread(_send, method, url, dict(headers), timeout, body, accept, parse)


def _send(method: str, url: str, headers: dict[str, str], timeout: float, body: Any, accept: str,
          parse: bool) -> Any:
    headers = {**headers, "Accept": accept}
    data = None
    if body is not _NO_BODY:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    req = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            raw = response.read()
            if not parse:
                return raw.decode(response.headers.get_content_charset() or "utf-8")
            return json.loads(raw) if raw else None
    except urllib.error.HTTPError as e:
        raise _error(e, method, url) from None
    except TimeoutError:
        raise ChatTimeout(f"no answer within {timeout:g}s from {method} {url}") from None
    except (urllib.error.URLError, OSError) as e:
        raise ConnectionFailed(f"cannot reach {url}: {e!r}") from e


def _error(e: urllib.error.HTTPError, method: str, url: str) -> ChatError:
    try:
        detail = _detail(json.loads(e.read()).get("detail")) or str(e.reason)
    except Exception:
        detail = str(e.reason)
    if e.code in (401, 403):
        return Refused(f"{url} refused the token: HTTP {e.code}: {detail}", status=e.code)
    code = CODES.get(e.code, "internal" if e.code >= 500 else "invalid")
    return ChatError(code, f"HTTP {e.code} from {method} {url}: {detail}")


def _detail(detail: Any) -> str:
    """FastAPI's `detail`: a string, or for a 422 of its own validation a list of {"loc","msg"}."""
    if isinstance(detail, list):
        parts = []
        for item in detail:
            if isinstance(item, Mapping):
                where = ".".join(str(p) for p in item.get("loc") or () if p != "body")
                parts.append(f"{where}: {item.get('msg')}" if where else str(item.get("msg")))
            else:
                parts.append(str(item))
        return "; ".join(parts)
    return str(detail) if detail else ""
