"""Identity and isolation under attack: tokens that must be refused, tokens that must work, Origin
and CORS, and one user reaching for another user's data through every frame and endpoint.

Refused handshakes must create nothing: besides the victim's own view, the whole database's row
counts are compared before and after. Cross-user probes must get exactly the answer an unknown id
gets (same code, same body once ids are normalised), and leave the owner's data as it was.

Token-mode tests use one shared token-mode server per database (with an Origin allow-list);
open-mode tests use the shared open server, or their own when they restart it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sqlite3
import subprocess
import time
import uuid
from contextlib import closing
from typing import Any

import httpx
import jwt
import pytest
from support.client import Client, Refused, Rest, aio, cid
from support.servers import VENV_BIN, free_port

SECRET = "security-test-secret-" + "s" * 50  # 64+ bytes, so HS512 with it is a fair forgery attempt
OTHER_SECRET = "some-other-secret-" + "o" * 50
ALLOWED = ["http://allowed.example", "https://app.example:8443"]
AUTH_REFUSALS = {("http", 403), ("close", 1008)}  # the contract's two forms of a refused handshake


@pytest.fixture
def token_server(db, session_servers):
    """A shared token-mode server per database, with an Origin allow-list."""
    return session_servers(db, CHAT_AUTH_SECRET=SECRET, CHAT_ALLOWED_ORIGINS=",".join(ALLOWED))


@pytest.fixture
def sqlite_token_server(session_servers):
    """The same on SQLite only, for what does not depend on the database (Origin, CORS, token expiry)."""
    return session_servers("sqlite", CHAT_AUTH_SECRET=SECRET, CHAT_ALLOWED_ORIGINS=",".join(ALLOWED))


# -- helpers ---------------------------------------------------------------------------------------------
def b64(obj: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


def mint(sub: str, secret: str = SECRET, exp: float | None = None, algorithm: str = "HS256") -> str:
    claims: dict[str, Any] = {"sub": sub, "iat": int(time.time())}
    if exp is not None:
        claims["exp"] = int(exp)
    return jwt.encode(claims, secret, algorithm=algorithm)


def bad_tokens(secret: str, sub: str) -> dict[str, str]:
    """Tokens claiming `sub` that must all be refused; `secret` is the server's real key."""
    now = time.time()
    header, _, signature = mint("attacker", secret).split(".")
    return {
        "forged": f"{header}.{b64({'sub': sub, 'iat': int(now)})}.{signature}",
        "expired": mint(sub, secret, exp=now - 3600),
        "wrong key": mint(sub, OTHER_SECRET),
        "alg none": b64({"alg": "none", "typ": "JWT"}) + "." + b64({"sub": sub}) + ".",
        "HS512": mint(sub, secret, algorithm="HS512"),
        "garbage": "not-a-token",
        "no sub": jwt.encode({"iat": int(now)}, secret, algorithm="HS256"),
    }


BAD_KINDS = ["forged", "expired", "wrong key", "alg none", "HS512", "garbage", "no sub"]


async def query(server: Any, sql: str) -> list[tuple[Any, ...]]:
    """Read the server's database directly (SQLite file or PostgreSQL database)."""
    url: str = server.db_url
    if url.startswith("sqlite"):
        with closing(sqlite3.connect(url.split("///", 1)[1], timeout=10)) as conn:
            return conn.execute(sql).fetchall()
    import asyncpg

    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"), timeout=10)
    try:
        return [tuple(r) for r in await conn.fetch(sql)]
    finally:
        await conn.close()


async def row_counts(server: Any) -> tuple[int, ...]:
    rows = await query(server, "SELECT (SELECT count(*) FROM conversations), (SELECT count(*) FROM messages), "
                               "(SELECT count(*) FROM server_secrets)")
    return tuple(rows[0])


async def open_mode_secret(server: Any) -> str:
    rows = await query(server, "SELECT value FROM server_secrets WHERE name = 'open_mode_jwt_secret'")
    assert len(rows) == 1, rows
    return rows[0][0]


async def refusal(server: Any, token: str | None, via: str = "query", headers: dict[str, str] | None = None,
                  **kw: Any) -> tuple[str, int]:
    """How the handshake was refused; fails if it was accepted."""
    if via == "header" and token:
        headers = {**(headers or {}), "Authorization": f"Bearer {token}"}
    try:
        c = await Client.open(server, token=token if via == "query" else None, headers=headers, **kw)
    except Refused as e:
        return e.how, e.code
    await c.close()
    raise AssertionError(f"handshake accepted: ready {c.ready}")


async def open_via(server: Any, token: str, via: str, **kw: Any) -> Client:
    if via == "query":
        return await Client.open(server, token=token, **kw)
    return await Client.open(server, headers={"Authorization": f"Bearer {token}"}, **kw)


def http_status(server: Any, token: str | None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.get(server.base_url + "/api/conversations", headers=headers, timeout=20).status_code


def conversations(server: Any, token: str) -> list[dict[str, Any]]:
    rest = Rest(server, token)
    try:
        return rest.conversations()
    finally:
        rest.http.close()


def snapshot(server: Any, token: str) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """Everything a user can see over HTTP: each conversation and all of its messages."""
    rest = Rest(server, token)
    try:
        return [(conv, rest.all_messages(conv["id"])) for conv in rest.conversations()]
    finally:
        rest.http.close()


def normalised(value: Any, ids: dict[str, str]) -> str:
    text = json.dumps(value, sort_keys=True)
    for real, placeholder in ids.items():
        text = text.replace(real, placeholder)
    return text


def run_cli(server: Any, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(VENV_BIN / "chat-server"), *args], env=server.full_env(), cwd=server.workdir,
                          capture_output=True, text=True, timeout=90, stdin=subprocess.DEVNULL)


# -- refused tokens --------------------------------------------------------------------------------------
@pytest.mark.parametrize("via", ["query", "header"])
@pytest.mark.parametrize("kind", BAD_KINDS)
@aio
async def test_invalid_token_is_refused_in_token_mode_and_creates_nothing(token_server, kind, via):
    victim = "victim-" + uuid.uuid4().hex[:8]
    token = bad_tokens(SECRET, victim)[kind]
    before = await row_counts(token_server)
    assert await refusal(token_server, token, via) in AUTH_REFUSALS
    assert http_status(token_server, token) == 401
    assert await row_counts(token_server) == before
    assert conversations(token_server, mint(victim)) == []


_victims: dict[str, Client] = {}  # one victim per open-mode server, shared by the cases below


@pytest.mark.parametrize("via", ["query", "header"])
@pytest.mark.parametrize("kind", BAD_KINDS)
@aio
async def test_invalid_token_is_refused_in_open_mode_too_and_creates_nothing(server, kind, via):
    # The victim is a real open-mode user with a conversation: a forgery must not reach it.
    victim = _victims.get(server.base_url)
    if victim is None:
        victim = _victims[server.base_url] = await Client.open(server)
        await victim.complete("mine alone")
        await victim.close()
    mine = snapshot(server, victim.token)
    assert len(mine) == 1
    before = await row_counts(server)
    token = bad_tokens(await open_mode_secret(server), victim.user_id)[kind]
    assert await refusal(server, token, via) in AUTH_REFUSALS
    assert http_status(server, token) == 401
    assert await row_counts(server) == before
    assert snapshot(server, victim.token) == mine


@aio
async def test_token_mode_refuses_a_socket_without_token_and_creates_nothing(token_server):
    before = await row_counts(token_server)
    assert await refusal(token_server, None) in AUTH_REFUSALS
    assert await refusal(token_server, None, via="header", headers={"Authorization": "Bearer"}) in AUTH_REFUSALS
    assert http_status(token_server, None) == 401
    assert await row_counts(token_server) == before


@aio
async def test_open_mode_token_of_another_server_is_refused(server, token_server):
    # Open mode signs with a secret of its own database, not with anything guessable.
    c = await Client.open(server)
    await c.close()
    assert await refusal(token_server, c.token) in AUTH_REFUSALS
    assert await refusal(server, mint(c.user_id)) in AUTH_REFUSALS


# -- valid tokens ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("via", ["query", "header"])
@aio
async def test_valid_token_is_accepted_as_its_sub(token_server, via):
    user = "user-" + uuid.uuid4().hex[:8]
    c = await open_via(token_server, mint(user, exp=time.time() + 3600), via)
    try:
        assert c.ready["user_id"] == user and "token" not in c.ready  # nothing minted: it brought one
        t = await c.complete("hello via " + via)
        assert [i["id"] for i in conversations(token_server, mint(user))] == [t.ack["conversation_id"]]
    finally:
        await c.close()


@aio
async def test_same_sub_on_two_sockets_is_the_same_user(token_server):
    user = "twin-" + uuid.uuid4().hex[:8]
    a = await open_via(token_server, mint(user), "query")
    b = await open_via(token_server, mint(user, exp=time.time() + 600), "header")
    try:
        t = await a.complete("written on a")
        conv = t.ack["conversation_id"]
        h = await b.history(conv)
        assert h["type"] == "history" and [m["content"] for m in h["messages"]] == [
            "written on a", "You said: written on a"]
        t2 = await b.complete("continued on b", conversation_id=conv)
        assert t2.ack["conversation_id"] == conv
        assert [i["id"] for i in conversations(token_server, mint(user))] == [conv]
    finally:
        await a.close()
        await b.close()


@aio
async def test_token_expiring_during_the_socket_closes_it_1008_at_expiry(sqlite_token_server):
    """Also a ?sync=1 tab that only listens: it must not hear its user's conversations after its
    token expired (expiry used to be checked only when a frame arrived)."""
    user = "expiring-" + uuid.uuid4().hex[:8]
    exp = int(time.time()) - 26  # still inside the 30 s leeway for a few seconds
    c = await open_via(sqlite_token_server, mint(user, exp=exp), "query")
    listener = await Client.open(sqlite_token_server, token=mint(user, exp=exp), sync=True)
    assert c.user_id == user == listener.user_id
    live = await c.history(str(uuid.uuid4()))  # answered while the token is valid
    assert live["type"] == "error" and live["code"] == "not_found", live
    await asyncio.sleep(max(0.0, exp + 30 + 1.0 - time.time()))
    # The other tab, with a fresh token, writes after the expiry: the listener must be gone by then.
    other = await Client.open(sqlite_token_server, token=mint(user))
    await other.message("sent after the listener's expiry", client_id=cid())
    assert await listener.closed_code(timeout=5) == 1008
    assert await c.closed_code(timeout=5) == 1008
    assert http_status(sqlite_token_server, mint(user, exp=exp)) == 401
    assert await refusal(sqlite_token_server, mint(user, exp=exp)) in AUTH_REFUSALS
    await other.close()


# -- chat-server token -------------------------------------------------------------------------------------
@aio
async def test_cli_token_in_token_mode_is_accepted_as_that_user(sqlite_token_server):
    out = run_cli(sqlite_token_server, "token", "--user", "bob")
    assert out.returncode == 0, out.stderr
    token = out.stdout.strip().splitlines()[-1]
    claims = jwt.decode(token, SECRET, algorithms=["HS256"])
    assert claims["sub"] == "bob" and claims["exp"] > time.time() + 3600  # default lifetime: a day
    c = await Client.open(sqlite_token_server, token=token)
    try:
        assert c.user_id == "bob"
        await c.complete("bob was here")
    finally:
        await c.close()
    short = run_cli(sqlite_token_server, "token", "--user", "bob", "--ttl", "1h")
    assert short.returncode == 0, short.stderr
    exp = jwt.decode(short.stdout.strip().splitlines()[-1], SECRET, algorithms=["HS256"])["exp"]
    assert 3500 < exp - time.time() <= 3600


@aio
async def test_cli_token_in_open_mode_uses_the_secret_in_the_database(server):
    out = run_cli(server, "token", "--user", "bob")
    assert out.returncode == 0, out.stderr
    token = out.stdout.strip().splitlines()[-1]
    jwt.decode(token, await open_mode_secret(server), algorithms=["HS256"])
    c = await Client.open(server, token=token)
    try:
        assert c.user_id == "bob" and c.token  # open mode: every ready hands out a fresh token
        conv = (await c.complete("bob in open mode")).ack["conversation_id"]
        assert conv in [i["id"] for i in conversations(server, token)]
    finally:
        await c.close()


def test_open_mode_token_survives_a_restart(db, make_server):
    srv = make_server(db)  # outside the event loop: a PostgreSQL database is created synchronously

    async def before_restart() -> tuple[Client, str, str]:
        c = await Client.open(srv)
        t = await c.complete("before the restart")
        await c.close()
        return c, t.ack["conversation_id"], await open_mode_secret(srv)

    async def after_restart(c: Client, conv: str, secret: str) -> None:
        assert await open_mode_secret(srv) == secret
        again = await Client.open(srv, token=c.token)
        try:
            assert again.user_id == c.user_id and again.token  # the same user, with a fresh token
            h = await again.history(conv)
            assert [m["content"] for m in h["messages"]] == ["before the restart", "You said: before the restart"]
            t = await again.complete("after the restart", conversation_id=conv)
            assert t.ack["conversation_id"] == conv
        finally:
            await again.close()
        fresh = await Client.open(srv)
        await fresh.close()
        assert fresh.user_id != c.user_id and fresh.token and fresh.token != c.token

    c, conv, secret = asyncio.run(before_restart())
    srv.restart()
    asyncio.run(after_restart(c, conv, secret))


# -- Origin ----------------------------------------------------------------------------------------------
@aio
async def test_origin_own_absent_and_allow_listed_are_accepted(sqlite_token_server):
    for origin in [None, f"http://127.0.0.1:{sqlite_token_server.port}", *ALLOWED]:
        c = await Client.open(sqlite_token_server, token=mint("origin-ok"), origin=origin)
        try:
            assert c.user_id == "origin-ok", origin
        finally:
            await c.close()


@aio
async def test_foreign_and_look_alike_origins_are_refused(sqlite_token_server):
    port = sqlite_token_server.port
    other = free_port()
    origins = [
        "http://evil.example",
        "http://allowed.example.evil.com",
        "http://evil.com.allowed.example",
        "https://allowed.example",  # the allow-list holds http:// for it
        "https://app.example",  # allow-listed only with its port
        "http://app.example:8443",
        f"http://127.0.0.1:{other}",
        f"http://localhost:{port}",
        f"http://127.0.0.1:{port}.evil.com",
        f"http://127.0.0.1:{port}@evil.com",
        "null",
    ]
    before = await row_counts(sqlite_token_server)
    for origin in origins:
        how = await refusal(sqlite_token_server, mint("origin-probe"), origin=origin)
        assert how in AUTH_REFUSALS, (origin, how)
    assert await row_counts(sqlite_token_server) == before


def test_cors_answers_only_allowed_origins(sqlite_token_server):
    auth = {"Authorization": f"Bearer {mint('cors-user')}"}
    with httpx.Client(base_url=sqlite_token_server.base_url, timeout=20) as http:
        for origin in ALLOWED:
            r = http.get("/api/conversations", headers={**auth, "Origin": origin})
            assert r.status_code == 200 and r.headers.get("access-control-allow-origin") == origin, r.headers
            pre = http.options("/api/conversations/" + str(uuid.uuid4()), headers={
                "Origin": origin, "Access-Control-Request-Method": "DELETE",
                "Access-Control-Request-Headers": "authorization"})
            assert pre.status_code in (200, 204), pre.text
            assert pre.headers.get("access-control-allow-origin") == origin
            assert "DELETE" in pre.headers.get("access-control-allow-methods", "")
            assert "authorization" in pre.headers.get("access-control-allow-headers", "").lower()
        for origin in ["http://evil.example", "http://allowed.example.evil.com", "null"]:
            r = http.get("/api/conversations", headers={**auth, "Origin": origin})
            assert "access-control-allow-origin" not in r.headers, (origin, r.headers)
            pre = http.options("/api/conversations/" + str(uuid.uuid4()), headers={
                "Origin": origin, "Access-Control-Request-Method": "DELETE",
                "Access-Control-Request-Headers": "authorization"})
            assert "access-control-allow-origin" not in pre.headers, (origin, pre.headers)
            assert "access-control-allow-credentials" not in pre.headers


# -- cross-user isolation ------------------------------------------------------------------------------------
@aio
async def test_another_users_conversation_answers_like_an_unknown_one_everywhere(server):
    a = await Client.open(server)
    b = await Client.open(server)
    try:
        k_a = cid("a")
        first = await a.complete("alpha one", client_id=k_a)
        a_conv = first.ack["conversation_id"]
        await a.complete("alpha two")
        a_msg = first.ack["message_id"]
        b_conv = (await b.complete("beta one")).ack["conversation_id"]
        a_view = snapshot(server, a.token)
        unknown_conv, unknown_msg = str(uuid.uuid4()), str(uuid.uuid4())
        ids = {a_conv: "<conv>", unknown_conv: "<conv>", a_msg: "<msg>", unknown_msg: "<msg>"}

        def same_answer(foreign: Any, unknown: Any) -> None:
            assert normalised(foreign, ids) == normalised(unknown, ids), (foreign, unknown)

        # history frame, with and without `before`
        foreign = await b.history(a_conv)
        assert foreign["type"] == "error" and foreign["code"] == "not_found", foreign
        same_answer(foreign, await b.history(unknown_conv))
        foreign = await b.history(a_conv, before=a_msg, limit=1)
        assert foreign["type"] == "error" and foreign["code"] == "not_found", foreign
        same_answer(foreign, await b.history(unknown_conv, before=unknown_msg, limit=1))

        # continuing the conversation with a message
        k1, k2 = cid("b"), cid("b")
        ids.update({k1: "<cid>", k2: "<cid>"})
        foreign_turn = await b.turn("let me in", client_id=k1, conversation_id=a_conv)
        unknown_turn = await b.turn("let me in", client_id=k2, conversation_id=unknown_conv)
        assert foreign_turn.types() == ["error"] and foreign_turn.error["code"] == "not_found", foreign_turn.frames
        assert foreign_turn.error["client_id"] == k1
        same_answer(foreign_turn.frames, unknown_turn.frames)

        # `before` naming A's message, asked in B's own conversation
        wrong_before = await b.history(b_conv, before=a_msg)
        assert wrong_before["type"] == "error" and wrong_before["code"] == "invalid", wrong_before

        # the same client_id as A's: B's own new message, not A's duplicate
        mine = await b.complete("beta two", client_id=k_a, conversation_id=b_conv)
        assert mine.ack["duplicate"] is False and mine.ack["conversation_id"] == b_conv
        assert mine.ack["message_id"] != a_msg and mine.done["content"] == "You said: beta two"

        # HTTP: page, page with before, delete, list
        rest = Rest(server, b.token)
        try:
            for params in ({}, {"before": a_msg, "limit": 1}):
                foreign_r = rest.messages(a_conv, **params)
                unknown_r = rest.messages(unknown_conv, **{k: unknown_msg if k == "before" else v
                                                           for k, v in params.items()})
                assert foreign_r.status_code == unknown_r.status_code == 404, foreign_r.text
                same_answer(foreign_r.json(), unknown_r.json())
            assert rest.messages(b_conv, before=a_msg).status_code in (400, 422)
            foreign_d, unknown_d = rest.delete(a_conv), rest.delete(unknown_conv)
            assert foreign_d.status_code == unknown_d.status_code == 404
            same_answer(foreign_d.json(), unknown_d.json())
            assert [i["id"] for i in rest.conversations()] == [b_conv]
        finally:
            rest.http.close()

        # A's data is exactly as it was, and A can go on with it
        assert snapshot(server, a.token) == a_view
        assert (await a.complete("alpha three", conversation_id=a_conv)).ack["conversation_id"] == a_conv
    finally:
        await a.close()
        await b.close()


@aio
async def test_opening_a_socket_on_another_users_conversation_is_not_found(server):
    a = await Client.open(server)
    try:
        a_conv = (await a.complete("alpha only")).ack["conversation_id"]
    finally:
        await a.close()
    a_view = snapshot(server, a.token)
    b = await Client.open(server)
    await b.close()
    answers = []
    for conv in (a_conv, str(uuid.uuid4())):
        c = await Client.open(server, token=b.token, conversation_id=conv)
        try:
            assert c.ready["conversation_id"] is None and c.user_id == b.user_id
            err = await c.expect_error("not_found")
            answers.append((normalised(c.ready, {}), normalised(err, {})))
            # With no current conversation, a message starts one of B's own.
            t = await c.complete("beta here")
            assert t.ack["conversation_id"] not in (a_conv, conv)
        finally:
            await c.close()
    assert answers[0] == answers[1]
    assert snapshot(server, a.token) == a_view


@aio
async def test_delete_of_another_users_streaming_conversation_does_not_stop_it(slow_server):
    a = await Client.open(slow_server)
    b = await Client.open(slow_server)
    try:
        content = " ".join(f"word{i}" for i in range(30))
        await a.message(content)
        ack = await a.expect("ack")
        await a.expect("start")
        rest = Rest(slow_server, b.token)
        try:
            assert rest.delete(ack["conversation_id"]).status_code == 404
        finally:
            rest.http.close()
        t = await a.collect()
        assert t.done is not None and t.done["status"] == "complete", t.frames
        assert t.done["content"] == "You said: " + content
    finally:
        await a.close()
        await b.close()
