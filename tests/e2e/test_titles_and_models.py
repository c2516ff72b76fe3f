"""Titles from the model (CHAT_TITLES=model), a conversation's system prompt and model as what its
turns send, and GET /api/models from the backend: the real `openai` SDK in a real server process
against the fake OpenAI-compatible server on loopback. Last, conversation_updated across two
processes on one PostgreSQL.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from fake_llm import FakeLLM
from support.client import Client, aio, api, next_of, poll

SYSTEM = "You are a test."


@pytest.fixture
def fake() -> Iterator[FakeLLM]:
    f = FakeLLM(delay=0).start()
    yield f
    f.stop()


def env(fake: FakeLLM, **more: object) -> dict[str, object]:
    return {"CHAT_LLM": "openai", "OPENAI_BASE_URL": fake.base_url, "OPENAI_API_KEY": "sk-test",
            "CHAT_MODEL": "fake-model", "CHAT_SYSTEM_PROMPT": SYSTEM, "CHAT_LLM_RETRIES": "0", **more}




def title_requests(fake: FakeLLM) -> list:
    return [call for call in fake.calls if not call.body.get("stream")]


# -- system prompt and model -------------------------------------------------------------------------------
@aio
async def test_a_conversations_system_prompt_and_model_are_what_its_turns_send(db, make_server, fake):
    fake.models = ["fake-model", "other-model"]
    server = make_server(db, **env(fake))
    c = await Client.open(server)
    try:
        conv = (await c.complete("first")).ack["conversation_id"]
        assert fake.calls[-1].body["model"] == "fake-model"
        assert fake.calls[-1].body["messages"][0] == {"role": "system", "content": SYSTEM}
        with api(server, c) as h:
            r = h.patch(f"/api/conversations/{conv}", json={"system_prompt": "Answer in French.",
                                                           "model": "other-model"})
            assert r.status_code == 200, r.text
            await c.complete("second")
            body = fake.calls[-1].body
            assert body["model"] == "other-model"
            assert body["messages"][0] == {"role": "system", "content": "Answer in French."}
            assert body["messages"][-1] == {"role": "user", "content": "second"}
            # Another conversation keeps the defaults.
            await c.complete("elsewhere", conversation_id=None)
            assert fake.calls[-1].body["model"] == "fake-model"
            assert fake.calls[-1].body["messages"][0]["content"] == SYSTEM
            # "" is a prompt of its own (none at all); null is the default again.
            h.patch(f"/api/conversations/{conv}", json={"system_prompt": "", "model": None})
            await c.complete("third", conversation_id=conv)
            assert fake.calls[-1].body["messages"][0] != {"role": "system", "content": SYSTEM}
            assert all(m["role"] != "system" for m in fake.calls[-1].body["messages"])
            assert fake.calls[-1].body["model"] == "fake-model"
            h.patch(f"/api/conversations/{conv}", json={"system_prompt": None})
            await c.complete("fourth", conversation_id=conv)
            assert fake.calls[-1].body["messages"][0] == {"role": "system", "content": SYSTEM}
    finally:
        await c.close()


@aio
async def test_models_come_from_the_backend_once_per_cache_period_and_patch_takes_only_those(make_server, fake):
    fake.models = ["zeta", "alpha"]
    server = make_server("sqlite", **env(fake))
    c = await Client.open(server)
    try:
        conv = (await c.complete("hi")).ack["conversation_id"]
        listings = fake.model_listings
        with api(server, c) as h:
            expected = {"items": [{"id": "alpha"}, {"id": "fake-model"}, {"id": "zeta"}], "default": "fake-model"}
            assert h.get("/api/models").json() == expected
            assert h.get("/api/models").json() == expected
            assert fake.model_listings == listings + 1  # cached
            assert h.patch(f"/api/conversations/{conv}", json={"model": "zeta"}).status_code == 200
            assert h.patch(f"/api/conversations/{conv}", json={"model": "gpt-99"}).status_code == 422
    finally:
        await c.close()


@aio
async def test_models_pinned_by_chat_models_never_ask_the_backend(make_server, fake):
    server = make_server("sqlite", **env(fake, CHAT_MODELS="b-model,fake-model"))
    c = await Client.open(server)
    try:
        listings = fake.model_listings  # /readyz asks too: this is about /api/models
        with api(server, c) as h:
            assert h.get("/api/models").json() == {"items": [{"id": "b-model"}, {"id": "fake-model"}],
                                                   "default": "fake-model"}
        assert fake.model_listings == listings
    finally:
        await c.close()


@aio
async def test_a_backend_that_cannot_list_its_models_still_offers_the_default(make_server, fake):
    fake.stop()  # nothing listens at its address any more
    server = make_server("sqlite", **env(fake, CHAT_LLM_CONNECT_TIMEOUT_S="1"))
    c = await Client.open(server)
    try:
        with api(server, c) as h:
            r = h.get("/api/models")
            assert r.status_code == 200 and r.json() == {"items": [{"id": "fake-model"}], "default": "fake-model"}
        assert "could not list the backend's models" in server.log_tail(40)
    finally:
        await c.close()


# -- titles ------------------------------------------------------------------------------------------------
@aio
async def test_the_model_titles_a_new_conversation_once_without_its_reasoning_and_sync_sockets_hear_it(
        db, make_server, fake):
    server = make_server(db, **env(fake, CHAT_TITLES="model", CHAT_TITLE_MAX_TOKENS="40"))
    c = await Client.open(server)
    tab = await Client.open(server, token=c.token, sync=True)
    try:
        fake.reset({}, {"content": "<think>The user asks about eggs.\nA title...</think>\n"
                                   "**Title:** \"Boiling Eggs Quickly.\"\nThis is a fine title."})
        t = await c.complete("how do I boil an egg quickly?")
        conv = t.ack["conversation_id"]
        updated = await next_of(tab, "conversation_updated")
        assert updated["conversation"]["id"] == conv
        assert updated["conversation"]["title"] == "Boiling Eggs Quickly"
        assert updated["conversation"]["title_source"] == "model"
        asks = title_requests(fake)
        assert len(asks) == 1 and asks[0].body["max_tokens"] == 40 and asks[0].body["model"] == "fake-model"
        assert "how do I boil an egg quickly?" in asks[0].body["messages"][-1]["content"]
        with api(server, c) as h:
            assert h.get(f"/api/conversations/{conv}").json()["title"] == "Boiling Eggs Quickly"
        await c.complete("a second turn")  # not the first reply: no second title
        await asyncio.sleep(0.3)
        assert len(title_requests(fake)) == 1
    finally:
        await c.close()
        await tab.close()


@pytest.mark.parametrize("answer, expected", [
    ("word " * 40, None),  # cut at a word, at most 80 characters
    ("<think>only reasoning, cut off by the token cap", "first words of mine"),
    ("", "first words of mine"),
    ("   \n  ", "first words of mine"),
])
@aio
async def test_a_model_title_is_at_most_80_characters_and_an_empty_one_keeps_the_first_words(
        make_server, fake, answer, expected):
    server = make_server("sqlite", **env(fake, CHAT_TITLES="model"))
    c = await Client.open(server)
    try:
        fake.reset({}, {"content": answer})
        conv = (await c.complete("first words of mine")).ack["conversation_id"]
        with api(server, c) as h:
            await poll(lambda: len([x for x in title_requests(fake) if x.finished]), lambda n: n == 1)
            await asyncio.sleep(0.3)
            title = h.get(f"/api/conversations/{conv}").json()["title"]
        if expected is None:
            assert len(title) <= 80 and title.startswith("word word") and title.endswith("…")
        else:
            assert title == expected
    finally:
        await c.close()


@aio
async def test_a_failed_title_request_keeps_the_first_words_and_the_reply_is_unharmed(db, make_server, fake):
    server = make_server(db, **env(fake, CHAT_TITLES="model"))
    c = await Client.open(server)
    tab = await Client.open(server, token=c.token, sync=True)
    try:
        fake.reset({}, {"status": 500})
        t = await c.complete("keep these words")
        await poll(lambda: len(title_requests(fake)), lambda n: n == 1)
        with pytest.raises(TimeoutError):
            await next_of(tab, "conversation_updated", timeout=1.0)
        with api(server, c) as h:
            got = h.get(f"/api/conversations/{t.ack['conversation_id']}").json()
            assert (got["title"], got["title_source"]) == ("keep these words", "words")
    finally:
        await c.close()
        await tab.close()


@aio
async def test_a_rename_while_the_title_is_asked_for_is_never_replaced(db, make_server, fake):
    server = make_server(db, **env(fake, CHAT_TITLES="model"))
    c = await Client.open(server)
    try:
        fake.reset({}, {"content": "The Model's Title", "delay": 1.5})
        conv = (await c.complete("slow title please")).ack["conversation_id"]
        with api(server, c) as h:
            await poll(lambda: len(title_requests(fake)), lambda n: n == 1)
            assert h.patch(f"/api/conversations/{conv}", json={"title": "Mine"}).status_code == 200
            await poll(lambda: title_requests(fake)[0].finished, lambda done: done)
            await asyncio.sleep(0.5)
            got = h.get(f"/api/conversations/{conv}").json()
            assert (got["title"], got["title_source"]) == ("Mine", "user")
    finally:
        await c.close()


@aio
async def test_first_words_titles_ask_the_backend_nothing_more(make_server, fake):
    server = make_server("sqlite", **env(fake))
    c = await Client.open(server)
    try:
        await c.complete("one")
        await c.complete("two", conversation_id=None)
        await asyncio.sleep(0.3)
        assert len(fake.calls) == 2 and title_requests(fake) == []
    finally:
        await c.close()


# -- many processes ----------------------------------------------------------------------------------------
@aio
async def test_a_rename_and_a_model_title_on_one_process_reach_sync_sockets_on_the_other(pair, fake):
    a, b = pair(**env(fake, CHAT_TITLES="model"))
    c = await Client.open(a)
    tab = await Client.open(b, token=c.token, sync=True)
    other_user = await Client.open(b, sync=True)
    try:
        fake.reset({}, {"content": "Across Processes"})
        conv = (await c.complete("a title from the model, please")).ack["conversation_id"]
        titled = await next_of(tab, "conversation_updated")
        assert (titled["conversation"]["id"], titled["conversation"]["title"]) == (conv, "Across Processes")
        with api(a, c) as h:
            long_prompt = "p" * 20_000  # larger than a notification can carry: read on the other side
            body = h.patch(f"/api/conversations/{conv}", json={"title": "Renamed", "system_prompt": long_prompt}).json()
        renamed = await next_of(tab, "conversation_updated")
        assert renamed["conversation"] == body
        with pytest.raises(TimeoutError):
            await next_of(other_user, "conversation_updated", timeout=0.7)
    finally:
        for s in (c, tab, other_user):
            await s.close()
