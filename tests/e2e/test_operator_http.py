"""What the HTTP side shows an outsider: /docs is off unless asked for, /metrics can be closed."""

from __future__ import annotations

import httpx

METRICS_TOKEN = "metrics-secret-" + "t" * 30


def get(server, path: str, token: str | None = None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.get(server.base_url + path, headers=headers, timeout=10).status_code


def test_by_default_no_docs_and_metrics_open(session_servers):
    server = session_servers("sqlite")
    assert get(server, "/docs") == 404 and get(server, "/openapi.json") == 404 and get(server, "/redoc") == 404
    assert get(server, "/metrics") == 200


def test_docs_on_request_and_metrics_behind_a_bearer_secret(session_servers):
    server = session_servers("sqlite", CHAT_API_DOCS="true", CHAT_METRICS_TOKEN=METRICS_TOKEN)
    assert get(server, "/docs") == 200 and get(server, "/openapi.json") == 200
    assert get(server, "/metrics") == 401
    assert get(server, "/metrics", "wrong-" + METRICS_TOKEN) == 401
    assert get(server, "/metrics", METRICS_TOKEN) == 200
    assert "chat_sockets_open" in httpx.get(server.base_url + "/metrics", timeout=10,
                                            headers={"Authorization": f"Bearer {METRICS_TOKEN}"}).text
    assert get(server, "/healthz") == 200 and get(server, "/readyz") == 200  # probes stay open
