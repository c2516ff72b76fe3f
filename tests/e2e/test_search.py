"""GET /api/search and GET /api/conversations?q= on both databases, against a real process: every
word of q, whole and in any case; newest first, paged with `before`; a snippet with the matched
words marked and everything else escaped; never another user's rows; the index follows every
message stored (both roles, every branch) and every conversation deleted; bad input is 400/422.
"""

from __future__ import annotations

import html
import re
import uuid

import httpx
import pytest
from support.client import Client, aio, api, cid

ECHO = "You said: "




def hits(h: httpx.Client, q: str, **params) -> list[dict]:
    r = h.get("/api/search", params={"q": q, **params})
    assert r.status_code == 200, r.text
    return r.json()["items"]


def unmarked(snippet: str) -> str:
    return html.unescape(snippet.replace("<mark>", "").replace("</mark>", ""))


@aio
async def test_every_word_in_any_case_newest_first_from_both_roles_and_never_another_users(server):
    token = uuid.uuid4().hex[:8]  # a word only this test uses: the shared server holds other tests' rows
    alice = await Client.open(server)
    bob = await Client.open(server)
    try:
        a1 = await alice.complete(f"Zebra{token} crossing the road")
        a2 = await alice.complete(f"the road to zebra{token} land", conversation_id=None)
        a3 = await alice.complete(f"ZEBRA{token} only")
        b1 = await bob.complete(f"zebra{token} road for bob")  # the same words, another user
        with api(server, alice) as h:
            both = hits(h, f"road zebra{token}")
            # a2's reply, a2, a1's reply, a1: newest first; a3 lacks "road"; bob's are not hers.
            assert [(x["message_id"], x["role"]) for x in both] == [
                (a2.done["message_id"], "assistant"), (a2.ack["message_id"], "user"),
                (a1.done["message_id"], "assistant"), (a1.ack["message_id"], "user")]
            assert [x["conversation_id"] for x in both] == [a2.ack["conversation_id"]] * 2 + [
                a1.ack["conversation_id"]] * 2
            created = [x["created_at"] for x in both]
            assert created == sorted(created, reverse=True)
            assert {x["message_id"] for x in hits(h, f"ZEBRA{token}")} == {
                t.ack["message_id"] for t in (a1, a2, a3)} | {t.done["message_id"] for t in (a1, a2, a3)}
            assert hits(h, f"zebra{token} nowhere{token}") == []
            assert hits(h, f"zebr{token[:2]}") == []  # whole words, not pieces of them
        with api(server, bob) as h:
            assert {x["message_id"] for x in hits(h, f"zebra{token}")} == {b1.ack["message_id"], b1.done["message_id"]}
    finally:
        await alice.close()
        await bob.close()


@aio
async def test_the_snippet_marks_the_words_and_escapes_everything_else(server):
    token = uuid.uuid4().hex[:8]
    c = await Client.open(server)
    try:
        filler = " ".join(f"filler{i}" for i in range(80))
        text = f'{filler} <img src=x onerror="alert(1)"> & Needle{token} "quoted" {filler}'
        t = await c.complete(text)
        with api(server, c) as h:
            found = [x for x in hits(h, f"needle{token}") if x["message_id"] == t.ack["message_id"]]
        assert len(found) == 1
        snippet = found[0]["snippet"]
        assert f"<mark>Needle{token}</mark>" in snippet
        assert re.sub(r"</?mark>", "", snippet).count("<") == 0  # no markup but the marks
        assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt; &amp;" in snippet
        assert len(unmarked(snippet)) <= 210 and snippet.startswith("…") and snippet.endswith("…")
        assert unmarked(snippet).strip("…") in " ".join(text.split())
    finally:
        await c.close()


@aio
async def test_paging_with_before_reaches_every_hit_once(server):
    token = uuid.uuid4().hex[:8]
    c = await Client.open(server)
    try:
        for i in range(7):
            await c.complete(f"page{token} number {i}")
        with api(server, c) as h:
            every = hits(h, f"page{token}", limit=200)
            assert len(every) == 14
            seen: list[str] = []
            before = None
            while True:
                params = {"q": f"page{token}", "limit": 3, **({"before": before} if before else {})}
                body = h.get("/api/search", params=params).json()
                seen += [x["message_id"] for x in body["items"]]
                if not body["has_more"]:
                    break
                before = body["items"][-1]["message_id"]
            assert seen == [x["message_id"] for x in every]
            # A `before` that is not a message of this user: 400, whoever's it is.
            assert h.get("/api/search", params={"q": "x", "before": str(uuid.uuid4())}).status_code == 400
    finally:
        await c.close()


@aio
async def test_a_before_from_another_user_is_refused_not_used(server):
    alice = await Client.open(server)
    bob = await Client.open(server)
    try:
        t = await bob.complete("bob's message")
        with api(server, alice) as h:
            r = h.get("/api/search", params={"q": "message", "before": t.ack["message_id"]})
            assert r.status_code == 400
    finally:
        await alice.close()
        await bob.close()


@aio
async def test_the_index_has_every_branch_and_loses_a_deleted_conversation(server):
    token = uuid.uuid4().hex[:8]
    c = await Client.open(server)
    try:
        t1 = await c.complete(f"original{token} question")
        edit = await c.complete(f"edited{token} question", client_id=cid(), parent_id=None,
                                conversation_id=t1.ack["conversation_id"])
        with api(server, c) as h:
            old = hits(h, f"original{token}")
            assert {x["message_id"] for x in old} == {t1.ack["message_id"], t1.done["message_id"]}
            assert {x["message_id"] for x in hits(h, f"edited{token}")} == {edit.ack["message_id"],
                                                                             edit.done["message_id"]}
            assert h.delete(f"/api/conversations/{t1.ack['conversation_id']}").status_code == 204
            assert hits(h, f"original{token}") == [] and hits(h, f"edited{token}") == []
    finally:
        await c.close()


@aio
async def test_unicode_words_match_in_any_case(server):
    c = await Client.open(server)
    token = uuid.uuid4().hex[:6]
    try:
        t = await c.complete(f"Über{token} den Fluß und ÉCOLE{token}")
        with api(server, c) as h:
            ids = {x["message_id"] for x in hits(h, f"über{token} école{token}")}
            assert t.ack["message_id"] in ids
    finally:
        await c.close()


@aio
async def test_operators_and_quotes_in_q_are_plain_words(server):
    token = uuid.uuid4().hex[:8]
    c = await Client.open(server)
    try:
        t = await c.complete(f"alpha{token} AND beta{token} NEAR gamma OR")
        with api(server, c) as h:
            for q in (f'"alpha{token}"', f"alpha{token} AND", f"alpha{token} OR NOT beta{token}",
                      f"alpha{token}* (beta{token})", f"alpha{token}:beta{token}", f"-alpha{token} !beta{token}",
                      f"alpha{token} & | ! <->"):
                r = h.get("/api/search", params={"q": q})
                assert r.status_code == 200, (q, r.text)
            assert t.ack["message_id"] in {x["message_id"] for x in hits(h, f'"alpha{token}" NEAR')}
            assert hits(h, f"alpha{token} NOT") == []  # "not" is a word it lacks
    finally:
        await c.close()


@pytest.mark.parametrize("params, status", [
    ({}, 422), ({"q": ""}, 400), ({"q": "   "}, 400), ({"q": "!!! ???"}, 400), ({"q": "x" * 201}, 422),
    ({"q": "x", "limit": 0}, 422), ({"q": "x", "limit": 201}, 422), ({"q": "x", "limit": "ten"}, 422),
    ({"q": "x", "before": "y" * 100}, 400),
])
@aio
async def test_bad_search_input_is_400_or_422(server, params, status):
    c = await Client.open(server)
    try:
        with api(server, c) as h:
            assert h.get("/api/search", params=params).status_code == status
        with api(server, None) as anonymous:
            assert anonymous.get("/api/search", params={"q": "x"}).status_code == 401
    finally:
        await c.close()


# -- the conversation list by title ------------------------------------------------------------------------
@aio
async def test_the_conversation_list_filters_by_every_word_of_q_in_the_title(server):
    token = uuid.uuid4().hex[:8]
    c = await Client.open(server)
    other = await Client.open(server)
    try:
        eggs = (await c.complete(f"Boiling eggs {token}")).ack["conversation_id"]
        pasta = (await c.complete(f"boiling PASTA {token}", conversation_id=None)).ack["conversation_id"]
        bread = (await c.complete(f"baking bread {token}", conversation_id=None)).ack["conversation_id"]
        await other.complete(f"boiling eggs {token}")
        with api(server, c) as h:
            def listed(q: str) -> list[str]:
                r = h.get("/api/conversations", params={"q": q})
                assert r.status_code == 200, r.text
                return [i["id"] for i in r.json()["items"]]

            assert listed(f"BOIL {token}") == [pasta, eggs]  # words inside title words count here
            assert listed(f"boiling eggs {token}") == [eggs]
            assert listed(f"{token} bread") == [bread]
            assert listed("100%") == [] and listed("_") == []  # LIKE's wildcards are plain characters
            h.patch(f"/api/conversations/{bread}", json={"title": f"Über Brot {token}"})
            assert listed(f"über {token}") == [bread] and listed(f"ÜBER {token}") == [bread]
            assert h.get("/api/conversations", params={"q": "  "}).status_code == 400
            assert h.get("/api/conversations", params={"q": "x" * 201}).status_code == 422
            page = h.get("/api/conversations", params={"q": token, "limit": 1}).json()
            assert page["has_more"] and len(page["items"]) == 1
            rest = h.get("/api/conversations", params={"q": token, "limit": 5, "before": page["items"][0]["id"]})
            assert [i["id"] for i in page["items"] + rest.json()["items"]] == [bread, pasta, eggs]
    finally:
        await c.close()
        await other.close()
