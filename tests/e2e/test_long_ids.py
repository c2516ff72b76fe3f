"""An id longer than its column (36 characters) is an unknown id like any other: not_found (404
over HTTP), answered before any query. On PostgreSQL it used to reach the query, which failed
with a traceback per frame, answered `unavailable` and counted as a commit failure."""

from __future__ import annotations

from support.client import Client, Rest, aio, cid

LONG = "c" * 37


@aio
async def test_a_too_long_conversation_id_is_not_found_everywhere(server):
    failures = server.metric("chat_db_commit_failures_total")
    c = await Client.open(server)
    try:
        await c.message("hello", cid("long"), conversation_id=LONG)
        error = await c.expect_error("not_found")
        assert error.get("client_id", "").startswith("long")
        assert (await c.history(LONG))["code"] == "not_found"
        first = await c.complete("a real one")
        history = await c.history(first.ack["conversation_id"], before="m" * 37)
        assert history["type"] == "error" and history["code"] == "invalid", history
        rest = Rest(server, c.token)
        assert rest.messages(LONG).status_code == 404
        assert rest.delete(LONG).status_code == 404
        rest.http.close()
        await c.complete("the socket is fine")
    finally:
        await c.close()
    assert server.metric("chat_db_commit_failures_total") == failures
    assert "StringDataRightTruncation" not in server.log_text() and "value too long" not in server.log_text()


@aio
async def test_a_resend_naming_a_too_long_conversation_is_still_a_duplicate(server):
    failures = server.metric("chat_db_commit_failures_total")
    c = await Client.open(server)
    try:
        k = cid()
        first = await c.complete("the original", client_id=k)
        t = await c.turn("other words", client_id=k, conversation_id=LONG)
        assert t.ack["duplicate"] is True and t.ack["conversation_id"] == first.ack["conversation_id"]
        assert t.done == first.done
    finally:
        await c.close()
    assert server.metric("chat_db_commit_failures_total") == failures


@aio
async def test_a_too_long_conversation_id_in_the_url_is_not_found(server):
    c = await Client.open(server, conversation_id=LONG)
    try:
        assert c.ready["conversation_id"] is None
        await c.expect_error("not_found")
    finally:
        await c.close()
