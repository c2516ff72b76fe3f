"""GET /api/conversations pages (?before=&limit=, {"items", "has_more"}), as the contract says."""

from __future__ import annotations

import httpx
from support.client import Client, Rest, aio

LIMITS = {"CHAT_RATE_LIMIT_PER_MINUTE": 1000, "CHAT_MAX_FRAMES_PER_SECOND": 1000}


def page(rest: Rest, **params: object) -> httpx.Response:
    return rest.http.get("/api/conversations", params={k: str(v) for k, v in params.items()})


@aio
async def test_conversations_page_until_every_one_is_reached(db, make_server):
    server = make_server(db, **LIMITS)
    c = await Client.open(server)
    other = await Client.open(server)
    try:
        created = [(await c.complete(f"conversation {i}", conversation_id=None)).ack["conversation_id"]
                   for i in range(12)]
        theirs = (await other.complete("not yours", conversation_id=None)).ack["conversation_id"]
        rest = Rest(server, c.token)

        whole = page(rest).json()  # default limit 50
        assert whole["has_more"] is False and [i["id"] for i in whole["items"]] == created[::-1]

        seen, before, sizes = [], None, []
        while True:
            r = page(rest, limit=5, **({"before": before} if before else {}))
            assert r.status_code == 200, r.text
            body = r.json()
            assert set(body) == {"items", "has_more"}
            sizes.append(len(body["items"]))
            seen += [i["id"] for i in body["items"]]
            if not body["has_more"]:
                break
            before = body["items"][-1]["id"]
        assert sizes == [5, 5, 2] and seen == created[::-1]

        for limit in (0, 201, "many"):
            assert page(rest, limit=limit).status_code == 422
        assert page(rest, limit=200).status_code == 200
        for before in ("no-such-conversation", theirs, "a\x00b"):
            assert page(rest, before=before).status_code == 400
    finally:
        await c.close()
        await other.close()
