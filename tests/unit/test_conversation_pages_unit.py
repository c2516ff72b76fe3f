"""conversations.page pages by keyset: newest updated_at first, ties by id, every conversation
reachable however many share a timestamp or however many there are."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import create_engine

from server.db import conversations
from server.db.schema import metadata
from server.db.store import InvalidBefore, Store


@pytest.fixture
def store():
    engine = create_engine("sqlite://")
    metadata.create_all(engine)
    with engine.begin() as conn:
        yield Store(conn)


def fill(store: Store, user: str, n: int) -> None:
    base = datetime(2026, 1, 1, tzinfo=UTC)
    for i in range(n):
        # Groups of five share one updated_at: the tie-break must not lose or repeat any.
        store.create_conversation(user, f"conversation {i}", base + timedelta(seconds=i // 5))


def pages(store: Store, user: str, limit: int) -> list[list[dict]]:
    out, before = [], None
    while True:
        items, has_more = conversations.page(store, user, before, limit)
        out.append(items)
        if not has_more:
            return out
        assert len(items) == limit
        before = items[-1]["id"]


@pytest.mark.parametrize("limit", [1, 7, 50, 200])
def test_every_conversation_is_reached_once_in_order(store, limit):
    fill(store, "alice", 233)
    fill(store, "bob", 3)
    seen = [item for page in pages(store, "alice", limit) for item in page]
    assert len(seen) == 233 and len({i["id"] for i in seen}) == 233
    expected = sorted(seen, key=lambda i: i["id"])
    expected.sort(key=lambda i: i["updated_at"], reverse=True)  # stable: newest first, then by id
    assert seen == expected


def test_has_more_is_false_on_an_exact_last_page(store):
    fill(store, "alice", 10)
    assert [len(p) for p in pages(store, "alice", 5)] == [5, 5]


def test_before_must_be_one_of_the_users_conversations(store):
    fill(store, "alice", 2)
    fill(store, "bob", 1)
    bobs = conversations.page(store, "bob")[0][0]["id"]
    for before in (bobs, "no-such-id"):
        with pytest.raises(InvalidBefore):
            conversations.page(store, "alice", before, 10)
