"""A rolling upgrade: for the minutes a deploy takes, processes of two releases share one
PostgreSQL. A process of the next release sends records of a newer version, or of a kind this
one does not know: they are skipped and counted, never a crash, and the records this release
knows still work."""

from __future__ import annotations

import uuid

import pytest
from support.client import Client, aio, poll

from server.replies.postgres import records as rec
from server.replies.postgres.listen import BROADCAST, ListenConnection

pytestmark = pytest.mark.postgres


@aio
async def test_records_of_a_newer_release_are_skipped_and_counted_and_known_ones_still_work(make_server):
    server = make_server("postgres")
    tab = await Client.open(server, sync=True)
    newer = ListenConnection(server.db_url, uuid.uuid4().hex, 0.005, lambda _records: None, lambda: None)
    await newer.start()
    try:
        skipped = server.metric("chat_notify_records_skipped_total")
        conversation_id = str(uuid.uuid4())
        newer.send_encoded(BROADCAST, [
            b'["d",2,"' + tab.user_id.encode() + b'","' + conversation_id.encode() + b'","a field of v2"]',
            b'["w",1,"a kind the next release adds"]',
        ])
        newer.send(BROADCAST, rec.Deleted(tab.user_id, conversation_id))  # one this release knows
        event = await tab.recv(timeout=10)
        assert event == {"type": "conversation_deleted", "conversation_id": conversation_id}
        assert await poll(lambda: server.metric("chat_notify_records_skipped_total") - skipped,
                          lambda n: n >= 2) == 2
        assert (await tab.complete("the process still serves")).done["status"] == "complete"
    finally:
        await newer.close()
        await tab.close()
