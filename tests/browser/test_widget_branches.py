"""Versions of messages in the widget, in Chromium: editing a message, regenerating a reply, and
the "‹ 2 / 3 ›" switcher that flips between siblings, against a real chat-server.

The server keeps each conversation's current leaf (chat.v1's branches: message.parent_id,
regenerate, select and `selected`, history as the path to the leaf); these tests check that the
widget draws the branch it is given, asks for the one the person picks, and follows another tab.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

from support.client import Rest, words
from test_widget import expect, expect_state, message_box, open_chat, replies, saved, send, user_bubbles
from test_widget_live import new_tab

SHADOW = "document.querySelector('#chat').shadowRoot"


# -- helpers ---------------------------------------------------------------------------------------
def record_frames(page: Any) -> list[dict[str, Any]]:
    """Every frame the page sends on its sockets, parsed."""
    sent: list[dict[str, Any]] = []
    page.on("websocket", lambda ws: ws.on("framesent", lambda payload: sent.append(json.loads(payload))))
    return sent


def user_message(page: Any, text: str) -> Any:
    """The <li> of the user message showing exactly `text`."""
    return page.locator(".cw-user").filter(has=page.locator(".cw-bubble", has_text=re.compile(f"^{re.escape(text)}$")))


def version_of(item: Any) -> Any:
    return item.locator(".cw-version-count")


def mark_loaded(page: Any) -> None:
    page.evaluate("window.loadedOnce = true")  # gone if the page reloads


def button(page: Any, name: str) -> Any:
    return page.get_by_role("button", name=name, exact=True)


def edit(page: Any, old: str, new: str) -> None:
    """Edit the user message `old` into `new` with the mouse: Edit, replace the text, Save."""
    user_message(page, old).get_by_role("button", name="Edit message", exact=True).click()
    box = page.get_by_role("textbox", name="Edit your message", exact=True)
    expect(box).to_have_value(old)
    expect(box).to_be_focused()
    box.fill(new)
    button(page, "Save").click()


def two_versions(page: Any, first: str = "apples", second: str = "pears") -> None:
    """A conversation whose first message has two versions, the second one shown."""
    send(page, first)
    expect(replies(page, "complete").locator(".cw-bubble")).to_have_text(f"You said: {first}")
    edit(page, first, second)
    expect(user_message(page, second)).to_have_count(1)
    expect(replies(page, "complete").locator(".cw-bubble")).to_have_text(f"You said: {second}")
    expect(version_of(user_message(page, second))).to_have_text("2 / 2")


def only_conversation_id(rest: Rest) -> str:
    items = rest.conversations()
    assert len(items) == 1, items
    return items[0]["id"]


def tree(rest: Rest, conversation_id: str) -> dict[str, Any]:
    r = rest.http.get(f"/api/conversations/{conversation_id}/tree")
    assert r.status_code == 200, r.text
    return r.json()


def shown_texts(page: Any) -> list[str]:
    return page.locator(".cw-msg .cw-bubble").all_inner_texts()


# -- tests -----------------------------------------------------------------------------------------
def test_editing_a_message_adds_a_version_and_the_arrows_flip_between_them(make_server: Any, page: Any) -> None:
    server = make_server("sqlite")
    sent = record_frames(page)
    open_chat(page, server.base_url + "/")
    send(page, "one")
    expect(replies(page, "complete")).to_have_count(1)
    first_reply = replies(page, "complete").first.get_attribute("data-id")
    send(page, "apples")
    expect(replies(page, "complete")).to_have_count(2)
    expect(page.locator(".cw-version-count")).to_have_count(0)  # one version each: no switcher

    edit(page, "apples", "pears")
    pears = user_message(page, "pears")
    expect(version_of(pears)).to_have_text("2 / 2")
    expect(replies(page, "complete").last.locator(".cw-bubble")).to_have_text("You said: pears")
    expect(user_message(page, "apples")).to_have_count(0)
    assert shown_texts(page) == ["one", "You said: one", "pears", "You said: pears"]
    edits = [f for f in sent if f["type"] == "message" and "parent_id" in f]
    assert len(edits) == 1 and edits[0]["parent_id"] == first_reply, edits  # the edited message's parent

    pears.get_by_role("button", name="Previous version, 1 of 2", exact=True).click()
    apples = user_message(page, "apples")
    expect(version_of(apples)).to_have_text("1 / 2")
    expect(replies(page).last.locator(".cw-bubble")).to_have_text("You said: apples")
    expect(user_message(page, "pears")).to_have_count(0)
    assert shown_texts(page) == ["one", "You said: one", "apples", "You said: apples"]
    selects = [f for f in sent if f["type"] == "select"]
    assert len(selects) == 1 and selects[0]["message_id"] == apples.get_attribute("data-id"), selects
    expect(apples.get_by_role("button", name="Previous version", exact=True)).to_be_disabled()

    rest = Rest(server, saved(page, "token"))
    conversation = tree(rest, only_conversation_id(rest))
    assert len(conversation["items"]) == 6
    assert conversation["leaf_id"] == replies(page).last.get_attribute("data-id")

    apples.get_by_role("button", name="Next version, 2 of 2", exact=True).click()
    expect(version_of(user_message(page, "pears"))).to_have_text("2 / 2")
    expect(replies(page).last.locator(".cw-bubble")).to_have_text("You said: pears")


def test_regenerating_a_reply_adds_a_version_of_the_reply(make_server: Any, page: Any) -> None:
    server = make_server("sqlite", CHAT_ECHO_DELAY_MS=40)
    sent = record_frames(page)
    open_chat(page, server.base_url + "/")
    send(page, "hello there")
    expect(replies(page, "complete")).to_have_count(1)
    old = replies(page).get_attribute("data-id")
    user_id = page.locator(".cw-user").get_attribute("data-id")

    button(page, "Regenerate reply").click()
    reply = replies(page, "complete")
    expect(version_of(reply)).to_have_text("2 / 2")
    expect(replies(page)).to_have_count(1)  # in place of the old one, not beside it
    new = reply.get_attribute("data-id")
    assert new != old
    expect(reply.locator(".cw-bubble")).to_have_text("You said: hello there")
    regenerates = [f for f in sent if f["type"] == "regenerate"]
    assert len(regenerates) == 1 and regenerates[0]["reply_to"] == user_id and regenerates[0]["client_id"], sent
    assert saved(page, "outbox") == []

    rest = Rest(server, saved(page, "token"))
    conversation = tree(rest, only_conversation_id(rest))
    answers = [i["id"] for i in conversation["items"] if i.get("reply_to") == user_id]
    assert answers == [old, new] and conversation["leaf_id"] == new

    reply.get_by_role("button", name="Previous version, 1 of 2", exact=True).click()
    expect(replies(page)).to_have_attribute("data-id", old)
    expect(version_of(replies(page))).to_have_text("1 / 2")
    expect(user_message(page, "hello there")).to_have_count(1)


def test_the_version_chosen_survives_a_reload(make_server: Any, page: Any) -> None:
    server = make_server("sqlite")
    open_chat(page, server.base_url + "/")
    two_versions(page)
    user_message(page, "pears").get_by_role("button", name="Previous version, 1 of 2", exact=True).click()
    expect(version_of(user_message(page, "apples"))).to_have_text("1 / 2")

    page.reload()
    expect_state(page, "connected")
    apples = user_message(page, "apples")
    expect(version_of(apples)).to_have_text("1 / 2")
    expect(replies(page, "complete").locator(".cw-bubble")).to_have_text("You said: apples")
    expect(user_message(page, "pears")).to_have_count(0)
    assert shown_texts(page) == ["apples", "You said: apples"]


def test_a_flip_in_one_tab_is_followed_live_in_the_other(make_server: Any, page: Any) -> None:
    server = make_server("sqlite")
    open_chat(page, server.base_url + "/")
    two_versions(page)

    other = new_tab(page)
    open_chat(other, server.base_url + "/")
    expect(version_of(user_message(other, "pears"))).to_have_text("2 / 2")
    mark_loaded(other)

    user_message(page, "pears").get_by_role("button", name="Previous version, 1 of 2", exact=True).click()
    expect(version_of(user_message(other, "apples"))).to_have_text("1 / 2")
    expect(replies(other).locator(".cw-bubble")).to_have_text("You said: apples")
    expect(user_message(other, "pears")).to_have_count(0)

    user_message(other, "apples").get_by_role("button", name="Next version, 2 of 2", exact=True).click()
    expect(version_of(user_message(page, "pears"))).to_have_text("2 / 2")
    expect(replies(page).locator(".cw-bubble")).to_have_text("You said: pears")
    assert other.evaluate("window.loadedOnce") is True, "the other tab reloaded instead of following"


def test_a_flip_while_a_reply_streams_keeps_the_reply_on_its_branch(make_server: Any, page: Any) -> None:
    server = make_server("sqlite", CHAT_ECHO_DELAY_MS=60)
    open_chat(page, server.base_url + "/")
    two_versions(page)
    mark_loaded(page)
    long = "long one " + words(80)
    send(page, long)
    streaming = replies(page, "streaming")
    expect(streaming.locator(".cw-bubble")).to_contain_text("w3")
    reply_id = streaming.get_attribute("data-id")

    # Away from the branch it streams on: the other version, without the streaming reply.
    user_message(page, "pears").get_by_role("button", name="Previous version, 1 of 2", exact=True).click()
    expect(version_of(user_message(page, "apples"))).to_have_text("1 / 2")
    # At once, while the reply still streams: nothing of the other branch (its message, its reply).
    assert shown_texts(page) == ["apples", "You said: apples"]
    assert replies(page, "streaming").count() == 0
    assert len(saved(page, "outbox")) == 1, "the reply was over before the flip"

    rest = Rest(server, saved(page, "token"))
    conversation_id = only_conversation_id(rest)
    deadline = time.monotonic() + 30
    while True:  # the reply goes on and is stored, on its own branch
        stored = {i["id"]: i for i in tree(rest, conversation_id)["items"]}
        if stored.get(reply_id, {}).get("status") == "complete" or time.monotonic() > deadline:
            break
        page.wait_for_timeout(200)
    assert stored[reply_id]["status"] == "complete", stored.get(reply_id)
    leaf = tree(rest, conversation_id)["leaf_id"]
    assert leaf == replies(page).get_attribute("data-id"), "the leaf left the branch the person chose"
    page.wait_for_timeout(300)  # its done has reached the page by now
    assert shown_texts(page) == ["apples", "You said: apples"]

    user_message(page, "apples").get_by_role("button", name="Next version, 2 of 2", exact=True).click()
    expect(user_bubbles(page, "long one")).to_have_count(1)
    back = replies(page, "complete").last
    expect(back).to_have_attribute("data-id", reply_id)
    expect(back.locator(".cw-bubble")).to_have_text(f"You said: {long}")
    assert shown_texts(page) == ["pears", "You said: pears", long, f"You said: {long}"]
    assert page.evaluate("window.loadedOnce") is True


def test_a_flip_back_while_the_reply_still_streams_shows_it_streaming_on(make_server: Any, page: Any) -> None:
    server = make_server("sqlite", CHAT_ECHO_DELAY_MS=80)
    open_chat(page, server.base_url + "/")
    two_versions(page)
    long = "long two " + words(60)
    send(page, long)
    expect(replies(page, "streaming").locator(".cw-bubble")).to_contain_text("w2")

    user_message(page, "pears").get_by_role("button", name="Previous version, 1 of 2", exact=True).click()
    expect(version_of(user_message(page, "apples"))).to_have_text("1 / 2")
    user_message(page, "apples").get_by_role("button", name="Next version, 2 of 2", exact=True).click()
    expect(user_bubbles(page, "long two")).to_have_count(1)
    streaming = replies(page, "streaming").locator(".cw-bubble")
    expect(streaming).to_contain_text("said")
    before = len(streaming.text_content() or "")
    page.wait_for_function(  # it goes on growing here
        f"n => {{ const b = {SHADOW}.querySelector('.cw-assistant[data-status=streaming] .cw-bubble');"
        " return !!b && b.textContent.length > n; }", arg=before)
    done = replies(page, "complete").last.locator(".cw-bubble")
    expect(done).to_have_text(f"You said: {long}")
    expect(replies(page)).to_have_count(2)


def test_edit_from_the_keyboard_and_the_controls_are_named(make_server: Any, page: Any) -> None:
    server = make_server("sqlite")
    open_chat(page, server.base_url + "/")
    send(page, "typed once")
    expect(replies(page, "complete")).to_have_count(1)
    expect(button(page, "Edit message")).to_have_count(1)
    expect(button(page, "Regenerate reply")).to_be_enabled()

    page.get_by_role("region", name="Messages").focus()
    active = f"() => {SHADOW}.activeElement && {SHADOW}.activeElement.getAttribute('aria-label')"
    for _ in range(10):
        page.keyboard.press("Tab")
        if page.evaluate(active) == "Edit message":
            break
    assert page.evaluate(active) == "Edit message", "Tab never reached the Edit button"
    outline = page.evaluate(f"() => getComputedStyle({SHADOW}.activeElement).outlineStyle")
    assert outline not in ("none", ""), "the focused Edit button shows no focus"

    page.keyboard.press("Enter")
    box = page.get_by_role("textbox", name="Edit your message", exact=True)
    expect(box).to_be_focused()
    expect(box).to_have_value("typed once")
    page.keyboard.press("Escape")  # cancels: nothing sent, focus back on Edit
    expect(box).to_have_count(0)
    assert page.evaluate(active) == "Edit message"
    expect(user_message(page, "typed once")).to_have_count(1)

    page.keyboard.press("Enter")
    expect(box).to_be_focused()
    page.keyboard.press("ControlOrMeta+a")
    page.keyboard.type("typed twice")
    page.keyboard.press("Enter")
    edited = user_message(page, "typed twice")
    expect(version_of(edited)).to_have_text("2 / 2")
    expect(replies(page, "complete").locator(".cw-bubble")).to_have_text("You said: typed twice")
    expect(message_box(page)).to_be_focused()

    previous = edited.get_by_role("button", name="Previous version, 1 of 2", exact=True)
    expect(previous).to_be_enabled()
    expect(edited.get_by_role("button", name="Next version", exact=True)).to_be_disabled()
    expect(edited.get_by_role("group", name="Message, version 2 of 2", exact=True)).to_have_count(1)
    previous.focus()
    page.keyboard.press("Enter")
    expect(version_of(user_message(page, "typed once"))).to_have_text("1 / 2")
    # The keyboard stays on the arrows (of the version now shown), and the flip is announced.
    expect(page.locator(".cw-announce")).to_have_text("Version 1 of 2")
    assert page.evaluate(active) == "Next version, 2 of 2"
