"""The shipped nginx site (deploy/nginx/chat-server.conf) in front of two chat-server processes on
one PostgreSQL database: Debian's nginx runs as a child process, with the site file copied as it
is except for its listen address and upstream ports.

Without nginx these tests skip with the reason, except when CHAT_TEST_REQUIRE_NGINX=1 (CI sets
it): then they fail.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from support.client import Client, Refused, Rest, aio, cid, poll, words
from support.servers import ServerProcess, free_port

pytestmark = [pytest.mark.postgres]

SITE = Path(__file__).resolve().parents[2] / "deploy" / "nginx" / "chat-server.conf"
NGINX = os.environ.get("CHAT_TEST_NGINX", "/usr/sbin/nginx")
ECHO_DELAY_MS = 40
NEW_USERS_PER_MINUTE = 3  # per address, per process


def _require_nginx() -> None:
    reason = None
    if not Path(NGINX).exists():
        reason = f"no nginx at {NGINX} (apt-get install nginx)"
    elif not os.access(NGINX, os.X_OK):
        reason = f"{NGINX} is not executable"
    if reason is not None:
        if os.environ.get("CHAT_TEST_REQUIRE_NGINX") == "1":
            pytest.fail(reason + " (CHAT_TEST_REQUIRE_NGINX=1)", pytrace=False)
        pytest.skip(reason)


def render_site(site: str, listen_port: int, upstream_ports: list[int]) -> str:
    """The shipped site with the test's listen address and upstream ports; nothing else changes."""
    upstream = re.search(r"upstream chat_servers \{(.*?)\n\}", site, re.S)
    assert upstream is not None, "the site has an `upstream chat_servers` block"
    servers = re.findall(r"^ {4}server 127\.0\.0\.1:\d+;.*\n", upstream.group(1), re.M)
    assert len(servers) >= 2, "the upstream lists several processes"
    body = re.sub(r"^ {4}server 127\.0\.0\.1:\d+;.*\n", "", upstream.group(1), flags=re.M)
    ours = "".join(f"    server 127.0.0.1:{port};\n" for port in upstream_ports)
    site = site[:upstream.start(1)] + "\n" + ours + body.lstrip("\n") + site[upstream.end(1):]
    listens = re.findall(r"^ {4}listen [^;]*;", site, re.M)
    assert listens == ["    listen 80;"], listens
    return site.replace("    listen 80;", f"    listen 127.0.0.1:{listen_port};")


@dataclass
class Nginx:
    port: int
    prefix: Path
    proc: subprocess.Popen[bytes]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def access_log(self) -> list[list[str]]:
        """One row a finished request: method, path, status, upstream address."""
        path = self.prefix / "logs" / "access.log"
        return [line.split() for line in path.read_text().splitlines()] if path.exists() else []

    def error_log(self) -> str:
        path = self.prefix / "logs" / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # nginx's fast shutdown
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def start_nginx(upstream_ports: list[int]) -> Nginx:
    prefix = Path(tempfile.mkdtemp(prefix="chat-nginx-"))
    prefix.chmod(0o755)  # run as root, nginx's workers run as nobody and must reach the temp dirs
    for d in ("logs", "tmp"):
        (prefix / d).mkdir(mode=0o755)
    port = free_port()
    (prefix / "chat-server.conf").write_text(render_site(SITE.read_text(), port, upstream_ports))
    # The main file, as /etc/nginx/nginx.conf would be, with every path under the prefix.
    (prefix / "nginx.conf").write_text(f"""
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log warn;
events {{ worker_connections 512; }}
http {{
    log_format upstreams '$request_method $uri $status $upstream_addr';
    access_log {prefix}/logs/access.log upstreams;
    client_body_temp_path {prefix}/tmp/body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
    include {prefix}/chat-server.conf;
}}
""")
    args = [NGINX, "-p", str(prefix), "-e", str(prefix / "logs" / "error.log"), "-c", str(prefix / "nginx.conf")]
    check = subprocess.run([*args, "-t"], capture_output=True, text=True, timeout=20)
    assert check.returncode == 0, f"nginx -t refused the shipped site:\n{check.stderr}"
    with open(prefix / "logs" / "stderr.log", "wb") as stderr:  # the child keeps its own copy
        proc = subprocess.Popen([*args, "-g", "daemon off;"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=stderr)
    nginx = Nginx(port, prefix, proc)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"nginx exited with {proc.returncode}:\n{nginx.error_log()}")
        try:
            if httpx.get(nginx.base_url + "/healthz", timeout=1).status_code == 200:
                return nginx
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    nginx.stop()
    raise RuntimeError(f"nginx did not answer within 15 s:\n{nginx.error_log()}")


@dataclass
class Stack:
    nginx: Nginx
    servers: tuple[ServerProcess, ServerProcess]
    token: str  # one user for every test: token-less handshakes count against the address limit

    def sockets_open(self) -> tuple[float, float]:
        a, b = (s.metric("chat_sockets_open") for s in self.servers)
        return a, b

    def index_of(self, upstream: str) -> int:
        return [f"127.0.0.1:{s.port}" for s in self.servers].index(upstream)


@pytest.fixture(scope="module")
def stack(databases, tmp_root: Path) -> Iterator[Stack]:
    _require_nginx()
    url = databases.url("postgres")  # skips (or fails under CHAT_TEST_REQUIRE_PG=1) without PostgreSQL
    env = {"CHAT_TRUSTED_PROXIES": "127.0.0.1", "CHAT_ECHO_DELAY_MS": str(ECHO_DELAY_MS),
           "CHAT_OPEN_MODE_USERS_PER_MINUTE": str(NEW_USERS_PER_MINUTE)}
    servers = [ServerProcess(url, env, Path(tempfile.mkdtemp(prefix=f"srv-{n}-", dir=tmp_root))) for n in "ab"]
    nginx = None
    try:
        for s in servers:
            s.start()
        nginx = start_nginx([s.port for s in servers])

        async def first_user() -> str:
            c = await Client.open(nginx)
            await c.close()
            return c.token

        yield Stack(nginx, (servers[0], servers[1]), asyncio.run(first_user()))
    finally:
        if nginx is not None:
            nginx.stop()
            shutil.rmtree(nginx.prefix, ignore_errors=True)
        for s in servers:
            s.kill()


@pytest.fixture(autouse=True)
def quiet(stack: Stack, request: pytest.FixtureRequest) -> Iterator[None]:
    """Each test starts with no socket open (the gauges tell where a new socket landed), and
    prints the logs when it fails."""
    settled = asyncio.run(poll(stack.sockets_open, lambda s: s == (0, 0), timeout=10))
    assert settled == (0, 0), settled
    yield
    if getattr(request.node, "rep_call_failed", False):
        for name, s in zip("ab", stack.servers, strict=True):
            print(f"--- log of process {name} ({s.port}) ---\n{s.log_tail(40)}")
        print(f"--- nginx error log ---\n{stack.nginx.error_log()[-4000:]}")


async def settle(stack: Stack, expected: tuple[float, float] = (0, 0)) -> None:
    """Wait until the processes count `expected` open sockets (a close reaches them a moment later)."""
    counts = await poll(stack.sockets_open, lambda s: s == expected, timeout=10)
    assert counts == expected, counts


def get(nginx: Nginx, path: str, **kw) -> httpx.Response:  # type: ignore[no-untyped-def]
    return httpx.get(nginx.base_url + path, timeout=10, **kw)


def after_next_request(nginx: Nginx, rows_before: int) -> list[str]:
    """The access log row of the request that just finished (nginx writes it after answering)."""
    deadline = time.monotonic() + 5
    while len(rows := nginx.access_log()) <= rows_before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(rows) == rows_before + 1, rows[rows_before:]
    return rows[-1]


async def open_landing(stack: Stack, **kw) -> tuple[Client, int]:  # type: ignore[no-untyped-def]
    """A socket through nginx, and the process it landed on (0 or 1), told by /metrics."""
    before = stack.sockets_open()
    c = await Client.open(stack.nginx, token=kw.pop("token", stack.token), **kw)
    after = await poll(stack.sockets_open, lambda s: sum(s) == sum(before) + 1, timeout=5)
    grew = [round(x - y) for x, y in zip(after, before, strict=True)]
    assert sorted(grew) == [0, 1], (before, after)
    return c, grew.index(1)


async def open_on(stack: Stack, index: int, **kw) -> tuple[Client, list[Client]]:  # type: ignore[no-untyped-def]
    """A socket through nginx that landed on process `index`; with the ones that landed elsewhere
    first (at most one, since nginx alternates), to be closed by the caller."""
    others: list[Client] = []
    for _ in range(3):
        c, where = await open_landing(stack, **kw)
        if where == index:
            return c, others
        others.append(c)
    await close_all(*others)
    raise AssertionError("three sockets in a row landed on the same process: not round-robin")


async def close_all(*clients: Client) -> None:
    for c in clients:
        await c.close()


# -- a turn ---------------------------------------------------------------------------------------
@aio
async def test_a_turn_through_nginx_completes_and_the_api_answers_through_it(stack):
    origin = stack.nginx.base_url  # a browser on the page nginx serves: Origin must match the Host passed on
    c = await Client.open(stack.nginx, token=stack.token, origin=origin)
    try:
        t = await c.complete("hello through nginx", conversation_id=None)
        assert t.done["content"] == t.text == "You said: hello through nginx"
        conv = t.ack["conversation_id"]
        stored = Rest(stack.nginx, stack.token).all_messages(conv)
        assert [(m["role"], m["content"]) for m in stored] == [("user", "hello through nginx"),
                                                               ("assistant", "You said: hello through nginx")]
    finally:
        await c.close()
    # The client's Host reaches the server (nginx's own upstream name would be refused too).
    assert get(stack.nginx, "/api/conversations", headers={"Host": "rebound.example"}).status_code == 400
    assert get(stack.nginx, "/readyz").json()["ready"] is True
    assert get(stack.nginx, "/metrics").status_code == 403  # per process, not through the balancer


# -- round-robin, and a resume on the other process ---------------------------------------------------
@aio
async def test_sockets_alternate_between_processes_and_a_cut_reply_resumes_whole_on_the_other(stack):
    landed = []
    clients = []
    for _ in range(4):
        c, where = await open_landing(stack)
        clients.append(c)
        landed.append(where)
    await close_all(*clients)
    await settle(stack)
    assert landed in ([0, 1, 0, 1], [1, 0, 1, 0]), landed

    c, where = await open_landing(stack)
    others: list[Client] = []
    back = None
    try:
        t = await c.complete("start", conversation_id=None)
        conv = t.ack["conversation_id"]
        content = words(50, "r")
        await c.message(content, client_id=cid(), conversation_id=conv)
        t = await c.collect(stop_after_deltas=3)
        reply_id = t.start["message_id"]
        had = t.deltas[-1]["seq"]
        c.ws.transport.abort()  # the connection is cut mid-reply: no close frame
        await settle(stack)  # nginx closed its upstream socket: the reply goes on, detached

        back, others = await open_on(stack, 1 - where)
        assert [x["message_id"] for x in back.ready["replies_in_flight"]] == [reply_id], back.ready
        await back.send({"type": "resume", "message_id": reply_id, "after": had})
        r = await back.collect(timeout=20)
        assert r.start["message_id"] == reply_id and r.done["status"] == "complete", r.frames
        assert r.deltas, "the reply was still streaming when it was resumed"
        assert [d["seq"] for d in r.deltas] == list(range(had + 1, had + 1 + len(r.deltas)))
        assert t.text + r.text == r.done["content"], "the pieces before the cut and after the resume make the whole"
        assert r.done["content"] == "You said: " + content
    finally:
        await close_all(*others, *([back] if back else []))


# -- ?sync=1 across processes ------------------------------------------------------------------------
@aio
async def test_a_sync_tab_on_one_process_sees_a_message_sent_through_the_other(stack):
    tab, where = await open_landing(stack, sync=True)
    sender, others = await open_on(stack, 1 - where)
    try:
        await sender.message("from the other tab " + words(6), client_id=cid(), conversation_id=None)
        t = await sender.collect()
        added = await tab.expect("message_added")
        assert added["message"]["id"] == t.ack["message_id"]
        assert added["conversation_id"] == t.ack["conversation_id"]
        r = await tab.collect()
        assert r.start["message_id"] == t.start["message_id"] and r.done["status"] == "complete"
        assert r.text == r.done["content"] == t.done["content"]
    finally:
        await close_all(tab, sender, *others)


# -- DELETE across processes ---------------------------------------------------------------------------
@aio
async def test_a_delete_through_nginx_stops_the_reply_streaming_on_the_other_process(stack):
    c, where = await open_landing(stack)
    other = f"127.0.0.1:{stack.servers[1 - where].port}"
    try:
        t = await c.complete("start", conversation_id=None)
        conv = t.ack["conversation_id"]
        await c.message(words(200), client_id=cid(), conversation_id=conv)  # 8 s of reply
        t = await c.collect(stop_after_deltas=2)
        # nginx alternates: steer the DELETE to the process that does not generate the reply.
        for _ in range(2):
            rows = len(stack.nginx.access_log())
            get(stack.nginx, "/healthz")
            if after_next_request(stack.nginx, rows)[3] != other:
                break
        rows = len(stack.nginx.access_log())
        sent = time.monotonic()
        assert Rest(stack.nginx, stack.token).delete(conv).status_code == 204
        assert after_next_request(stack.nginx, rows) == ["DELETE", f"/api/conversations/{conv}", "204", other]
        ended = await c.collect(timeout=10)
        assert ended.done is None and ended.frames[-1]["type"] == "error", ended.frames
        assert ended.frames[-1]["code"] == "not_found"
        assert time.monotonic() - sent < 3
        assert Rest(stack.nginx, stack.token).messages(conv).status_code == 404
    finally:
        await c.close()


# -- per-address limits see the client's address -------------------------------------------------------
async def new_user(stack: Stack, source: str, headers: dict[str, str] | None = None) -> int:
    """A token-less handshake through nginx from `source` (any 127.x.y.z is this host): its status."""
    try:
        c = await Client.open(stack.nginx, headers=headers, local_addr=(source, 0))
    except Refused as e:
        assert e.how == "http", e
        return e.code
    await c.close()
    return 101


@aio
async def test_the_address_limit_counts_the_client_address_nginx_forwards(stack):
    # Each process allows NEW_USERS_PER_MINUTE new users per address; nginx alternates.
    statuses = [await new_user(stack, "127.0.0.2") for _ in range(2 * NEW_USERS_PER_MINUTE + 2)]
    assert statuses == [101] * (2 * NEW_USERS_PER_MINUTE) + [429, 429], statuses
    # The client naming another address is not believed: nginx replaces what it sent.
    spoofed = {"X-Forwarded-For": "198.51.100.7", "X-Real-IP": "198.51.100.7"}
    assert [await new_user(stack, "127.0.0.2", spoofed) for _ in range(2)] == [429, 429]
    # Another client is not blocked: the limit was not counted against nginx's own address.
    assert await new_user(stack, "127.0.0.3") == 101
    refusals = [line for s in stack.servers for line in s.log_text().splitlines() if "too many new users" in line]
    assert len(refusals) == 4 and all("'127.0.0.2'" in line for line in refusals), refusals
    assert not any("198.51.100.7" in s.log_text() for s in stack.servers)


# -- no buffering --------------------------------------------------------------------------------------
@aio
async def test_nginx_passes_each_delta_on_as_it_comes(stack):
    c = await Client.open(stack.nginx, token=stack.token)
    try:
        n = 30
        await c.message(words(n, "s"), client_id=cid(), conversation_id=None)
        sent = time.monotonic()
        arrivals: list[float] = []
        while True:
            frame = await c.recv()
            if frame["type"] == "delta":
                arrivals.append(time.monotonic())
            if frame["type"] == "done":
                finished = time.monotonic()
                break
        assert len(arrivals) == n + 2  # "You said: " and the n words
        pace = ECHO_DELAY_MS / 1000
        spread = arrivals[-1] - arrivals[0]
        # The echo pauses before each delta: sent one by one, they arrive (n - 1) pauses apart.
        # Held back by nginx, they would arrive together at the end.
        assert spread >= 0.7 * (len(arrivals) - 1) * pace, (spread, arrivals)
        assert arrivals[0] - sent < (finished - sent) / 3, "the first delta came long before the end"
        gaps = sorted(b - a for a, b in zip(arrivals, arrivals[1:], strict=False))
        assert gaps[len(gaps) // 2] >= 0.5 * pace, gaps
    finally:
        await c.close()
