"""Conversations people shape: titles, PATCH (title, system_prompt, model), GET /api/models,
conversation_updated on the user's sync sockets, feedback on replies, and export (JSON with the
whole tree, Markdown of the current branch). On both databases, against a real process.
"""

from __future__ import annotations

import json
import re

import httpx
import pytest
from support.client import Client, aio, api, cid, next_of

ECHO = "You said: "





# -- titles ----------------------------------------------------------------------------------------------
@aio
async def test_a_new_conversation_is_titled_with_its_first_words_and_later_messages_leave_it(server):
    c = await Client.open(server)
    try:
        t = await c.complete("  How do   I\nboil an egg quickly?  ")
        await c.complete("and a second question that must not become the title")
        with api(server, c) as h:
            items = h.get("/api/conversations").json()["items"]
        assert [(i["id"], i["title"], i["title_source"]) for i in items] == [
            (t.ack["conversation_id"], "How do I boil an egg quickly?", "words")]
        assert items[0]["model"] is None and items[0]["system_prompt"] is None
    finally:
        await c.close()


@aio
async def test_a_long_first_message_gives_a_title_of_at_most_80_characters(server):
    c = await Client.open(server)
    try:
        await c.complete("word " * 100)
        with api(server, c) as h:
            title = h.get("/api/conversations").json()["items"][0]["title"]
        assert len(title) <= 80 and title.startswith("word word") and title.endswith("…")
    finally:
        await c.close()


# -- PATCH -----------------------------------------------------------------------------------------------
@aio
async def test_patch_renames_and_sets_settings_and_every_sync_socket_of_the_user_hears_it(server):
    c = await Client.open(server)
    tab = await Client.open(server, token=c.token, sync=True)
    stranger = await Client.open(server, sync=True)
    try:
        conv = (await c.complete("first words")).ack["conversation_id"]
        with api(server, c) as h:
            r = h.patch(f"/api/conversations/{conv}", json={"title": "  My\tplan  ", "system_prompt": "Be terse.",
                                                           "model": "echo"})
            assert r.status_code == 200, r.text
            body = r.json()
            assert {k: body[k] for k in ("id", "title", "title_source", "system_prompt", "model")} == {
                "id": conv, "title": "My plan", "title_source": "user", "system_prompt": "Be terse.", "model": "echo"}
            updated = await next_of(tab, "conversation_updated")
            assert updated["conversation"] == body
            # One field at a time; the others stay. null returns to the server's default.
            r = h.patch(f"/api/conversations/{conv}", json={"system_prompt": None})
            assert r.status_code == 200 and r.json()["system_prompt"] is None and r.json()["model"] == "echo"
            assert r.json()["title"] == "My plan"
            assert (await next_of(tab, "conversation_updated"))["conversation"]["system_prompt"] is None
            assert h.get(f"/api/conversations/{conv}").json() == r.json()
            listed = h.get("/api/conversations").json()["items"][0]
            assert listed == r.json()
        # Nobody else hears it: the stranger's socket gets nothing at all.
        with pytest.raises(TimeoutError):
            await stranger.recv(0.5)
    finally:
        for s in (c, tab, stranger):
            await s.close()


@aio
async def test_a_renamed_conversation_keeps_its_title_through_more_turns(server):
    c = await Client.open(server)
    try:
        conv = (await c.complete("original first words")).ack["conversation_id"]
        with api(server, c) as h:
            assert h.patch(f"/api/conversations/{conv}", json={"title": "Mine"}).status_code == 200
            await c.complete("another message")
            await c.complete("edited first message", parent_id=None, conversation_id=conv)  # a new root
            assert h.get(f"/api/conversations/{conv}").json()["title"] == "Mine"
    finally:
        await c.close()


BAD_PATCHES = {
    "empty title": {"title": ""},
    "blank title": {"title": " \n\t "},
    "null title": {"title": None},
    "title too long": {"title": "x" * 201},
    "title not a string": {"title": 5},
    "title with NUL": {"title": "a\u0000b"},
    "prompt too long": {"system_prompt": "x" * 32_001},
    "prompt with NUL": {"system_prompt": "a\u0000b"},
    "unknown model": {"model": "gpt-99"},
    "model not a string": {"model": ["echo"]},
    "unknown field": {"colour": "red"},
    "not an object": ["title", "x"],
}


@pytest.mark.parametrize("name", list(BAD_PATCHES))
@aio
async def test_a_bad_patch_is_422_and_changes_nothing(server, name):
    c = await Client.open(server)
    try:
        conv = (await c.complete("keep me as I am")).ack["conversation_id"]
        with api(server, c) as h:
            before = h.get(f"/api/conversations/{conv}").json()
            r = h.patch(f"/api/conversations/{conv}", json=BAD_PATCHES[name])
            assert r.status_code == 422, r.text
            assert r.json()["detail"]
            assert h.get(f"/api/conversations/{conv}").json() == before
    finally:
        await c.close()


@aio
async def test_patch_of_someone_elses_or_an_unknown_conversation_is_404(server):
    owner = await Client.open(server)
    other = await Client.open(server)
    try:
        conv = (await owner.complete("not yours")).ack["conversation_id"]
        with api(server, other) as h:
            for target in (conv, "00000000-0000-0000-0000-000000000000", "x" * 300):
                r = h.patch(f"/api/conversations/{target}", json={"title": "stolen"})
                assert r.status_code == 404, (target, r.text)
                assert h.get(f"/api/conversations/{target}").status_code == 404
        with api(server, owner) as h:
            assert h.get(f"/api/conversations/{conv}").json()["title"] == "not yours"
        with api(server, None) as anonymous:
            assert anonymous.patch(f"/api/conversations/{conv}", json={"title": "x"}).status_code == 401
    finally:
        await owner.close()
        await other.close()


@aio
async def test_the_echo_backend_lists_echo_as_its_only_and_default_model(server):
    c = await Client.open(server)
    try:
        with api(server, c) as h:
            assert h.get("/api/models").json() == {"items": [{"id": "echo"}], "default": "echo"}
        with api(server, None) as anonymous:
            assert anonymous.get("/api/models").status_code == 401
    finally:
        await c.close()


@aio
async def test_chat_models_pins_the_list_that_patch_accepts(db, make_server):
    server = make_server(db, CHAT_MODELS="small, large ,small", CHAT_ECHO_DELAY_MS=0)
    c = await Client.open(server)
    try:
        conv = (await c.complete("hello")).ack["conversation_id"]
        with api(server, c) as h:
            assert h.get("/api/models").json() == {"items": [{"id": "small"}, {"id": "large"}], "default": "small"}
            assert h.patch(f"/api/conversations/{conv}", json={"model": "large"}).json()["model"] == "large"
            assert h.patch(f"/api/conversations/{conv}", json={"model": "echo"}).status_code == 422
    finally:
        await c.close()


# -- feedback --------------------------------------------------------------------------------------------
def metric(server, rating: str, model: str) -> float:
    text = httpx.get(f"{server.base_url}/metrics").text
    found = re.search(rf'^chat_feedback_total\{{model="{re.escape(model)}",rating="{re.escape(rating)}"\}} (\S+)$',
                      text, re.M)
    return float(found.group(1)) if found else 0.0


@aio
async def test_feedback_on_a_reply_shows_in_history_frame_http_and_export_and_counts_by_rating_and_model(server):
    c = await Client.open(server)
    try:
        t = await c.complete("rate this")
        conv, reply = t.ack["conversation_id"], t.done["message_id"]
        down_before = metric(server, "-1", "echo")
        with api(server, c) as h:
            r = h.put(f"/api/messages/{reply}/feedback", json={"rating": -1, "comment": "wrong, the egg exploded"})
            assert r.status_code == 200, r.text
            assert r.json() == {"message_id": reply, "conversation_id": conv,
                                "feedback": {"rating": -1, "comment": "wrong, the egg exploded"}}
            assert metric(server, "-1", "echo") == down_before + 1
            page = h.get(f"/api/conversations/{conv}/messages").json()["messages"]
            assert [m.get("feedback", "absent") for m in page] == [
                "absent", {"rating": -1, "comment": "wrong, the egg exploded"}]
            frame = await c.history(conv)
            assert frame["messages"][1]["feedback"] == {"rating": -1, "comment": "wrong, the egg exploded"}
            # Changed again: the last one stands; 0 without a comment clears the thumbs.
            assert h.put(f"/api/messages/{reply}/feedback", json={"rating": 0}).status_code == 200
            exported = h.get(f"/api/conversations/{conv}/export").json()
            assert exported["messages"][1]["feedback"] == {"rating": 0, "comment": None}
    finally:
        await c.close()


@aio
async def test_feedback_on_a_user_message_or_with_a_bad_rating_is_422_and_on_someone_elses_404(server):
    c = await Client.open(server)
    other = await Client.open(server)
    try:
        t = await c.complete("mine")
        reply, own = t.done["message_id"], t.ack["message_id"]
        with api(server, c) as h:
            assert h.put(f"/api/messages/{own}/feedback", json={"rating": 1}).status_code == 422
            for body in ({"rating": 2}, {"rating": -2}, {"rating": "1"}, {"rating": 1.0}, {"rating": True},
                         {}, {"rating": 1, "comment": "x" * 2001}, {"rating": 1, "extra": 1}):
                assert h.put(f"/api/messages/{reply}/feedback", json=body).status_code == 422, body
            assert h.put("/api/messages/00000000-0000-0000-0000-000000000000/feedback",
                         json={"rating": 1}).status_code == 404
            history = h.get(f"/api/conversations/{t.ack['conversation_id']}/messages").json()["messages"]
            assert history[1]["feedback"] is None  # none of the refused ones was stored
        with api(server, other) as h:
            assert h.put(f"/api/messages/{reply}/feedback", json={"rating": 1}).status_code == 404
    finally:
        await c.close()
        await other.close()


# -- export ----------------------------------------------------------------------------------------------
@aio
async def test_export_holds_the_settings_and_the_whole_tree_and_markdown_the_current_branch(server):
    c = await Client.open(server)
    try:
        t1 = await c.complete("the first question")
        conv, m1, r1 = t1.ack["conversation_id"], t1.ack["message_id"], t1.done["message_id"]
        t2 = await c.complete("the old follow-up")
        t3 = await c.complete("the new follow-up", client_id=cid(), parent_id=r1)  # an edit: a second branch
        with api(server, c) as h:
            h.patch(f"/api/conversations/{conv}", json={"title": "Eggs", "system_prompt": "Line one\n\nLine two"})
            h.put(f"/api/messages/{r1}/feedback", json={"rating": 1, "comment": "good"})
            r = h.get(f"/api/conversations/{conv}/export")
            assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
            assert 'filename="Eggs.json"' in r.headers["content-disposition"]
            body = r.json()
            assert {k: body["conversation"][k] for k in ("id", "title", "system_prompt", "model", "leaf_id")} == {
                "id": conv, "title": "Eggs", "system_prompt": "Line one\n\nLine two", "model": None,
                "leaf_id": t3.done["message_id"]}
            messages = body["messages"]
            assert [m["id"] for m in messages] == [m1, r1, t2.ack["message_id"], t2.done["message_id"],
                                                  t3.ack["message_id"], t3.done["message_id"]]
            assert [m["parent_id"] for m in messages] == [None, m1, r1, t2.ack["message_id"], r1,
                                                          t3.ack["message_id"]]
            assert [m["status"] for m in messages] == ["complete"] * 6
            assert messages[1]["feedback"] == {"rating": 1, "comment": "good"}
            assert messages[3]["content"] == ECHO + "the old follow-up"

            md = h.get(f"/api/conversations/{conv}/export", params={"format": "markdown"})
            assert md.status_code == 200 and md.headers["content-type"].startswith("text/markdown")
            assert 'filename="Eggs.md"' in md.headers["content-disposition"]
            text = md.text
            assert text.startswith("# Eggs\n") and "> Line one\n>\n> Line two" in text
            order = [text.index(s) for s in ("the first question", ECHO + "the first question", "the new follow-up",
                                             ECHO + "the new follow-up")]
            assert order == sorted(order)
            assert "the old follow-up" not in text  # another branch
            assert text.count("## You") == 2 and text.count("## Assistant") == 2

            assert h.get(f"/api/conversations/{conv}/export", params={"format": "pdf"}).status_code == 422
    finally:
        await c.close()


@aio
async def test_export_of_someone_elses_or_unknown_conversation_is_404(server):
    owner = await Client.open(server)
    other = await Client.open(server)
    try:
        conv = (await owner.complete("private")).ack["conversation_id"]
        with api(server, other) as h:
            for fmt in ("json", "markdown"):
                assert h.get(f"/api/conversations/{conv}/export", params={"format": fmt}).status_code == 404
                assert h.get("/api/conversations/00000000-0000-0000-0000-000000000000/export",
                             params={"format": fmt}).status_code == 404
    finally:
        await owner.close()
        await other.close()


@aio
async def test_markdown_export_of_an_unsafe_title_gives_a_plain_filename_and_marks_unfinished_replies(
        db, make_server):
    server = make_server(db, CHAT_ECHO_DELAY_MS=100)
    c = await Client.open(server)
    try:
        await c.message('a "quoted"\r\ntitle/../x ünï ' + "word " * 20)
        await c.expect("ack")
        await c.expect("start")
        await c.send({"type": "cancel"})
        while (await c.recv())["type"] != "done":
            pass
        with api(server, c) as h:
            conv = h.get("/api/conversations").json()["items"][0]["id"]
            r = h.get(f"/api/conversations/{conv}/export", params={"format": "markdown"})
            disposition = r.headers["content-disposition"]
            assert re.fullmatch(r'attachment; filename="[A-Za-z0-9 .,()_-]+\.md"', disposition), disposition
            assert "## Assistant (cancelled)" in r.text
            json.loads(h.get(f"/api/conversations/{conv}/export").text)
    finally:
        await c.close()
