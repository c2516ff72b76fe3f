"""A refused handshake says why: the 403's body is a short reason (wscat prints it), never the token."""

from __future__ import annotations

import time

import jwt
import pytest
from support.client import aio
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

SECRET = "refusal-reasons-test-secret-" + "r" * 40


def mint(secret: str = SECRET, exp: float | None = None, **claims: object) -> str:
    body: dict[str, object] = {"sub": "alice", "iat": int(time.time()), **claims}
    if exp is not None:
        body["exp"] = int(exp)
    return jwt.encode(body, secret, algorithm="HS256")


@pytest.fixture
def token_server(session_servers):
    return session_servers("sqlite", CHAT_AUTH_SECRET=SECRET, CHAT_ALLOWED_ORIGINS="https://app.example")


async def refused(server, token: str | None = None, origin: str | None = None) -> tuple[int, str]:
    url = server.ws_url + (f"?token={token}" if token else "")
    try:
        async with connect(url, origin=origin, open_timeout=10):  # type: ignore[arg-type]
            pass
    except InvalidStatus as e:
        return e.response.status_code, e.response.body.decode()
    raise AssertionError("the handshake was accepted")


@pytest.mark.parametrize("case, reason", [
    ("forged", "invalid token: signature"),
    ("expired", "token expired"),
    ("garbage", "invalid token: not a JWT"),
    ("no sub", "invalid token: no sub claim"),
    ("none", "a token is required"),
])
@aio
async def test_a_refused_token_gets_403_with_the_reason(token_server, case, reason):
    token = {"forged": mint("another-secret-" + "x" * 30), "expired": mint(exp=time.time() - 3600),
             "garbage": "garbage-token-value", "no sub": jwt.encode({"iat": 1}, SECRET, algorithm="HS256"),
             "none": None}[case]
    status, body = await refused(token_server, token)
    assert (status, body) == (403, reason)
    if token:
        assert token not in body


@aio
async def test_a_refused_origin_gets_403_with_the_reason(token_server):
    assert await refused(token_server, mint(), origin="https://evil.example") == (403, "origin not allowed")


@aio
async def test_a_refusal_is_one_info_line_not_an_error(token_server):
    before = token_server.log_text().count("ERROR")
    for _ in range(3):
        assert (await refused(token_server, "garbage-token-value"))[0] == 403
    assert token_server.log_text().count("ERROR") == before, token_server.log_tail(10)
