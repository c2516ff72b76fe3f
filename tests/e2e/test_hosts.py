"""DNS rebinding: a page on a name the attacker controls, rebound to the server's address, sends
an Origin that agrees with its Host, so the Origin check passes; the Host check refuses it
(CHAT_ALLOWED_HOSTS; local names by default when the server is bound to loopback)."""

from __future__ import annotations

import httpx
from support.raw_ws import RawWebSocket


def get(server, path: str, host: str) -> int:  # type: ignore[no-untyped-def]
    return httpx.get(server.base_url + path, headers={"Host": host}, timeout=10).status_code


def ws_status(server, host: str) -> int:  # type: ignore[no-untyped-def]
    ws = RawWebSocket(server.port, host=host, headers={"Origin": f"http://{host}"})
    ws.close()
    return ws.status


def test_bound_to_loopback_only_local_names_are_served(make_server):
    server = make_server("sqlite")
    port = server.port
    rebound = f"attacker.example:{port}"
    assert get(server, "/", rebound) == 400
    assert get(server, "/api/conversations", rebound) == 400
    assert ws_status(server, rebound) == 403
    for local in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}"):
        assert get(server, "/", local) == 200
        assert ws_status(server, local) == 101
    assert get(server, "/healthz", rebound) == 200  # probes may use any name


def test_chat_allowed_hosts_lists_the_public_names(make_server):
    server = make_server("sqlite", CHAT_ALLOWED_HOSTS="chat.example, *.chat.example")
    assert ws_status(server, "chat.example") == 101
    assert ws_status(server, f"eu.chat.example:{server.port}") == 101
    assert ws_status(server, "evilchat.example") == 403
    assert ws_status(server, f"127.0.0.1:{server.port}") == 403
    assert get(server, "/", "chat.example") == 200
