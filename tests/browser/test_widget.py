"""The browser widget (static/widget.js) in headless Chromium against a real chat-server.

Each test starts its own chat-server on SQLite and drives the page as a person would: typing,
Enter, clicking Stop or a conversation, scrolling; then checks what the page shows and, over the
HTTP API with the page's own token, what the server stored. Screenshots at desktop and phone
width go to a temporary folder, or to $CHAT_TEST_SCREENSHOTS (docs/screenshots refreshes the README's).
"""

from __future__ import annotations

import functools
import json
import os
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from unittest import mock

import jwt
import pytest
from support import servers
from support.client import Rest, cid, words
from support.servers import ServerProcess
from websockets.sync.client import connect

try:
    from playwright.sync_api import expect
except ImportError:  # the `browser` fixture skips, or fails under CHAT_TEST_REQUIRE_BROWSER=1
    expect = None

REPO = Path(__file__).resolve().parents[2]
# Tests must not change tracked files: screenshots go to a temporary folder unless
# CHAT_TEST_SCREENSHOTS names one (relative to the repository), e.g. docs/screenshots to refresh them.
SCREENSHOTS_ENV = "CHAT_TEST_SCREENSHOTS"
WAIT_MS = 20_000
if expect is not None:
    expect.set_options(timeout=WAIT_MS)


# -- helpers -------------------------------------------------------------------------------------------
def open_chat(page: Any, url: str) -> None:
    page.goto(url)
    expect_state(page, "connected")


def expect_state(page: Any, state: str) -> None:
    expect(page.locator(".cw-conn")).to_have_attribute("data-state", state)


def message_box(page: Any) -> Any:
    return page.get_by_role("textbox", name="Message")


def send(page: Any, text: str) -> None:
    box = message_box(page)
    box.fill(text)
    box.press("Enter")


def replies(page: Any, status: str | None = None) -> Any:
    return page.locator(".cw-assistant" + (f"[data-status={status}]" if status else ""))


def user_bubbles(page: Any, text: str) -> Any:
    return page.locator(".cw-user .cw-bubble").filter(has_text=text)


def saved(page: Any, name: str) -> Any:
    """A value the widget keeps in localStorage (token, ...), parsed when it is JSON.

    "outbox": the unconfirmed messages of every tab (each tab keeps its own, `outbox:<tab id>`),
    oldest first.
    """
    if name == "outbox":
        return sorted((e for entries in outboxes(page).values() for e in entries), key=lambda e: e.get("at", 0))
    raw = page.evaluate("""name => {
        const key = Object.keys(localStorage).find(k => k.startsWith('chat-widget:') && k.endsWith(':' + name));
        return key === undefined ? null : localStorage.getItem(key);
    }""", name)
    if raw is None or name == "token":
        return raw
    return json.loads(raw)


def outboxes(page: Any) -> dict[str, list[dict[str, Any]]]:
    """Each tab's outbox in localStorage, by tab id (an empty one included)."""
    return page.evaluate("""() => {
        const out = {};
        for (const k of Object.keys(localStorage)) {
            const m = /^chat-widget:.*:outbox:(.+)$/.exec(k);
            if (m) out[m[1]] = JSON.parse(localStorage.getItem(k));
        }
        return out;
    }""")


def user_of(token: str) -> str:
    """The user a token names (its `sub`); the page checks nothing else of it."""
    return jwt.decode(token, options={"verify_signature": False})["sub"]


def conversation_titles(page: Any) -> list[str]:
    return page.locator(".cw-conv-title").all_inner_texts()


def only_conversation(rest: Rest) -> dict[str, Any]:
    items = rest.conversations()
    assert len(items) == 1, items
    return items[0]


def seed_turns(server: ServerProcess, token: str, contents: list[str]) -> str:
    """Play turns over a plain WebSocket as the page's user, in one new conversation; its id."""
    conversation_id = None
    with connect(f"{server.ws_url}?token={token}", max_size=None, open_timeout=15) as ws:
        assert json.loads(ws.recv(timeout=15))["type"] == "ready"
        for content in contents:
            ws.send(json.dumps({"type": "message", "content": content, "client_id": cid("seed"),
                                "conversation_id": conversation_id}))
            while True:
                frame = json.loads(ws.recv(timeout=15))
                assert frame["type"] != "error", frame
                if frame["type"] == "ack":
                    conversation_id = frame["conversation_id"]
                if frame["type"] == "done":
                    assert frame["status"] == "complete", frame
                    break
    assert conversation_id is not None
    return conversation_id


def new_user_token(server: ServerProcess) -> str:
    """In open mode, a socket without a token is a new user; the token minted for it."""
    with connect(server.ws_url, open_timeout=15) as ws:
        return json.loads(ws.recv(timeout=15))["token"]


class SamePortServer(ServerProcess):
    """A chat-server that comes back on the port it had, as a restarted server does for a page."""

    def start(self, timeout: float = 30) -> ServerProcess:
        if not self.port:
            return super().start(timeout)
        port = self.port
        with mock.patch.object(servers, "free_port", lambda: port):
            return super().start(timeout)


@pytest.fixture
def same_port_server(databases: Any, tmp_root: Path, request: pytest.FixtureRequest
                     ) -> Iterator[Callable[..., SamePortServer]]:
    made: list[SamePortServer] = []

    def make(**env: object) -> SamePortServer:
        workdir = Path(tempfile.mkdtemp(prefix="srv-", dir=tmp_root))
        server = SamePortServer(databases.url("sqlite"), {k: str(v) for k, v in env.items()}, workdir)
        made.append(server)
        server.start()
        return server

    yield make
    for server in made:
        if getattr(request.node, "rep_call_failed", False):
            print(f"--- log of {server.db_url} ---\n{server.log_tail(60)}")
        server.kill()


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class HostSite:
    """A plain web site on another origin (http.server in a thread), serving pages from a folder."""

    def __init__(self, root: Path):
        self.root = root
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root)))
        self.port = self.httpd.server_address[1]
        self.origin = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def page(self, name: str, body: str) -> str:
        (self.root / name).write_text(f"<!doctype html>\n<html lang=en><meta charset=utf-8>\n"
                                      f"<title>A shop</title>\n<body>\n{body}\n</body></html>\n")
        return f"{self.origin}/{name}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def host_site(tmp_path: Path) -> Iterator[HostSite]:
    site = HostSite(tmp_path)
    yield site
    site.close()


def embed_tag(server: ServerProcess, target: str | None = "#chat") -> str:
    target_attr = f' data-target="{target}"' if target else ""
    return f'<script src="{server.base_url}/static/widget.js" data-server="{server.base_url}"{target_attr}></script>'


# -- tests ------------------------------------------------------------------------------------------------
def test_reply_streams_into_the_page_and_history_survives_a_reload(make_server: Any, page: Any) -> None:
    server = make_server("sqlite", CHAT_ECHO_DELAY_MS=100)
    open_chat(page, server.base_url + "/")
    # Record every text the streaming reply and the aria-live region go through.
    page.evaluate("""() => {
        const root = document.querySelector('#chat').shadowRoot;
        window.seen = {bubble: [], live: []};
        new MutationObserver(() => {
            const bubble = root.querySelector('.cw-assistant[data-status=streaming] .cw-bubble');
            if (bubble) window.seen.bubble.push(bubble.textContent);
            const live = root.querySelector('[aria-live=polite]').textContent;
            if (live) window.seen.live.push(live);
        }).observe(root, {subtree: true, childList: true, characterData: true});
    }""")

    box = message_box(page)
    box.fill("first line")
    box.press("Shift+Enter")  # a new line, not a send
    box.press_sequentially("second line " + words(12))
    assert box.input_value() == "first line\nsecond line " + words(12)
    assert page.locator(".cw-user").count() == 0
    box.press("Enter")
    sent = "first line\nsecond line " + words(12)

    expect(box).to_have_value("")
    expect(box).to_be_focused()
    reply = replies(page, "complete")
    expect(reply).to_have_count(1)
    expect(reply.locator(".cw-status")).to_have_count(0)  # a status is shown only when it is not "complete"
    assert reply.locator(".cw-bubble").inner_text() == f"You said: {sent}"  # the line break kept, as <br>
    final = reply.locator(".cw-bubble").text_content()

    seen = page.evaluate("window.seen")
    partial = {text for text in seen["bubble"] if text and text != final}
    assert len(partial) >= 2, f"the reply did not stream in pieces: {seen['bubble']}"
    assert all(final.startswith(text) for text in partial), partial
    assert seen["live"] and all(f"You said: {sent}".startswith(text) for text in seen["live"]), seen["live"]

    token = saved(page, "token")
    rest = Rest(server, token)
    conversation = only_conversation(rest)
    stored = rest.all_messages(conversation["id"])
    assert [(m["role"], m["content"], m["status"]) for m in stored] == [
        ("user", sent, "complete"), ("assistant", f"You said: {sent}", "complete")]

    page.reload()
    expect_state(page, "connected")
    expect(user_bubbles(page, "second line")).to_have_count(1)
    expect(replies(page, "complete")).to_have_count(1)
    expect(page.locator(".cw-title")).to_have_text(conversation["title"])
    assert conversation_titles(page) == [conversation["title"]]
    # Every `ready` may hand out a fresh token (open mode): the same user, not the same string.
    assert user_of(saved(page, "token")) == user_of(token), "the page came back as another user"
    assert only_conversation(rest)["id"] == conversation["id"]


def test_older_history_pages_in_when_scrolling_up(make_server: Any, page: Any) -> None:
    server = make_server("sqlite")
    open_chat(page, server.base_url + "/")
    token = saved(page, "token")
    seed_turns(server, token, [f"m{i:02d} " + words(3) for i in range(36)])  # 72 messages
    seed_turns(server, token, ["a later conversation"])

    page.reload()
    expect_state(page, "connected")
    expect(page.locator(".cw-conv")).to_have_count(2)
    assert conversation_titles(page)[0].startswith("a later conversation"), "the list is not newest first"
    page.locator(".cw-conv").filter(has_text="m00").click()
    expect(user_bubbles(page, "m35")).to_have_count(1)
    shown = page.locator(".cw-msg")
    assert shown.count() < 72, "all of the history came at once, not a page"
    expect(user_bubbles(page, "m00")).to_have_count(0)

    thread = page.get_by_role("region", name="Messages")
    for _ in range(10):
        if user_bubbles(page, "m00").count():
            break
        before = shown.count()
        thread.hover()
        page.mouse.wheel(0, -20_000)
        expect(shown).not_to_have_count(before)
    expect(shown).to_have_count(72)
    texts = page.locator(".cw-user .cw-bubble").all_inner_texts()
    assert texts == [f"m{i:02d} " + words(3) for i in range(36)]
    assert page.get_by_role("button", name="Load earlier messages", exact=True).is_hidden()


def test_stop_cancels_the_reply_and_shows_it_cancelled(make_server: Any, page: Any) -> None:
    server = make_server("sqlite", CHAT_ECHO_DELAY_MS=150)
    sent: list[dict[str, Any]] = []
    page.on("websocket", lambda ws: ws.on("framesent", lambda payload: sent.append(json.loads(payload))))
    open_chat(page, server.base_url + "/")
    stop = page.get_by_role("button", name="Stop", exact=True)
    expect(stop).to_be_hidden()
    send(page, "please stop " + words(40))
    streaming = replies(page, "streaming")
    expect(streaming.locator(".cw-bubble")).to_contain_text("said")
    reply_id = streaming.get_attribute("data-id")
    stop.click()

    cancelled = replies(page, "cancelled")
    expect(cancelled).to_have_count(1)
    expect(cancelled.locator(".cw-status")).to_have_text("Cancelled")
    expect(stop).to_be_hidden()
    assert [f for f in sent if f["type"] == "cancel"] == [{"type": "cancel", "message_id": reply_id}]
    rest = Rest(server, saved(page, "token"))
    stored = rest.all_messages(only_conversation(rest)["id"])
    assert [m["status"] for m in stored] == ["complete", "cancelled"]
    full = "You said: please stop " + words(40)
    assert full.startswith(stored[1]["content"]) and stored[1]["content"] != full, stored[1]
    assert saved(page, "outbox") == []

    send(page, "and now finish")  # the socket is still usable after a cancel
    expect(replies(page, "complete")).to_have_count(1)


def test_a_reply_that_fails_shows_error_with_the_detail(make_server: Any, page: Any) -> None:
    server = make_server("sqlite", CHAT_ECHO_DELAY_MS=300, CHAT_LLM_TIMEOUT_S=1)
    open_chat(page, server.base_url + "/")
    send(page, "too slow " + words(20))
    failed = replies(page, "error")
    expect(failed).to_have_count(1)
    expect(failed.locator(".cw-status")).to_contain_text("Error: ")
    expect(failed.locator(".cw-status")).to_contain_text("CHAT_LLM_TIMEOUT_S")
    expect(failed.locator(".cw-bubble")).to_contain_text("You said:")  # the partial reply stays
    rest = Rest(server, saved(page, "token"))
    reply = rest.all_messages(only_conversation(rest)["id"])[1]
    assert reply["status"] == "error"
    assert failed.locator(".cw-bubble").inner_text() == reply["content"].strip()


def test_deleting_a_conversation_from_the_side_list(make_server: Any, page: Any) -> None:
    server = make_server("sqlite")
    open_chat(page, server.base_url + "/")
    send(page, "keep me")
    expect(replies(page, "complete")).to_have_count(1)
    page.get_by_role("button", name="New chat", exact=True).click()
    expect(page.locator(".cw-title")).to_have_text("New chat")
    send(page, "delete me")
    expect(replies(page, "complete")).to_have_count(1)
    expect(page.locator(".cw-conv")).to_have_count(2)
    assert conversation_titles(page) == ["delete me", "keep me"]
    rest = Rest(server, saved(page, "token"))
    doomed = next(c for c in rest.conversations() if c["title"] == "delete me")

    delete = page.get_by_role("button", name="Delete “delete me”", exact=True)
    with page.expect_event("dialog"):
        delete.click()  # the confirmation is dismissed: nothing happens
    assert page.seen.dialogs == ["confirm: Delete “delete me”? This cannot be undone."]
    expect(page.locator(".cw-conv")).to_have_count(2)
    page.seen.accept = True
    delete.click()

    expect(page.locator(".cw-conv")).to_have_count(1)
    assert conversation_titles(page) == ["keep me"]
    expect(page.locator(".cw-title")).to_have_text("New chat")
    expect(page.locator(".cw-msg")).to_have_count(0)
    assert [c["title"] for c in rest.conversations()] == ["keep me"]
    assert rest.messages(doomed["id"]).status_code == 404
    page.reload()
    expect_state(page, "connected")
    expect(page.locator(".cw-conv")).to_have_count(1)


def test_server_restart_reconnects_and_a_message_typed_meanwhile_is_delivered_once(
        same_port_server: Callable[..., SamePortServer], page: Any) -> None:
    server = same_port_server(CHAT_ECHO_DELAY_MS=80)
    open_chat(page, server.base_url + "/")
    first = "long one " + words(40)
    send(page, first)
    expect(replies(page, "streaming").locator(".cw-bubble")).to_contain_text("said")
    server.signal(signal.SIGTERM)  # mid-reply: it is stored as interrupted, the socket closed with 1001
    server.wait(15)
    expect_state(page, "reconnecting")

    typed = "typed while the server was down"
    send(page, typed)
    pending = page.locator(".cw-pending").filter(has_text=typed)
    expect(pending).to_have_attribute("data-state", "waiting")
    assert [e["content"] for e in saved(page, "outbox")] == [first, typed]

    server.start()  # same port: the page's URL still points at it
    expect_state(page, "connected")
    # The unfinished first message is sent again with its client_id (answered as a duplicate, with
    # a new reply), then the one typed meanwhile. The new reply is the interrupted one's sibling,
    # on the branch shown ("2 / 2"); the interrupted one is a flip away.
    expect(replies(page, "complete")).to_have_count(2)
    expect(user_bubbles(page, typed)).to_have_count(1)
    expect(page.locator(".cw-pending")).to_have_count(0)
    assert saved(page, "outbox") == []
    again = replies(page, "complete").first
    expect(again.locator(".cw-version-count")).to_have_text("2 / 2")
    expect(replies(page, "interrupted")).to_have_count(0)

    rest = Rest(server, saved(page, "token"))
    conversation_id = only_conversation(rest)["id"]
    stored = rest.all_messages(conversation_id)  # the current branch
    assert [m["content"] for m in stored if m["role"] == "user"] == [first, typed]
    assert [m["status"] for m in stored if m["role"] == "assistant"] == ["complete", "complete"]
    assert stored[-1]["content"] == f"You said: {typed}"
    assert page.locator(".cw-msg").count() == len(stored)
    everything = rest.http.get(f"/api/conversations/{conversation_id}/tree").json()["items"]
    assert [m["status"] for m in everything if m["role"] == "assistant"] == ["interrupted", "complete", "complete"]

    again.get_by_role("button", name="Previous version, 1 of 2", exact=True).click()
    expect(replies(page, "interrupted")).to_have_count(1)
    expect(user_bubbles(page, typed)).to_have_count(0)  # it follows the new reply, on the other branch


def test_a_message_typed_while_the_server_is_down_survives_a_reload(
        same_port_server: Callable[..., SamePortServer], host_site: HostSite, page: Any) -> None:
    server = same_port_server(CHAT_ALLOWED_ORIGINS=host_site.origin)
    url = host_site.page("shop.html", '<h1>A shop</h1><div id="chat" style="height:600px"></div>\n'
                         + embed_tag(server))
    open_chat(page, url)
    send(page, "hello before the crash")
    expect(replies(page, "complete")).to_have_count(1)
    server.kill()
    expect_state(page, "reconnecting")

    typed = "typed, then the page reloaded"
    send(page, typed)
    page.reload()  # the host page still loads; the chat server is down
    pending = page.locator(".cw-pending").filter(has_text=typed)
    expect(pending).to_have_attribute("data-state", "waiting")
    expect(pending).to_contain_text("Not sent yet")

    server.start()
    expect_state(page, "connected")
    expect(user_bubbles(page, typed)).to_have_count(1)
    expect(replies(page, "complete")).to_have_count(2)
    rest = Rest(server, saved(page, "token"))
    stored = rest.all_messages(only_conversation(rest)["id"])
    assert [m["content"] for m in stored if m["role"] == "user"] == ["hello before the crash", typed]
    assert saved(page, "outbox") == []


def test_offline_is_shown_and_what_is_typed_offline_goes_out_when_back_online(make_server: Any, page: Any) -> None:
    server = make_server("sqlite")
    open_chat(page, server.base_url + "/")
    page.context.set_offline(True)
    expect_state(page, "offline")
    expect(page.locator(".cw-conn").get_by_role("status")).to_have_text("Offline")

    send(page, "typed offline")
    expect(page.locator(".cw-pending").filter(has_text="typed offline")).to_have_attribute("data-state", "waiting")
    page.context.set_offline(False)
    expect_state(page, "connected")
    expect(replies(page, "complete")).to_have_count(1)
    expect(page.locator(".cw-pending")).to_have_count(0)
    rest = Rest(server, saved(page, "token"))
    stored = rest.all_messages(only_conversation(rest)["id"])
    assert [(m["role"], m["content"]) for m in stored] == [("user", "typed offline"),
                                                          ("assistant", "You said: typed offline")]


def test_markup_in_messages_is_shown_as_text_and_never_runs(make_server: Any, page: Any) -> None:
    server = make_server("sqlite")
    open_chat(page, server.base_url + "/")
    payload = "<img src=x onerror=alert(1)>"
    send(page, payload)
    expect(replies(page, "complete")).to_have_count(1)
    send(page, "<script>window.pwned = 1</script> and `<b>code</b>` and **<i>bold</i>**")
    expect(replies(page, "complete")).to_have_count(2)

    expect(user_bubbles(page, payload)).to_have_text(payload)
    expect(replies(page).first.locator(".cw-bubble")).to_have_text(f"You said: {payload}")
    expect(replies(page).nth(1).locator(".cw-md-code")).to_have_text("<b>code</b>")
    expect(replies(page).nth(1).locator("strong")).to_have_text("<i>bold</i>")
    markup = page.evaluate("""() => {
        const root = document.querySelector('#chat').shadowRoot;
        return root.querySelectorAll('img, script, b, i').length + document.querySelectorAll('img').length;
    }""")
    assert markup == 0, "message text became elements"
    assert page.seen.dialogs == [], page.seen.dialogs
    assert page.evaluate("window.pwned") is None


def test_replies_render_a_small_markdown_subset(make_server: Any, page: Any) -> None:
    server = make_server("sqlite")
    open_chat(page, server.base_url + "/")
    send(page, "Steps:\n\n- one\n- **two**\n\n1. first\n2. second\n\n```python\ndef f():\n    return  {'a': 1}\n```\n"
               "Done.")
    reply = replies(page, "complete").locator(".cw-bubble")
    expect(reply).to_have_count(1)
    expect(reply.locator("ul > li")).to_have_text(["one", "two"])
    expect(reply.locator("ul strong")).to_have_text("two")
    expect(reply.locator("ol > li")).to_have_text(["first", "second"])
    code = reply.locator("pre code")
    assert code.text_content() == "def f():\n    return  {'a': 1}", "the code block lost its whitespace"
    assert code.get_attribute("data-lang") == "python"
    expect(reply.locator("p").last).to_have_text("Done.")


def test_widget_embedded_with_one_tag_on_another_origin(make_server: Any, host_site: HostSite, page: Any) -> None:
    server = make_server("sqlite", CHAT_ALLOWED_ORIGINS=host_site.origin)
    inline = host_site.page("inline.html", '<p>Our shop.</p><div id="chat" style="height:560px"></div>\n'
                            + embed_tag(server))
    open_chat(page, inline)
    send(page, "hello from another site")
    expect(replies(page, "complete")).to_have_count(1)
    # The side list came over HTTP from the other origin: CORS let the page read it.
    expect(page.locator(".cw-conv")).to_have_count(1)
    assert conversation_titles(page) == ["hello from another site"]

    # Without data-target the same tag adds a floating button that opens the chat.
    floating = host_site.page("floating.html", "<p>Another page of the shop.</p>\n" + embed_tag(server, None))
    page.goto(floating)
    launcher = page.get_by_role("button", name="Chat", exact=True)
    expect(launcher).to_have_attribute("aria-expanded", "false")
    launcher.click()
    expect_state(page, "connected")
    expect(message_box(page)).to_be_focused()
    expect(user_bubbles(page, "hello from another site")).to_have_count(1)  # same user, same conversation
    page.get_by_role("button", name="Close chat", exact=True).click()
    expect(launcher).to_have_attribute("aria-expanded", "false")

    # A host page that signs its own user in passes a token; the widget keeps it across reloads.
    token = new_user_token(server)
    seed_turns(server, token, ["seeded for the host's user"])
    signed_in = host_site.page("signed-in.html", '<div id="chat" style="height:560px"></div>\n'
                               + embed_tag(server).replace("<script ", f'<script data-token="{token}" '))
    for url in (signed_in, inline):
        open_chat(page, url)
        expect(page.locator(".cw-conv")).to_have_count(1)
        assert conversation_titles(page) == ["seeded for the host's user"]
        assert user_of(saved(page, "token")) == user_of(token)

    # localhost is another origin, not on the allow-list: the server refuses the socket.
    page.goto(inline.replace("127.0.0.1", "localhost"))
    expect_state(page, "reconnecting")
    assert "refused a socket from origin http://localhost:" in server.log_text()


def test_screenshots_at_desktop_and_phone_width(make_server: Any, page: Any, tmp_path: Path) -> None:
    chosen = os.environ.get(SCREENSHOTS_ENV)
    SCREENSHOTS = REPO / chosen if chosen else tmp_path
    server = make_server("sqlite")
    open_chat(page, server.base_url + "/")
    send(page, "What is a good name for a cat?")
    expect(replies(page, "complete")).to_have_count(1)
    page.get_by_role("button", name="New chat", exact=True).click()
    send(page, "How do I count lines in Python?")
    expect(replies(page, "complete")).to_have_count(1)
    send(page, "Like this:\n\n- open the file\n- count with `sum`\n\n```python\nwith open(path) as f:\n"
               "    n = sum(1 for _ in f)\n```")
    expect(replies(page, "complete")).to_have_count(2)
    expect(page.locator(".cw-conv")).to_have_count(2)
    expect(page.locator(".cw-title")).to_have_text("How do I count lines in Python?")
    box = message_box(page)
    box.focus()
    page.keyboard.press("Tab")  # focus order: the message box, then Send (Stop only while replying)
    expect(page.get_by_role("button", name="Send", exact=True)).to_be_focused()
    box.fill("Thanks!")

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.mouse.move(700, 300)  # no hover effect in the picture
    page.screenshot(path=SCREENSHOTS / "desktop.png")

    page.set_viewport_size({"width": 390, "height": 844})
    page.emulate_media(reduced_motion="reduce")  # the drawer opens without sliding: a steady picture
    side = page.get_by_role("complementary", name="Conversations")
    expect(side).to_be_hidden()  # a drawer at phone width
    overflow = page.evaluate("""() => {
        const app = document.querySelector('#chat').shadowRoot.querySelector('.cw-app');
        return [document.documentElement.scrollWidth, app.scrollWidth, window.innerWidth];
    }""")
    assert max(overflow[:2]) <= overflow[2], f"wider than the phone: {overflow}"
    composer = box.bounding_box()
    assert composer and composer["y"] + composer["height"] <= 844, composer
    expect(page.get_by_role("button", name="Send", exact=True)).to_be_in_viewport()
    page.screenshot(path=SCREENSHOTS / "phone.png")

    menu = page.get_by_role("button", name="Conversations", exact=True)
    menu.click()
    expect(side).to_be_visible()
    expect(page.get_by_role("button", name="New chat", exact=True)).to_be_focused()
    page.screenshot(path=SCREENSHOTS / "phone-conversations.png")
    page.keyboard.press("Escape")
    expect(side).to_be_hidden()
    expect(menu).to_be_focused()
