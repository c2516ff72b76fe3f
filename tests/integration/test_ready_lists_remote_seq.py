"""`ready.replies_in_flight[].seq` is "deltas sent so far", also for a reply streaming in another
process (it was 0 there). Two reply buses on one PostgreSQL, in-process."""

from __future__ import annotations

import pytest
from support.inprocess import aio

from server.config import Settings
from server.db.engine import make_engine
from server.db.migrate import upgrade_to_head
from server.db.uow import Database
from server.domain import Claim, new_id, unsaved
from server.replies.postgres.bus import PgReplyBus

pytestmark = pytest.mark.usefixtures("pg")


@pytest.fixture
def pg_url(databases) -> str:  # type: ignore[no-untyped-def]
    return str(databases.url("postgres"))


@aio
async def test_ready_lists_the_seq_a_reply_of_another_process_has_reached(pg_url):
    settings = Settings(database_url=pg_url)
    await upgrade_to_head(settings)
    db = Database(make_engine(settings))
    owner, other = PgReplyBus(60, 5, db, "a" * 32), PgReplyBus(60, 5, db, "b" * 32)
    await owner.start(pg_url, 0.005)
    await other.start(pg_url, 0.005)
    try:
        claim = Claim(new_id(), owner.owner)
        message = await db.start_conversation(
            unsaved(message_id=new_id(), conversation_id=new_id(), role="user", content="hi", status="complete"),
            "u1", claim)
        assert message is not None
        reply = owner.claim("u1", message, claim.reply_id)
        assert reply is not None
        for i in range(5):
            await owner.publish(reply, f"p{i} ")

        [listed] = await other.listing("u1")
        assert listed == {"conversation_id": message.conversation_id, "message_id": reply.id,
                          "reply_to": message.id, "seq": 5}
        await owner.publish(reply, "p5 ")
        assert [r["seq"] for r in await other.listing("u1")] == [6]

        await owner.close()  # an owner that does not answer: what is known here, 0
        [listed] = await other.listing("u1")
        assert listed["seq"] == 0
    finally:
        await owner.close()
        await other.close()
        await db.dispose()
