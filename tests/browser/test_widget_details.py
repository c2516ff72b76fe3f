"""The widget's details in Chromium: the caret, statuses, refused messages, Markdown, the paged side
list, and token mode (not signed in; a token handed over in the address)."""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

import jwt
from support.client import words
from test_widget import (
    expect,
    message_box,
    open_chat,
    replies,
    saved,
    send,
)
from websockets.sync.client import connect


def test_the_caret_sits_at_the_end_of_the_last_line_while_a_reply_streams(make_server: Any, page: Any) -> None:
    server = make_server("sqlite", CHAT_ECHO_DELAY_MS=150)
    open_chat(page, server.base_url + "/")
    send(page, "short " + words(30))
    streaming = replies(page, "streaming")
    expect(streaming.locator(".cw-bubble")).to_contain_text("w3")
    where = page.evaluate("""() => {
        const root = document.querySelector('#chat').shadowRoot;
        const caret = root.querySelector('.cw-assistant[data-status=streaming] .cw-caret');
        const p = caret.parentElement;
        let text = p.lastChild.previousSibling;  // the text just before the caret
        while (text && text.nodeType !== Node.TEXT_NODE) text = text.lastChild;
        const range = document.createRange();
        const end = text.textContent.trimEnd().length;
        range.setStart(text, end - 1);
        range.setEnd(text, end);
        const word = range.getBoundingClientRect();
        const box = caret.getBoundingClientRect();
        return {parent: p.tagName, isLast: p === p.parentElement.lastElementChild,
                wordTop: word.top, wordBottom: word.bottom, caretTop: box.top, caretBottom: box.bottom,
                caretLeft: box.left, wordRight: word.right};
    }""")
    assert where["parent"] == "P" and where["isLast"], where
    middle = (where["caretTop"] + where["caretBottom"]) / 2
    assert where["wordTop"] <= middle <= where["wordBottom"], f"the caret is not on the last line: {where}"
    assert where["caretLeft"] >= where["wordRight"], where
    expect(streaming.locator(".cw-status")).to_have_text("Replying…")
    complete = replies(page, "complete")
    expect(complete).to_have_count(1)
    expect(complete.locator(".cw-caret")).to_have_count(0)
    expect(complete.locator(".cw-status")).to_have_count(0)


def test_a_reply_that_fails_before_its_first_word_shows_no_empty_bubble(make_server: Any, page: Any) -> None:
    server = make_server("sqlite", CHAT_ECHO_DELAY_MS=5000, CHAT_LLM_TIMEOUT_S=1)
    open_chat(page, server.base_url + "/")
    send(page, "nothing comes back")
    failed = replies(page, "error")
    expect(failed).to_have_count(1)
    expect(failed.locator(".cw-status")).to_contain_text("Error: ")
    expect(failed.locator(".cw-bubble")).to_have_count(0)
    page.reload()  # the same from history
    expect(replies(page, "error")).to_have_count(1)
    expect(replies(page, "error").locator(".cw-bubble")).to_have_count(0)


def test_a_message_too_large_goes_back_into_the_box_instead_of_retrying(make_server: Any, page: Any) -> None:
    server = make_server("sqlite", CHAT_MAX_MESSAGE_CHARS=20)
    open_chat(page, server.base_url + "/")
    text = "this is longer than twenty characters"
    send(page, text)
    failed = page.locator(".cw-pending[data-state=failed]")
    expect(failed).to_have_count(1)
    expect(failed).to_contain_text("Not sent:")
    expect(failed.get_by_role("button", name="Retry", exact=True)).to_have_count(0)
    box = message_box(page)
    box.fill("draft")
    failed.get_by_role("button", name="Edit", exact=True).click()
    expect(page.locator(".cw-pending")).to_have_count(0)
    expect(box).to_have_value(text + "\ndraft")
    expect(box).to_be_focused()
    assert saved(page, "outbox") == []


def test_markdown_bold_that_ends_with_emphasis_leaves_no_stray_star(make_server: Any, page: Any) -> None:
    server = make_server("sqlite")
    open_chat(page, server.base_url + "/")
    html = page.evaluate("""() => {
        const render = t => { const d = document.createElement('div'); d.appendChild(ChatWidget.renderMarkdown(t));
                              return d.innerHTML; };
        return ['**so *nice***', 'a **b** and **c**', '*x* **y**', '**<i>z</i>**'].map(render);
    }""")
    assert html == ["<p><strong>so <em>nice</em></strong></p>",
                    "<p>a <strong>b</strong> and <strong>c</strong></p>",
                    "<p><em>x</em> <strong>y</strong></p>",
                    "<p><strong>&lt;i&gt;z&lt;/i&gt;</strong></p>"], html
    send(page, "**so *nice***")
    reply = replies(page, "complete").locator(".cw-bubble")
    expect(reply).to_have_text("You said: so nice")
    expect(reply.locator("strong em")).to_have_text("nice")


def test_the_side_list_loads_older_conversations_as_it_scrolls(make_server: Any, page: Any) -> None:
    server = make_server("sqlite", CHAT_ECHO_DELAY_MS=0, CHAT_RATE_LIMIT_PER_MINUTE=1000)
    open_chat(page, server.base_url + "/")
    token = saved(page, "token")
    total = 45
    with connect(f"{server.ws_url}?token={token}", open_timeout=15) as ws:
        assert json.loads(ws.recv(timeout=15))["type"] == "ready"
        for i in range(total):
            ws.send(json.dumps({"type": "message", "content": f"topic {i:02d}", "conversation_id": None}))
            while json.loads(ws.recv(timeout=15))["type"] != "done":
                pass
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url) if "/api/conversations?" in r.url else None)
    page.reload()
    items = page.locator(".cw-conv")
    expect(items.first).to_contain_text("topic 44")
    assert items.count() < total, "every conversation came at once, not a page"
    nav = page.get_by_role("navigation", name="Your conversations")
    for _ in range(10):
        if items.count() == total:
            break
        before = items.count()
        nav.hover()
        page.mouse.wheel(0, 20_000)
        expect(items).not_to_have_count(before)
    expect(items).to_have_count(total)
    titles = page.locator(".cw-conv-title").all_inner_texts()
    assert titles == [f"topic {i:02d}" for i in reversed(range(total))]
    assert any("before=" in url for url in requests), requests


SECRET = secrets.token_urlsafe(48)


def test_token_mode_without_a_token_says_not_signed_in_and_stops_retrying(make_server: Any, page: Any) -> None:
    server = make_server("sqlite", CHAT_AUTH_SECRET=SECRET)
    sockets: list[str] = []
    page.on("websocket", lambda ws: sockets.append(ws.url))
    page.goto(server.base_url + "/")
    state = page.locator(".cw-conn")
    expect(state).to_have_attribute("data-state", "unauthorized")
    expect(state.get_by_role("status")).to_have_text("Not signed in")
    expect(page.locator(".cw-signin")).to_be_visible()
    expect(page.locator(".cw-signin")).to_contain_text("#token=")
    attempts = len(sockets)
    assert 1 <= attempts <= 3, sockets
    time.sleep(4)  # the backoff would have tried again by now
    assert len(sockets) == attempts, f"it kept retrying: {sockets}"
    expect(state).to_have_attribute("data-state", "unauthorized")

    # A site that signed the person in sends them to /#token=…: the page takes it and hides it.
    token = jwt.encode({"sub": "user-from-the-site"}, SECRET, algorithm="HS256")
    page.goto("about:blank")  # a new load, not a jump within the same page
    page.goto(server.base_url + "/#token=" + token)
    expect(state).to_have_attribute("data-state", "connected")
    assert page.evaluate("location.hash") == ""
    assert page.url == server.base_url + "/"
    assert saved(page, "token") == token
    send(page, "signed in")
    expect(replies(page, "complete")).to_have_count(1)
    page.reload()  # kept in storage
    expect(state).to_have_attribute("data-state", "connected")
    expect(replies(page, "complete")).to_have_count(1)


def test_the_client_runs_without_a_dom_in_a_worker(make_server: Any, page: Any) -> None:
    """chat-client.js alone, in a Web Worker (no document, no localStorage): a bot's view of it."""
    server = make_server("sqlite")
    page.goto(server.base_url + "/static/chat-client.js")  # any page of the server's origin
    done = page.evaluate("""base => new Promise((resolve, reject) => {
        const code = `
            importScripts(${JSON.stringify(base + "/static/chat-client.js")});
            const client = new ChatClient({server: ${JSON.stringify(base)}});
            const seen = {states: [], pieces: 0};
            client.on("state", s => seen.states.push(s));
            client.on("reply", (r, piece) => { if (piece !== undefined) seen.pieces++; });
            client.on("done", r => postMessage({reply: r, seen, outbox: client.entries().length,
                                                hasDocument: typeof document !== "undefined"}));
            client.connect();
            client.send("hello from a worker", ChatClient.newKey());`;
        const worker = new Worker(URL.createObjectURL(new Blob([code], {type: "text/javascript"})));
        worker.onmessage = e => { worker.terminate(); resolve(e.data); };
        worker.onerror = e => reject(new Error(e.message));
        setTimeout(() => reject(new Error("no reply in 15 s")), 15000);
    })""", server.base_url)
    assert done["hasDocument"] is False
    assert done["reply"]["status"] == "complete"
    assert done["reply"]["content"] == "You said: hello from a worker"
    assert done["seen"]["pieces"] >= 4 and done["seen"]["states"][-1] == "connected", done
    assert done["outbox"] == 0


def test_the_client_drops_repeated_deltas_and_asks_again_after_a_gap(make_server: Any, page: Any) -> None:
    """Frames fed to ChatClient through a fake socket: dedup by seq, and a gap is replayed, not papered over."""
    server = make_server("sqlite")
    page.goto(server.base_url + "/static/chat-client.js")
    out = page.evaluate("""base => new Promise(resolve => {
        const sockets = [];
        class FakeSocket {
            constructor(url) { this.url = url; this.sent = []; sockets.push(this);
                               setTimeout(() => this.onopen && this.onopen(), 0); }
            send(data) { this.sent.push(JSON.parse(data)); }
            close() {}
            feed(frame) { this.onmessage({data: JSON.stringify(frame)}); }
        }
        const s = document.createElement('script');
        s.src = base + '/static/chat-client.js';
        s.onload = () => {
            const client = new ChatClient({server: base, WebSocket: FakeSocket, storage: null, session: null});
            const texts = [];
            const done = [];
            client.on('reply', r => texts.push(r.text));
            client.on('done', r => done.push(r));
            client.connect();
            const ws = sockets[0];
            ws.feed({type: 'ready', protocol: 'chat.v1', user_id: 'u1', conversation_id: null, token: 't',
                     replies_in_flight: [{conversation_id: 'c1', message_id: 'r1', reply_to: 'm1', seq: 0}]});
            ws.feed({type: 'start', conversation_id: 'c1', message_id: 'r1', reply_to: 'm1'});
            ws.feed({type: 'delta', message_id: 'r1', seq: 1, content: 'a '});
            ws.feed({type: 'delta', message_id: 'r1', seq: 2, content: 'b '});
            ws.feed({type: 'delta', message_id: 'r1', seq: 2, content: 'b '});   // again: dropped
            ws.feed({type: 'delta', message_id: 'r1', seq: 4, content: 'd '});   // a gap: resume after 2
            ws.feed({type: 'start', conversation_id: 'c1', message_id: 'r1', reply_to: 'm1'});
            ws.feed({type: 'delta', message_id: 'r1', seq: 3, content: 'c '});
            ws.feed({type: 'delta', message_id: 'r1', seq: 4, content: 'd'});
            ws.feed({type: 'done', conversation_id: 'c1', message_id: 'r1', status: 'complete', content: 'a b c d'});
            ws.feed({type: 'done', conversation_id: 'c1', message_id: 'r1', status: 'complete', content: 'a b c d'});
            resolve({url: ws.url, sent: ws.sent, texts, done, streaming: client.streaming('c1').length});
        };
        document.head.appendChild(s);
    })""", server.base_url)
    assert out["url"].endswith("/ws?token=t&sync=1") or out["url"].endswith("/ws?sync=1"), out["url"]
    assert out["sent"] == [{"type": "resume", "message_id": "r1", "after": 0},
                           {"type": "resume", "message_id": "r1", "after": 2}], out["sent"]
    assert out["texts"][-1] == "a b c d"
    assert all("a b c d".startswith(t) for t in out["texts"]), out["texts"]
    assert len(out["done"]) == 1, "a second done for the same reply was passed on"
    assert out["done"][0]["content"] == "a b c d" and out["done"][0]["reply_to"] == "m1"
    assert out["streaming"] == 0
