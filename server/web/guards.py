"""Limits per client address and on the HTTP API: new open-mode users per address, and HTTP
requests per user and per address. The buckets are in server/chat/limits.py; this module knows
where the address comes from and how a refusal looks (HTTP 429 with Retry-After).

The client address is scope["client"]: uvicorn replaces the peer's address with the one in
X-Forwarded-For when the peer is a trusted proxy (CHAT_TRUSTED_PROXIES).
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Mapping
from typing import Any

from server.chat.limits import KeyedBuckets
from server.config import Settings


class TooMany(Exception):
    def __init__(self, what: str, wait_s: float):
        super().__init__(what)
        self.what = what
        self.retry_after = max(1, math.ceil(wait_s))

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


def client_address(scope: Mapping[str, Any]) -> str:
    """The key of the per-address limits: an IPv4 address, or an IPv6 address's /64 (one host
    usually has a whole /64, so counting single IPv6 addresses would limit nothing)."""
    client = scope.get("client")
    if not client:
        return "unknown"
    try:
        ip = ipaddress.ip_address(client[0])
    except ValueError:
        return str(client[0])
    if ip.version == 6 and ip.ipv4_mapped is None:
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip.ipv4_mapped or ip) if ip.version == 6 else str(ip)


LOCAL_HOSTS = ["localhost", "127.0.0.1", "::1"]


def host_name(host: str | None) -> str | None:
    """The name in a Host header, without its port; "[::1]:8000" -> "::1"."""
    if not host:
        return None
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def host_allowed(host: str | None, allowed: list[str]) -> bool:
    if not allowed:
        return True
    name = host_name(host)
    if name is None:
        return False
    return any(name == a or (a.startswith("*.") and name.endswith(a[1:])) for a in allowed)


class Guards:
    def __init__(self, settings: Settings, bound_to_loopback: bool = False):
        self.allowed_hosts = settings.allowed_hosts or (LOCAL_HOSTS if bound_to_loopback else [])
        self.new_users = KeyedBuckets(settings.open_mode_users_per_minute)
        self.http_users = KeyedBuckets(settings.http_requests_per_minute)
        self.http_addresses = KeyedBuckets(settings.http_requests_per_minute_per_address)

    def host_allowed(self, scope: Mapping[str, Any]) -> bool:
        """DNS rebinding: only the Host tells a rebound name from ours (CHAT_ALLOWED_HOSTS)."""
        if not self.allowed_hosts or scope.get("path") == "/healthz":  # probes may use any address
            return True
        host = next((v.decode("latin-1") for k, v in scope.get("headers", []) if k == b"host"), None)
        return host_allowed(host, self.allowed_hosts)

    def new_user(self, scope: Mapping[str, Any]) -> None:
        """Count a token-less handshake in open mode; TooMany past the address's rate."""
        wait = self.new_users.take(client_address(scope))
        if wait:
            raise TooMany("too many new users from this address; wait, or come back with your token", wait)

    def http_request(self, scope: Mapping[str, Any]) -> None:
        wait = self.http_addresses.take(client_address(scope))
        if wait:
            raise TooMany("too many requests from this address; wait, then try again", wait)

    def http_user(self, user_id: str) -> None:
        wait = self.http_users.take(user_id)
        if wait:
            raise TooMany("too many requests for this user; wait, then try again", wait)
