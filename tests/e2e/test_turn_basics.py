"""A full turn, the frames it is made of, and what history then holds."""

from support.client import Client, Rest, aio, cid


@aio
async def test_full_turn_frames_and_history(server):
    c = await Client.open(server)
    try:
        assert c.ready["protocol"] == "chat.v1" and c.ready["conversation_id"] is None and c.token
        k = cid()
        t = await c.complete("hello there", client_id=k)
        assert t.types()[:2] == ["ack", "start"] and t.types()[-1] == "done"
        assert t.ack["client_id"] == k and t.ack["duplicate"] is False
        assert t.start["reply_to"] == t.ack["message_id"]
        assert t.done["content"] == t.text == "You said: hello there"
        h = await c.history(t.ack["conversation_id"])
        assert [(m["role"], m["content"], m["status"]) for m in h["messages"]] == [
            ("user", "hello there", "complete"), ("assistant", "You said: hello there", "complete")]
        assert h["messages"][1]["reply_to"] == t.ack["message_id"] and h["has_more"] is False
        items = Rest(server, c.token).conversations()
        assert [i["id"] for i in items] == [t.ack["conversation_id"]] and items[0]["title"] == "hello there"
    finally:
        await c.close()
