"""What clients are told names no internal address, SQL, file path or credentials (docs/protocol.md,
"Limits and close codes"); the operator finds the detail in the log. And the chat page's headers.
"""

from __future__ import annotations

import httpx
from support.client import Client, aio
from support.servers import drop_pg_database, free_port

SECRET = "hunter2-not-for-clients"


@aio
async def test_an_unreachable_backend_is_named_to_the_client_without_its_address_or_credentials(make_server):
    port = free_port()
    server = make_server("sqlite", CHAT_LLM="openai", OPENAI_BASE_URL=f"http://alice:{SECRET}@127.0.0.1:{port}/v1",
                         OPENAI_API_KEY="sk-test", CHAT_LLM_RETRIES=0, CHAT_LLM_FIRST_TOKEN_TIMEOUT_S=2)
    c = await Client.open(server)
    t = await c.turn("anyone?", timeout=30)
    await c.close()
    assert t.done is not None and t.done["status"] == "error", t.frames
    detail = t.done["error"]
    assert "unreachable" in detail
    for leak in ("127.0.0.1", str(port), SECRET, "alice", "http://"):
        assert leak not in detail, detail
    log = server.log_text()
    assert f"127.0.0.1:{port}" in log and SECRET not in log  # the operator sees where, not the password


def test_readyz_on_a_failing_database_answers_a_fixed_text(make_server):
    server = make_server("postgres")
    name = server.db_url.rsplit("/", 1)[1]
    drop_pg_database(name)  # the server's connections are cut and the database is gone
    r = httpx.get(server.base_url + "/readyz", timeout=20)
    assert r.status_code == 503
    assert r.json()["database"] == "unavailable", r.text
    for leak in (name, "SELECT", "asyncpg", "127.0.0.1", "5432", "Traceback", ".py"):
        assert leak not in r.text, r.text


def test_the_chat_page_has_a_content_security_policy_and_nosniff(make_server):
    server = make_server("sqlite", CHAT_ALLOWED_ORIGINS="https://embed.example")
    r = httpx.get(server.base_url + "/", timeout=10)
    assert r.status_code == 200
    csp = r.headers["content-security-policy"]
    assert "frame-ancestors 'self' https://embed.example" in csp, csp
    assert "script-src 'self'" in csp and "'unsafe-inline'" not in csp.split("script-src", 1)[1].split(";")[0]
    assert r.headers["x-content-type-options"] == "nosniff"
