"""The widget across sockets and tabs, in Chromium: a reply that outlives its socket is resumed,
other tabs' turns show up live, and each tab owns its unsent messages.

Resume, the other tabs' turns and Stop across tabs rely on the server side of chat.v1's resume,
seq, replies_in_flight, ?sync=1 and cancel by message_id (the reply bus).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from support.client import Rest, words
from support.servers import free_port
from support.tcp_proxy import TcpProxy
from test_widget import (
    HostSite,
    SamePortServer,
    embed_tag,
    expect,
    expect_state,
    host_site,  # noqa: F401  (a fixture)
    only_conversation,
    open_chat,
    outboxes,
    replies,
    same_port_server,  # noqa: F401  (a fixture)
    saved,
    send,
    user_bubbles,
)

RECORD_BUBBLES = """() => {
    const root = document.querySelector('#chat').shadowRoot;
    window.seen = [];
    window.loadedOnce = true;  // gone if the page reloads
    new MutationObserver(() => {
        for (const b of root.querySelectorAll('.cw-assistant .cw-bubble')) window.seen.push(b.textContent);
    }).observe(root, {subtree: true, childList: true, characterData: true});
}"""


def new_tab(page: Any) -> Any:
    """Another tab of the same browser profile: same localStorage (same user), its own sessionStorage."""
    tab = page.context.new_page()
    tab.on("pageerror", lambda e: page.seen.errors.append(f"other tab: {e}"))
    return tab


def close_tab(tab: Any) -> None:
    """Close a tab as a person does: its pagehide runs (and gives up its claim on its outbox)."""
    with tab.expect_event("close"):
        tab.close(run_before_unload=True)


@pytest.fixture
def proxied(make_server: Any) -> Iterator[Callable[..., tuple[Any, TcpProxy]]]:
    """A chat-server reached through a TcpProxy (the page's origin is the proxy's)."""
    proxies: list[TcpProxy] = []

    def make(**env: object) -> tuple[Any, TcpProxy]:
        port = free_port()
        server = make_server("sqlite", CHAT_ALLOWED_ORIGINS=f"http://127.0.0.1:{port}", **env)
        proxy = TcpProxy(server.port, port=port).start()
        proxies.append(proxy)
        return server, proxy

    yield make
    for proxy in proxies:
        proxy.close()


def test_a_reply_streaming_when_the_socket_drops_finishes_whole_and_once(
        proxied: Callable[..., tuple[Any, TcpProxy]], page: Any) -> None:
    server, proxy = proxied(CHAT_ECHO_DELAY_MS=100)
    sockets: list[Any] = []
    sent: list[dict[str, Any]] = []

    def on_socket(ws: Any) -> None:
        sockets.append(ws)
        ws.on("framesent", lambda payload: sent.append(json.loads(payload)))

    page.on("websocket", on_socket)
    open_chat(page, f"http://127.0.0.1:{proxy.port}/")
    page.evaluate(RECORD_BUBBLES)
    text = "drop me " + words(40)
    send(page, text)
    streaming = replies(page, "streaming").locator(".cw-bubble")
    expect(streaming).to_contain_text("w5")

    with page.expect_websocket():  # the page opens a new socket (through the proxy) after
        at_cut = page.evaluate("window.seen.length")
        assert proxy.cut() >= 1  # the network drops; the reply goes on on the server
    expect_state(page, "connected")
    assert len(sockets) == 2

    final = f"You said: {text}"
    done = replies(page, "complete")
    expect(done).to_have_count(1)
    expect(done.locator(".cw-bubble")).to_have_text(final)
    assert replies(page).count() == 1
    assert page.evaluate("window.loadedOnce") is True, "the page reloaded"

    seen = page.evaluate("window.seen")
    assert all(final.startswith(t) for t in seen if t), [t for t in seen if not final.startswith(t)][:3]
    after = [t for t in seen[at_cut:] if t and t != final]
    assert after and max(len(t) for t in after) > len(seen[at_cut - 1]), \
        "the reply did not stream again after the reconnect"
    resumes = [f for f in sent if f["type"] == "resume"]
    assert len(resumes) == 1 and resumes[0]["after"] >= 5, resumes
    assert [f["type"] for f in sent].count("message") == 1, "the message was sent again instead of resumed"

    rest = Rest(server, saved(page, "token"))
    stored = rest.all_messages(only_conversation(rest)["id"])
    assert [(m["role"], m["content"], m["status"]) for m in stored] == [
        ("user", text, "complete"), ("assistant", final, "complete")]
    assert saved(page, "outbox") == []


def test_two_tabs_of_one_user_see_each_others_turns_live(make_server: Any, page: Any) -> None:
    server = make_server("sqlite", CHAT_ECHO_DELAY_MS=100)
    open_chat(page, server.base_url + "/")
    send(page, "first from A")
    expect(replies(page, "complete")).to_have_count(1)

    other = new_tab(page)
    open_chat(other, server.base_url + "/")  # the same user, on the same conversation
    expect(user_bubbles(other, "first from A")).to_have_count(1)

    send(page, "second from A " + words(25))
    expect(user_bubbles(other, "second from A")).to_have_count(1)
    expect(replies(other, "streaming").locator(".cw-bubble")).to_contain_text("said")  # live, not after the fact
    expect(replies(other, "complete")).to_have_count(2)
    expect(replies(other, "complete").last.locator(".cw-bubble")).to_have_text(f"You said: second from A {words(25)}")

    send(other, "and one from B")
    expect(user_bubbles(page, "and one from B")).to_have_count(1)
    expect(replies(page, "complete")).to_have_count(3)
    expect(replies(page, "complete").last.locator(".cw-bubble")).to_have_text("You said: and one from B")
    assert page.locator(".cw-msg").count() == other.locator(".cw-msg").count() == 6

    # A new conversation in one tab shows up in the other's list; deleting it there removes it here.
    page.get_by_role("button", name="New chat", exact=True).click()
    send(page, "a second topic")
    expect(replies(page, "complete")).to_have_count(1)
    expect(other.locator(".cw-conv")).to_have_count(2)
    other.locator(".cw-conv").filter(has_text="a second topic").click()
    expect(user_bubbles(other, "a second topic")).to_have_count(1)

    other.on("dialog", lambda d: d.accept())
    other.get_by_role("button", name="Delete “a second topic”", exact=True).click()
    expect(page.locator(".cw-conv")).to_have_count(1)
    expect(page.locator(".cw-title")).to_have_text("New chat")
    expect(page.locator(".cw-msg")).to_have_count(0)
    other.close()


def test_each_tab_owns_its_unsent_messages_and_a_closed_tabs_are_delivered(
        same_port_server: Callable[..., SamePortServer], page: Any) -> None:  # noqa: F811
    server = same_port_server()
    open_chat(page, server.base_url + "/")
    send(page, "hello")
    expect(replies(page, "complete")).to_have_count(1)
    other = new_tab(page)
    open_chat(other, server.base_url + "/")

    server.kill()
    expect_state(page, "reconnecting")
    expect_state(other, "reconnecting")
    send(page, "typed in A")
    send(other, "typed in B")
    expect(page.locator(".cw-pending").filter(has_text="typed in A")).to_have_attribute("data-state", "waiting")
    expect(other.locator(".cw-pending").filter(has_text="typed in B")).to_have_attribute("data-state", "waiting")
    expect(page.locator(".cw-pending")).to_have_count(1)  # each tab shows its own, and keeps its own
    expect(other.locator(".cw-pending")).to_have_count(1)
    boxes = {tab: [e["content"] for e in entries] for tab, entries in outboxes(page).items()}
    assert sorted(boxes.values()) == [["typed in A"], ["typed in B"]], boxes

    page_b_tab = other.evaluate("sessionStorage.getItem(Object.keys(sessionStorage).find(k => k.endsWith(':tab')))")
    close_tab(other)  # B closes with its message unsent
    assert page_b_tab in outboxes(page)

    server.start()
    expect_state(page, "connected")
    # A adopts the outbox of the closed tab: both messages are delivered, once each.
    expect(user_bubbles(page, "typed in A")).to_have_count(1)
    expect(user_bubbles(page, "typed in B")).to_have_count(1)
    expect(replies(page, "complete")).to_have_count(3)
    expect(page.locator(".cw-pending")).to_have_count(0)
    assert saved(page, "outbox") == []
    assert page_b_tab not in outboxes(page)
    rest = Rest(server, saved(page, "token"))
    stored = rest.all_messages(only_conversation(rest)["id"])
    assert sorted(m["content"] for m in stored if m["role"] == "user") == ["hello", "typed in A", "typed in B"]


def test_a_closed_tabs_unsent_message_is_shown_on_the_next_load(
        same_port_server: Callable[..., SamePortServer], host_site: HostSite, page: Any) -> None:  # noqa: F811
    server = same_port_server(CHAT_ALLOWED_ORIGINS=host_site.origin)
    url = host_site.page("shop.html", '<div id="chat" style="height:600px"></div>\n' + embed_tag(server))
    open_chat(page, url)
    send(page, "hello")
    expect(replies(page, "complete")).to_have_count(1)
    server.kill()
    expect_state(page, "reconnecting")
    typed = "typed, then the tab closed"
    send(page, typed)
    expect(page.locator(".cw-pending")).to_have_count(1)
    context = page.context
    close_tab(page)

    later = context.new_page()  # the next visit: another tab (its own id), the chat server still down
    later.goto(url)
    pending = later.locator(".cw-pending").filter(has_text=typed)
    expect(pending).to_have_attribute("data-state", "waiting")
    expect(pending).to_contain_text("Not sent yet")
    server.start()
    expect_state(later, "connected")
    expect(user_bubbles(later, typed)).to_have_count(1)
    expect(replies(later, "complete")).to_have_count(2)
    expect(later.locator(".cw-pending")).to_have_count(0)
    assert saved(later, "outbox") == []


def test_stop_in_another_tab_cancels_the_reply_by_its_id(make_server: Any, page: Any) -> None:
    server = make_server("sqlite", CHAT_ECHO_DELAY_MS=150)
    open_chat(page, server.base_url + "/")
    send(page, "first")
    expect(replies(page, "complete")).to_have_count(1)
    other = new_tab(page)
    sent: list[dict[str, Any]] = []
    other.on("websocket", lambda ws: ws.on("framesent", lambda payload: sent.append(json.loads(payload))))
    open_chat(other, server.base_url + "/")

    send(page, "stop me from the other tab " + words(40))
    streaming = replies(other, "streaming")
    expect(streaming.locator(".cw-bubble")).to_contain_text("said")
    reply_id = streaming.get_attribute("data-id")
    other.get_by_role("button", name="Stop", exact=True).click()

    for tab in (page, other):
        expect(replies(tab, "cancelled")).to_have_count(1)
        expect(tab.get_by_role("button", name="Stop", exact=True)).to_be_hidden()
    assert [f for f in sent if f["type"] == "cancel"] == [{"type": "cancel", "message_id": reply_id}]
    rest = Rest(server, saved(page, "token"))
    stored = rest.all_messages(only_conversation(rest)["id"])
    assert [m["status"] for m in stored if m["role"] == "assistant"] == ["complete", "cancelled"]
    assert saved(page, "outbox") == []
    other.close()


def test_a_reload_mid_reply_picks_the_reply_up_where_it_streams(make_server: Any, page: Any) -> None:
    server = make_server("sqlite", CHAT_ECHO_DELAY_MS=100)
    open_chat(page, server.base_url + "/")
    text = "reload me " + words(40)
    send(page, text)
    expect(replies(page, "streaming").locator(".cw-bubble")).to_contain_text("w3")
    page.reload()
    expect_state(page, "connected")
    expect(replies(page, "streaming").locator(".cw-bubble")).to_contain_text("said")  # streaming again
    done = replies(page, "complete")
    expect(done).to_have_count(1)
    expect(done.locator(".cw-bubble")).to_have_text(f"You said: {text}")
    assert replies(page).count() == 1 and user_bubbles(page, "reload me").count() == 1
    rest = Rest(server, saved(page, "token"))
    stored = rest.all_messages(only_conversation(rest)["id"])
    assert [(m["role"], m["status"]) for m in stored] == [("user", "complete"), ("assistant", "complete")]
    assert saved(page, "outbox") == []
