"""The HTTP API beside the socket: auth, conversations, message pages, DELETE, health and metrics.

Every test runs on both databases against the shared servers; each socket opened without a token
is a fresh user, so that user's conversation list holds only what the test made.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
from datetime import datetime

import httpx
import jwt
import pytest
from support.client import Client, Rest, aio, cid, words

from server.client import ChatClient, Message


def b64url(obj: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


def bad_authorizations(token: str, other_user: str) -> dict[str, dict[str, str]]:
    """Authorization headers that must all get 401, built around a valid token of another user."""
    header, _, signature = token.split(".")
    return {
        "none": {},
        "empty bearer": {"Authorization": "Bearer"},
        "garbage": {"Authorization": "Bearer not-a-token"},
        "wrong key": {"Authorization": "Bearer " + jwt.encode({"sub": other_user}, "not the secret" * 4,
                                                               algorithm="HS256")},
        "alg none": {"Authorization": "Bearer " + b64url({"alg": "none", "typ": "JWT"}) + "."
                     + b64url({"sub": other_user}) + "."},
        "sub swapped under the old signature": {
            "Authorization": f"Bearer {header}.{b64url({'sub': other_user})}.{signature}"},
        "truncated signature": {"Authorization": "Bearer " + token[:-4]},
        "wrong scheme": {"Authorization": f"Basic {token}"},
        "no scheme": {"Authorization": token},
    }


def http(server, headers: dict[str, str] | None = None) -> httpx.Client:
    return httpx.Client(base_url=server.base_url, headers=headers or {}, timeout=20)


def ts(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


# -- 401 ------------------------------------------------------------------------------------------------
@aio
async def test_every_api_endpoint_needs_a_valid_bearer_token(server):
    owner = await Client.open(server)
    other = await Client.open(server)
    try:
        t = await owner.complete("secret stuff")
        conv = t.ack["conversation_id"]
        calls = [("GET", "/api/conversations"), ("GET", f"/api/conversations/{conv}/messages"),
                 ("GET", f"/api/conversations/{conv}/messages?limit=1"),
                 ("GET", "/api/conversations/no-such-conversation/messages"),
                 ("DELETE", f"/api/conversations/{conv}"), ("DELETE", "/api/conversations/no-such-conversation")]
        for name, headers in bad_authorizations(other.token, owner.user_id).items():
            with http(server, headers) as client:
                for method, path in calls:
                    r = client.request(method, path)
                    assert r.status_code == 401, (name, method, path, r.status_code, r.text)
                    assert "secret stuff" not in r.text
        # None of that deleted or changed anything: the owner still sees the whole turn.
        rest = Rest(server, owner.token)
        assert [i["id"] for i in rest.conversations()] == [conv]
        assert [m["content"] for m in rest.all_messages(conv)] == ["secret stuff", "You said: secret stuff"]
    finally:
        await owner.close()
        await other.close()


# -- listing conversations --------------------------------------------------------------------------------
@aio
async def test_conversations_are_listed_newest_updated_first_with_title_of_first_message(server):
    async with ChatClient(server.ws_url) as chat:
        rest = Rest(server, chat.token)
        assert rest.conversations() == []
        a = (await chat.send("alpha is first", conversation_id=None)).conversation_id
        b = (await chat.send("beta comes second", conversation_id=None)).conversation_id
        listed = rest.conversations()
        assert [(i["id"], i["title"]) for i in listed] == [(b, "beta comes second"), (a, "alpha is first")]
        for item in listed:
            assert set(item) >= {"id", "title", "created_at", "updated_at"}
            assert ts(item["updated_at"]) >= ts(item["created_at"])
        created_before = {i["id"]: i["created_at"] for i in listed}

        await chat.send("alpha again", conversation_id=a)
        flipped = rest.conversations()
        assert [(i["id"], i["title"]) for i in flipped] == [(a, "alpha is first"), (b, "beta comes second")]
        assert ts(flipped[0]["updated_at"]) > ts(flipped[1]["updated_at"])
        assert {i["id"]: i["created_at"] for i in flipped} == created_before

        # A message on the current conversation (no conversation_id) moves that one up.
        await chat.send("beta again", conversation_id=b)
        await chat.send("and once more")
        assert [i["id"] for i in rest.conversations()] == [b, a]


@aio
async def test_conversation_list_shows_only_the_callers_conversations(server):
    async with ChatClient(server.ws_url) as mine, ChatClient(server.ws_url) as theirs:
        m = (await mine.send("my own")).conversation_id
        await theirs.send("someone else's")
        assert [i["id"] for i in Rest(server, mine.token).conversations()] == [m]


# -- message pages ----------------------------------------------------------------------------------------
async def three_turns(chat: ChatClient) -> tuple[str, list[str], list[str]]:
    """A conversation of 3 turns (6 messages): its id, the user contents, and their client_ids."""
    contents = ["first question", "second question", "third question"]
    keys = [cid() for _ in contents]
    chat.new_conversation()
    for content, k in zip(contents, keys, strict=True):
        await chat.send(content, client_id=k)
    assert chat.conversation_id is not None
    return chat.conversation_id, contents, keys


@aio
async def test_messages_hold_every_field_in_order(server):
    async with ChatClient(server.ws_url) as chat:
        conv, contents, keys = await three_turns(chat)
        r = Rest(server, chat.token).messages(conv)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["has_more"] is False and body.get("conversation_id", conv) == conv
        full = body["messages"]
        assert [(m["role"], m["content"], m["status"], m["client_id"]) for m in full] == [
            row for content, k in zip(contents, keys, strict=True)
            for row in (("user", content, "complete", k), ("assistant", f"You said: {content}", "complete", None))]
        assert len({m["id"] for m in full}) == 6
        for user, assistant in zip(full[::2], full[1::2], strict=True):
            assert assistant["reply_to"] == user["id"]
        stamps = [ts(m["created_at"]) for m in full]
        assert stamps == sorted(stamps)
        # The same as the socket's history frame.
        page = await chat.history_page(conv)
        assert page.messages == [Message.from_wire(m) for m in full] and page.has_more is False


@aio
async def test_messages_page_backwards_with_before_and_limit(server):
    async with ChatClient(server.ws_url) as chat:
        conv, _, _ = await three_turns(chat)
        rest = Rest(server, chat.token)
        full = rest.all_messages(conv)
        assert len(full) == 6

        pages, before = [], None
        while True:
            r = rest.messages(conv, limit=2, **({"before": before} if before else {}))
            assert r.status_code == 200, r.text
            page = r.json()
            assert len(page["messages"]) == 2
            pages.append(page)
            if not page["has_more"]:
                break
            before = page["messages"][0]["id"]
            assert len(pages) < 4, pages
        assert [p["has_more"] for p in pages] == [True, True, False]
        assert [m for p in reversed(pages) for m in p["messages"]] == full

        def page(**params):  # type: ignore[no-untyped-def]
            r = rest.messages(conv, **params)
            assert r.status_code == 200, r.text
            return r.json()["messages"], r.json()["has_more"]

        assert page(limit=6) == (full, False)
        assert page(limit=5) == (full[1:], True)
        assert page(limit=1) == (full[5:], True)
        assert page(before=full[3]["id"]) == (full[:3], False)
        assert page(before=full[3]["id"], limit=3) == (full[:3], False)
        assert page(before=full[3]["id"], limit=2) == (full[1:3], True)
        assert page(before=full[0]["id"]) == ([], False)
        assert page(limit=200) == (full, False)


@pytest.mark.parametrize("limit", ["0", "-1", "201", "x", "", "1.5", "true"])
@aio
async def test_bad_limit_is_400_or_422(server, limit):
    c = await Client.open(server)
    try:
        conv = (await c.complete("some text")).ack["conversation_id"]
        r = Rest(server, c.token).messages(conv, limit=limit)
        assert r.status_code in (400, 422), (limit, r.status_code, r.text)
    finally:
        await c.close()


@aio
async def test_before_that_is_not_a_message_of_the_conversation_is_400_or_422(server):
    c, owner = await Client.open(server), await Client.open(server)
    try:
        a = await c.complete("in a", conversation_id=None)
        b = await c.complete("in b", conversation_id=None)
        foreign = await owner.complete("elsewhere")
        rest = Rest(server, c.token)
        conv = a.ack["conversation_id"]
        for before in (b.ack["message_id"], b.done["message_id"], foreign.ack["message_id"], "no-such-message"):
            r = rest.messages(conv, before=before)
            assert r.status_code in (400, 422), (before, r.status_code, r.text)
        assert rest.messages(conv, before=a.done["message_id"]).status_code == 200
    finally:
        await c.close()
        await owner.close()


@aio
async def test_ids_holding_a_nul_are_404_and_400_not_a_database_error(server):
    # %00 decodes to a NUL, which neither database can hold or look up (PostgreSQL refuses it).
    c = await Client.open(server)
    try:
        conv = (await c.complete("kept")).ack["conversation_id"]
        rest = Rest(server, c.token)
        assert rest.http.get("/api/conversations/a%00b/messages").status_code == 404
        assert rest.http.delete("/api/conversations/a%00b").status_code == 404
        r = rest.http.get(f"/api/conversations/{conv}/messages?before=a%00b")
        assert r.status_code == 400, r.text
        assert [m["content"] for m in rest.all_messages(conv)] == ["kept", "You said: kept"]
    finally:
        await c.close()


# -- someone else's conversation ---------------------------------------------------------------------------
@aio
async def test_someone_elses_conversation_is_404_like_an_unknown_one(server):
    owner, other = await Client.open(server), await Client.open(server)
    try:
        conv = (await owner.complete("private")).ack["conversation_id"]
        rest = Rest(server, other.token)
        for call in (lambda cv: rest.messages(cv), lambda cv: rest.messages(cv, limit=1), rest.delete):
            theirs, unknown = call(conv), call("no-such-conversation")
            assert theirs.status_code == unknown.status_code == 404, (theirs.text, unknown.text)
            assert theirs.json() == unknown.json()
            assert "private" not in theirs.text
        owner_rest = Rest(server, owner.token)
        assert [i["id"] for i in owner_rest.conversations()] == [conv]
        assert [m["content"] for m in owner_rest.all_messages(conv)] == ["private", "You said: private"]
    finally:
        await owner.close()
        await other.close()


# -- DELETE ------------------------------------------------------------------------------------------------
@aio
async def test_delete_removes_the_conversation_everywhere(server):
    c = await Client.open(server)
    try:
        kept = (await c.complete("keep me", conversation_id=None)).ack["conversation_id"]
        gone = (await c.complete("delete me", conversation_id=None)).ack["conversation_id"]
        rest = Rest(server, c.token)
        r = rest.delete(gone)
        assert r.status_code == 204 and r.content == b""
        assert rest.delete(gone).status_code == 404
        assert rest.messages(gone).status_code == 404
        assert [i["id"] for i in rest.conversations()] == [kept]
        h = await c.history(gone)
        assert h["type"] == "error" and h["code"] == "not_found", h
        await c.message("back to it", conversation_id=gone)
        await c.expect_error("not_found")
        assert [m["content"] for m in rest.all_messages(kept)] == ["keep me", "You said: keep me"]
        # The socket's current conversation was the deleted one: the next message starts a new one.
        fresh = (await c.complete("after the delete")).ack["conversation_id"]
        assert fresh not in (kept, gone)
        assert [i["id"] for i in rest.conversations()] == [fresh, kept]
    finally:
        await c.close()


@aio
async def test_delete_while_a_reply_streams_stops_it_and_the_socket_goes_on(slow_server):
    c = await Client.open(slow_server)
    try:
        long_message = words(80)
        await c.message(long_message, client_id=cid())
        started = await c.collect(stop_after_deltas=3)
        assert started.ack is not None and started.start is not None, started.frames
        conv, reply_id = started.ack["conversation_id"], started.start["message_id"]
        rest = Rest(slow_server, c.token)
        assert (await asyncio.to_thread(rest.delete, conv)).status_code == 204

        deltas = len(started.deltas)
        while True:
            frame = await c.recv(timeout=30)
            assert frame["type"] != "done", frame  # the stopped reply must not be reported as a reply
            if frame["type"] == "delta":
                assert frame["message_id"] == reply_id
                deltas += 1
                continue
            assert frame["type"] == "error" and frame["code"] == "not_found", frame
            break
        assert deltas < len(long_message.split()) + 2  # it stopped before the end of the echo

        t = await c.complete("a new start")
        assert t.ack["conversation_id"] != conv
        assert [i["id"] for i in rest.conversations()] == [t.ack["conversation_id"]]
        assert [m["content"] for m in rest.all_messages(t.ack["conversation_id"])] == [
            "a new start", "You said: a new start"]
        assert rest.messages(conv).status_code == 404
    finally:
        await c.close()


# -- health, metrics, page ----------------------------------------------------------------------------------
def test_healthz_and_readyz_answer_200_with_the_database_up(server):
    with http(server) as client:
        assert client.get("/healthz").status_code == 200
        r = client.get("/readyz")
        assert r.status_code == 200, r.text


METRIC_NAMES = ["chat_sockets_open", "chat_turns_total", "chat_db_commits_total", "chat_db_commit_seconds",
                "chat_time_to_first_delta_seconds"]


@aio
async def test_metrics_are_prometheus_text_and_count_commits(server):
    with http(server) as client:
        r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain"), r.headers
    for name in METRIC_NAMES:
        # A counter's TYPE line names it with or without _total, depending on the client library version.
        assert re.search(rf"^# TYPE {name.removesuffix('_total')}(_total)? \w+$", r.text, re.MULTILINE), name
    assert "chat_db_commit_seconds_bucket{" in r.text and "chat_time_to_first_delta_seconds_count" in r.text

    with pytest.raises(AssertionError, match="no chat_turns_totally_renamed"):
        server.metric("chat_turns_totally_renamed")  # a renamed metric fails an `== 0`, never passes it
    commits = server.metric("chat_db_commits_total")
    complete = server.metric("chat_turns_total", 'status="complete"')
    first_deltas = server.metric("chat_time_to_first_delta_seconds_count")
    commit_timings = server.metric("chat_db_commit_seconds_count")
    c = await Client.open(server)
    try:
        assert server.metric("chat_sockets_open") >= 1
        await c.complete("count me")
    finally:
        await c.close()
    assert server.metric("chat_db_commits_total") >= commits + 2  # the user's message, then the reply
    assert server.metric("chat_db_commit_seconds_count") >= commit_timings + 2
    assert server.metric("chat_turns_total", 'status="complete"') >= complete + 1
    assert server.metric("chat_time_to_first_delta_seconds_count") >= first_deltas + 1


def test_root_serves_the_chat_page(server):
    with http(server) as client:
        r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html"), r.headers
    assert r.text.strip()
