"""Refusal reasons: short, the same over HTTP and as a close reason, and never the token."""

from __future__ import annotations

import asyncio
import time

import jwt
import pytest

from server.auth import Authenticator, AuthError
from server.web.socket import Socket

SECRET = "unit-refusal-secret-" + "u" * 40


def reason(token: str) -> str:
    with pytest.raises(AuthError) as e:
        Authenticator(SECRET, token_mode=True).identify(token)
    assert token not in str(e.value)
    return str(e.value)


def test_reasons_name_the_problem():
    assert reason(jwt.encode({"sub": "a"}, "x" * 40, algorithm="HS256")) == "invalid token: signature"
    assert reason(jwt.encode({"sub": "a", "exp": int(time.time()) - 3600}, SECRET, algorithm="HS256")) == \
        "token expired"
    assert reason(jwt.encode({"sub": "a"}, SECRET + "x" * 40, algorithm="HS512")) == \
        "invalid token: algorithm (HS256 only)"
    assert reason("not-a-token") == "invalid token: not a JWT"
    assert reason(jwt.encode({"iat": 1}, SECRET, algorithm="HS256")) == "invalid token: no sub claim"


def refusal(http_response: bool, status: int = 403) -> list[dict[str, object]]:
    sent: list[dict[str, object]] = []

    async def send(event: dict[str, object]) -> None:
        sent.append(event)

    async def receive() -> dict[str, object]:
        raise AssertionError

    asyncio.run(Socket(receive, send, 1.0, http_response=http_response).refuse("token expired", status))
    return sent


def test_refuse_answers_403_with_the_reason_as_body_or_closes_1008_with_it():
    start, body = refusal(http_response=True)
    assert start["type"] == "websocket.http.response.start" and start["status"] == 403
    assert body == {"type": "websocket.http.response.body", "body": b"token expired"}
    assert refusal(http_response=False) == [{"type": "websocket.close", "code": 1008, "reason": "token expired"}]


@pytest.mark.parametrize("status, code", [(429, 1013), (503, 1001)])
def test_too_many_and_shutting_down_are_not_auth_refusals(status, code):
    start, _ = refusal(http_response=True, status=status)
    assert start["status"] == status
    assert refusal(http_response=False, status=status)[0]["code"] == code
