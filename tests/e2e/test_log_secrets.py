"""No credential reaches the server's log: turns in open and token mode, with good, expired, forged
and malformed tokens, by query string and by header, over the socket and HTTP; then the whole log
(startup, handshakes, refusals, shutdown) is searched for every token and secret.

uvicorn logs a socket's request target with its query string (`"WebSocket /ws?token=…"`), and the
websockets library logs frames (the `ready` frame carries a token in open mode) at debug level, so
the token-mode server runs at debug level.
"""

from __future__ import annotations

import signal
import time

import httpx
import jwt
from support.client import Client, Refused, aio

SECRET = "log-secrets-test-secret-" + "k" * 40
API_KEY = "sk-log-secrets-test-" + "a" * 30
METRICS_TOKEN = "metrics-log-secrets-" + "m" * 30


def mint(sub: str, secret: str = SECRET, exp: float | None = None) -> str:
    claims: dict[str, object] = {"sub": sub, "iat": int(time.time())}
    if exp is not None:
        claims["exp"] = int(exp)
    return jwt.encode(claims, secret, algorithm="HS256")


def http_status(server, path: str, token: str) -> int:
    return httpx.get(server.base_url + path, headers={"Authorization": f"Bearer {token}"}, timeout=10).status_code


async def play(server, good: list[str], bad: list[str]) -> list[str]:
    """Turns with the good tokens (query and header), refusals for the bad; every token seen."""
    seen = list(good) + list(bad)
    for token in good:
        for via in ("query", "header"):
            headers = {"Authorization": f"Bearer {token}"} if via == "header" else None
            c = await Client.open(server, token=token if via == "query" else None, headers=headers)
            try:
                await c.complete(f"hello by {via}")
            finally:
                await c.close()
        assert http_status(server, "/api/conversations", token) == 200
    for token in bad:
        for via in ("query", "header"):
            headers = {"Authorization": f"Bearer {token}"} if via == "header" else None
            try:
                c = await Client.open(server, token=token if via == "query" else None, headers=headers)
            except Refused:
                continue
            await c.close()
            raise AssertionError("a bad token was accepted")
        assert http_status(server, "/api/conversations", token) == 401
    return seen


def assert_clean(server, secrets: list[str]) -> str:
    server.signal(signal.SIGTERM)
    server.wait(15)
    log = server.log_text()
    for secret in secrets:
        assert secret not in log, f"{secret[:12]}… is in the log:\n{log[-3000:]}"
        signature = secret.rsplit(".", 1)[1] if secret.count(".") == 2 else ""
        if len(signature) >= 16:  # a JWT: not even its signature ("not.a.jwt" has none to leak)
            assert signature not in log, f"the signature of {secret[:12]}… is in the log:\n{log[-3000:]}"
    return log


@aio
async def test_open_mode_logs_no_token(make_server):
    server = make_server("sqlite", OPENAI_API_KEY=API_KEY, CHAT_METRICS_TOKEN=METRICS_TOKEN)
    first = await Client.open(server)  # a new user: the server mints a token and sends it in `ready`
    minted = first.token
    await first.complete("hi")
    await first.close()
    seen = await play(server, [minted], [mint("u-x", "another-secret-" + "x" * 30), minted[:-4] + "AAAA",
                                         "not.a.jwt", "garbage-token-value-123"])
    assert http_status(server, "/metrics", METRICS_TOKEN) == 200
    assert http_status(server, "/metrics", "wrong-" + METRICS_TOKEN) == 401
    log = assert_clean(server, seen + [API_KEY, METRICS_TOKEN])
    assert "/ws?token=[redacted]" in log  # the handshake line was there, without the token


@aio
async def test_token_mode_at_debug_level_logs_no_token_or_secret(make_server):
    server = make_server("sqlite", CHAT_AUTH_SECRET=SECRET, CHAT_LOG_LEVEL="debug", OPENAI_API_KEY=API_KEY)
    good = [mint("alice"), mint("bob", exp=time.time() + 3600)]
    bad = [mint("alice", exp=time.time() - 3600), mint("mallory", "another-secret-" + "x" * 30),
           good[0][:-4] + "AAAA", "garbage-token-value-123"]
    seen = await play(server, good, bad)
    log = assert_clean(server, seen + [SECRET, API_KEY])
    assert "/ws?token=[redacted]" in log
