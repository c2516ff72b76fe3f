"""Open mode: minted tokens expire (CHAT_OPEN_MODE_TOKEN_TTL_S), and every `ready` hands out a
fresh one, so that a user who keeps coming back never notices. (That an expired token is refused
is tests/e2e/test_security.py's.)"""

from __future__ import annotations

import asyncio
import time

import jwt
from support.client import Client, aio


def exp(token: str) -> float:
    return jwt.decode(token, options={"verify_signature": False})["exp"]


@aio
async def test_every_ready_hands_out_a_fresh_token_that_expires_after_the_ttl(make_server):
    server = make_server("sqlite", CHAT_OPEN_MODE_TOKEN_TTL_S=600)
    first = await Client.open(server)
    assert abs(exp(first.token) - (time.time() + 600)) < 5
    await first.close()
    await asyncio.sleep(1.1)
    second = await Client.open(server, token=first.token)
    assert second.user_id == first.user_id and second.token != first.token
    assert exp(second.token) > exp(first.token)
    await second.close()
    third = await Client.open(server, token=second.token)
    assert third.user_id == first.user_id
    await third.close()
