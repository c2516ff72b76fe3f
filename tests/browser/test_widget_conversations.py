"""Conversations in the widget, in Chromium against a real chat-server: titles in the side list,
renaming in place (followed by the user's other tabs), searching messages, the settings panel
(system prompt, model, export) and thumbs up or down on a reply.

Each test checks what the page shows and, over the HTTP API with the page's own token, what the
server stored.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from support.client import Rest
from test_widget import expect, open_chat, replies, saved, seed_turns, send
from test_widget_branches import edit, record_frames, user_message, version_of
from test_widget_live import new_tab

SHADOW = "document.querySelector('#chat').shadowRoot"


# -- helpers ---------------------------------------------------------------------------------------
def button(page: Any, name: str) -> Any:
    return page.get_by_role("button", name=name, exact=True)


def rest_of(page: Any, server: Any) -> Rest:
    return Rest(server, saved(page, "token"))


def conversation(rest: Rest, conversation_id: str) -> dict[str, Any]:
    return next(c for c in rest.conversations() if c["id"] == conversation_id)


def wait_for(fn: Any, timeout: float = 10.0) -> Any:
    """fn() until it is truthy; its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


def search(page: Any, text: str) -> Any:
    box = page.get_by_role("searchbox", name="Search messages", exact=True)
    box.fill(text)
    return page.get_by_role("region", name="Search results", exact=True)


def settings_panel(page: Any) -> Any:
    button(page, "Conversation settings").click()
    panel = page.get_by_role("form", name="Conversation settings", exact=True)
    expect(panel).to_be_visible()
    return panel


# -- tests -----------------------------------------------------------------------------------------
def test_a_conversation_is_titled_and_renamed_in_place_in_every_tab(make_server: Any, page: Any) -> None:
    server = make_server("sqlite")
    url = server.base_url + "/"
    open_chat(page, url)
    send(page, "planning a trip to Lisbon")
    expect(replies(page, "complete")).to_have_count(1)
    expect(page.locator(".cw-conv-title")).to_have_text(["planning a trip to Lisbon"])
    expect(page.locator(".cw-title")).to_have_text("planning a trip to Lisbon")
    rest = rest_of(page, server)
    [stored] = rest.conversations()
    assert stored["title"] == "planning a trip to Lisbon" and stored["title_source"] == "words", stored

    other = new_tab(page)
    open_chat(other, url)
    expect(other.locator(".cw-conv-title")).to_have_text(["planning a trip to Lisbon"])

    # A double click renames (on a conversation not shown, it opens it too); Escape cancels: nothing
    # is sent, the title stays.
    button(page, "New chat").click()
    page.locator(".cw-conv").dblclick()
    box = page.get_by_role("textbox", name="Conversation title", exact=True)
    expect(box).to_be_focused()
    expect(box).to_have_value("planning a trip to Lisbon")
    box.fill("not this")
    box.press("Escape")
    expect(box).to_have_count(0)
    expect(page.locator(".cw-conv-title")).to_have_text(["planning a trip to Lisbon"])
    expect(page.locator(".cw-conv")).to_be_focused()
    expect(page.locator(".cw-conv")).to_have_attribute("aria-current", "page")
    assert rest.conversations()[0]["title_source"] == "words"

    # The rename button, then Enter: the title changes here, on the server and in the other tab.
    button(page, "Rename “planning a trip to Lisbon”").click()
    box.fill("Lisbon, <b>in May</b>")
    box.press("Enter")
    expect(page.locator(".cw-conv-title")).to_have_text(["Lisbon, <b>in May</b>"])
    expect(page.locator(".cw-title")).to_have_text("Lisbon, <b>in May</b>")
    stored = wait_for(lambda: next((c for c in rest.conversations() if c["title_source"] == "user"), None))
    assert stored and stored["title"] == "Lisbon, <b>in May</b>", rest.conversations()
    expect(other.locator(".cw-conv-title")).to_have_text(["Lisbon, <b>in May</b>"])  # conversation_updated
    assert page.evaluate(f"{SHADOW}.querySelectorAll('.cw-side b').length") == 0


def test_search_opens_an_older_conversation_at_the_message_found(make_server: Any, page: Any) -> None:
    server = make_server("sqlite", CHAT_ECHO_DELAY_MS=0, CHAT_RATE_LIMIT_PER_MINUTE=1000)
    open_chat(page, server.base_url + "/")
    token = saved(page, "token")
    # An older conversation whose match is its first message, two pages of history before its end.
    older = seed_turns(server, token, ["the quokka <b>smiles</b> & waves at 'us'"] +
                       [f"filler message {i}" for i in range(40)])
    page.reload()
    send(page, "something else entirely")
    expect(replies(page, "complete")).to_have_count(1)
    expect(page.locator(".cw-conv")).to_have_count(2)

    found = search(page, "QUOKKA")
    expect(found.locator(".cw-hit")).to_have_count(2)  # the message, and the reply that repeats it
    expect(found.locator(".cw-hit-role")).to_have_text([" · reply", " · you"])  # newest first
    hit = found.locator(".cw-hit[data-role=user]")
    expect(hit.locator(".cw-hit-snippet")).to_have_text("the quokka <b>smiles</b> & waves at 'us'")
    expect(hit.locator(".cw-hit-snippet mark")).to_have_text("quokka")
    expect(found.locator(".cw-found-conv")).to_have_text(["the quokka <b>smiles</b> & waves at 'us'"])  # by title
    expect(page.get_by_role("navigation", name="Your conversations")).to_be_hidden()  # results in its place
    assert page.evaluate(f"{SHADOW}.querySelectorAll('.cw-found b').length") == 0

    hit.click()
    expect(page.locator(".cw-conv[aria-current=page]")).to_have_attribute("data-conv", older)
    message = user_message(page, "the quokka <b>smiles</b> & waves at 'us'")
    expect(message).to_have_attribute("data-found", "true")
    expect(message).to_be_in_viewport()
    expect(message).to_be_focused()
    expect(user_message(page, "something else entirely")).to_have_count(0)

    # The snippet is only ever split on <mark>: even markup a server let through stays text.
    hostile = '<img src=x onerror="window.pwned=1"><mark>quokka</mark> &amp;lt;3 <mark><b>x</b></mark>'

    def tamper(route: Any) -> None:
        body = route.fetch().json()
        for item in body["items"]:
            item["snippet"] = hostile
        route.fulfill(json=body)

    page.route("**/api/search?*", tamper)
    found = search(page, "quokka")
    snippet = found.locator(".cw-hit-snippet").first
    expect(snippet).to_have_text('<img src=x onerror="window.pwned=1">quokka &lt;3 <b>x</b>')
    expect(snippet.locator("mark")).to_have_text(["quokka", "<b>x</b>"])
    assert page.evaluate(f"{SHADOW}.querySelectorAll('.cw-found img, .cw-found b').length") == 0
    assert page.evaluate("window.pwned") is None
    page.unroute("**/api/search?*")

    # No word to search for: said so, and an empty box brings the list back.
    search(page, "!!!")
    expect(page.locator(".cw-found .cw-empty")).to_have_text("Search for a word (letters or digits).")
    search(page, "")
    expect(page.locator(".cw-conv")).to_have_count(2)


def test_a_search_hit_on_another_branch_makes_that_branch_current(make_server: Any, page: Any) -> None:
    server = make_server("sqlite")
    sent = record_frames(page)
    open_chat(page, server.base_url + "/")
    send(page, "alpha walrus")
    expect(replies(page, "complete").locator(".cw-bubble")).to_have_text("You said: alpha walrus")
    edit(page, "alpha walrus", "beta penguin")
    expect(replies(page, "complete").locator(".cw-bubble")).to_have_text("You said: beta penguin")
    expect(version_of(user_message(page, "beta penguin"))).to_have_text("2 / 2")
    rest = rest_of(page, server)
    [conv] = rest.conversations()
    button(page, "New chat").click()

    hits = search(page, "walrus").locator(".cw-hit")
    expect(hits).to_have_count(2)  # "alpha walrus" and its reply, both on the first branch
    hit = hits.and_(page.locator("[data-role=user]"))
    walrus_id = hit.get_attribute("data-message-id")
    hit.click()
    walrus = user_message(page, "alpha walrus")
    expect(walrus).to_have_attribute("data-found", "true")
    expect(walrus).to_be_in_viewport()
    expect(version_of(walrus)).to_have_text("1 / 2")
    expect(replies(page).locator(".cw-bubble")).to_have_text(["You said: alpha walrus"])
    expect(user_message(page, "beta penguin")).to_have_count(0)
    selects = [f for f in sent if f["type"] == "select"]
    assert selects == [{"type": "select", "conversation_id": conv["id"], "message_id": walrus_id}], selects
    leaf = rest.tree(conv["id"])["leaf_id"]
    assert leaf == replies(page).get_attribute("data-id"), "the branch found is the current one now"


def test_the_settings_panel_saves_a_system_prompt_and_a_model_and_shows_what_is_refused(
        make_server: Any, page: Any, tmp_path: Path) -> None:
    server = make_server("sqlite", CHAT_MODELS="echo,echo-large", CHAT_MAX_MESSAGE_CHARS=100)
    open_chat(page, server.base_url + "/")
    expect(button(page, "Conversation settings")).to_be_disabled()  # a new chat has no settings yet
    send(page, "hello settings")
    expect(replies(page, "complete")).to_have_count(1)
    rest = rest_of(page, server)
    [conv] = rest.conversations()

    panel = settings_panel(page)
    expect(panel.get_by_label("Title", exact=True)).to_be_focused()
    expect(panel.get_by_label("Title", exact=True)).to_have_value("hello settings")
    model = panel.get_by_label("Model", exact=True)
    expect(model.locator("option")).to_have_text(["Server default (echo)", "echo", "echo-large"])
    expect(model).to_have_value("")
    panel.get_by_label("System prompt", exact=True).fill("You are terse.")
    model.select_option("echo-large")
    button(page, "Save settings").click()
    expect(panel.get_by_role("status")).to_have_text("Saved.")
    stored = conversation(rest, conv["id"])
    assert stored["system_prompt"] == "You are terse." and stored["model"] == "echo-large", stored
    assert stored["title_source"] == "words", "an unchanged title is not sent"

    # Closed and opened again: the panel shows what is stored.
    button(page, "Close").click()
    expect(panel).to_be_hidden()
    panel = settings_panel(page)
    expect(panel.get_by_label("System prompt", exact=True)).to_have_value("You are terse.")
    expect(model).to_have_value("echo-large")

    error = panel.locator(".cw-settings-error")
    panel.get_by_label("Title", exact=True).fill("t" * 201)
    button(page, "Save settings").click()
    expect(error).to_contain_text("Not saved: title")
    panel.get_by_label("Title", exact=True).fill("hello settings")
    panel.get_by_label("System prompt", exact=True).fill("p" * 101)
    button(page, "Save settings").click()
    expect(error).to_contain_text("Not saved: system_prompt must be at most 100 characters")
    panel.get_by_label("System prompt", exact=True).fill("You are terse.")
    # A model the server no longer offers (the list changed since the picker was filled).
    page.evaluate(f"""() => {{
        const select = {SHADOW}.querySelector('.cw-settings select');
        select.add(new Option('gone-model', 'gone-model'));
        select.value = 'gone-model';
        select.dispatchEvent(new Event('change'));
    }}""")
    button(page, "Save settings").click()
    expect(error).to_contain_text("Not saved: model must be one of")
    stored = conversation(rest, conv["id"])
    assert (stored["title"], stored["system_prompt"], stored["model"]) == (
        "hello settings", "You are terse.", "echo-large"), stored

    # Back to the server's defaults.
    model.select_option("")
    panel.get_by_label("System prompt", exact=True).fill("")
    button(page, "Save settings").click()
    expect(panel.get_by_role("status")).to_have_text("Saved.")
    expect(error).to_have_text("")
    stored = conversation(rest, conv["id"])
    assert stored["system_prompt"] is None and stored["model"] is None, stored

    # Exports: downloads fetched with the token.
    with page.expect_download() as got:
        button(page, "Export JSON").click()
    download = got.value
    assert download.suggested_filename == "hello settings.json"
    exported = json.loads(Path(download.path()).read_text())
    assert exported["conversation"]["id"] == conv["id"]
    assert [m["content"] for m in exported["messages"]] == ["hello settings", "You said: hello settings"]
    with page.expect_download() as got:
        button(page, "Export Markdown").click()
    assert got.value.suggested_filename == "hello settings.md"
    assert "You said: hello settings" in Path(got.value.path()).read_text()


def test_thumbs_up_is_stored_and_shown_pressed_after_a_reload(make_server: Any, page: Any) -> None:
    server = make_server("sqlite")
    open_chat(page, server.base_url + "/")
    send(page, "rate me")
    reply = replies(page, "complete")
    expect(reply).to_have_count(1)
    up = reply.get_by_role("button", name="Good reply", exact=True)
    down = reply.get_by_role("button", name="Bad reply", exact=True)
    expect(up).to_have_attribute("aria-pressed", "false")
    up.click()
    expect(up).to_have_attribute("aria-pressed", "true")
    expect(down).to_have_attribute("aria-pressed", "false")
    expect(up).to_be_focused()
    rest = rest_of(page, server)
    [conv] = rest.conversations()

    def rating() -> Any:
        return rest.all_messages(conv["id"])[-1]["feedback"]

    assert wait_for(lambda: (rating() or {}).get("rating") == 1), rating()
    page.reload()
    expect(replies(page, "complete").get_by_role("button", name="Good reply", exact=True)
           ).to_have_attribute("aria-pressed", "true")

    # Pressing the pressed one again takes the rating back; the other one replaces it.
    up.click()
    expect(up).to_have_attribute("aria-pressed", "false")
    assert wait_for(lambda: (rating() or {}).get("rating") == 0), rating()
    down.click()
    expect(down).to_have_attribute("aria-pressed", "true")
    assert wait_for(lambda: (rating() or {}).get("rating") == -1), rating()
