"""Process leases on PostgreSQL: which chat-server processes are alive.

A process writes its lease at start and renews it every heartbeat. It is dead when its lease ran
out (`lease_s` after its last heartbeat: it hung, or its host lost power or network), or sooner
when it keeps a named session (its LISTEN connection, application_name "chat-server <owner>")
and that session is gone from pg_stat_activity while its heartbeat is older than `grace_s`: a
process killed with -9 takes its sockets with it, so PostgreSQL drops its session at once. The
grace covers the moment when a live process reconnects a LISTEN connection that was cut.

All times are the database's (now()), so that clocks of different hosts never disagree.
Plain SQL on purpose: these statements are PostgreSQL's own (ON CONFLICT, pg_stat_activity,
FOR UPDATE SKIP LOCKED) and run once a second, not per turn.
"""

from __future__ import annotations

from sqlalchemy import text

from server.db.store import Store
from server.domain import Orphan

SESSION_PREFIX = "chat-server "  # + owner: the application_name of a process's LISTEN connection


def session_name(owner: str) -> str:
    return SESSION_PREFIX + owner


_LIVE = """
    SELECT l.owner FROM process_leases l
    WHERE l.expires_at > now()
      AND (NOT l.named_session
           OR l.heartbeat_at > now() - make_interval(secs => :grace)
           OR EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.application_name = 'chat-server ' || l.owner))
"""

_RENEW = text("""
    INSERT INTO process_leases (owner, started_at, heartbeat_at, expires_at, named_session)
    VALUES (:owner, now(), now(), now() + make_interval(secs => :lease), :named)
    ON CONFLICT (owner) DO UPDATE SET heartbeat_at = now(), expires_at = EXCLUDED.expires_at,
                                      named_session = EXCLUDED.named_session
""")
_RELEASE = text("DELETE FROM process_leases WHERE owner = :owner")
# The replies of owners without a live lease, locked, so that two live processes sweeping at
# the same moment store each orphan once: the second skips what the first holds.
_ORPHANS = text(f"""
    SELECT f.user_message_id, f.reply_id, f.conversation_id, f.user_id, f.content
    FROM replies_in_flight f
    WHERE f.owner <> :me AND f.owner NOT IN ({_LIVE})
    FOR UPDATE OF f SKIP LOCKED
""")
_FORGET_DEAD = text(f"DELETE FROM process_leases WHERE owner <> :me AND owner NOT IN ({_LIVE})")
# Dead processes whose death is not yet sure: session gone, heartbeat still within the grace.
_SUSPECTS = text("""
    SELECT count(*) FROM process_leases l
    WHERE l.owner <> :me AND l.named_session AND l.expires_at > now()
      AND l.heartbeat_at > now() - make_interval(secs => :grace)
      AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.application_name = 'chat-server ' || l.owner)
""")
_IS_LIVE = text(f"SELECT :owner IN ({_LIVE})")
# A new reply to a message already stored: it takes over the record of the message's reply only
# when that record is ours (a reply this process no longer generates) or its owner is dead.
_TAKE_OVER = text(f"""
    DELETE FROM replies_in_flight
    WHERE user_message_id = :message AND (owner = :me OR owner NOT IN ({_LIVE}))
""")
# A new reply to a stored message takes the conversation's row lock (KEY SHARE) first, until its
# claim commits: a DELETE of the conversation either committed before (then there is nothing to
# claim) or waits for the claim and removes it with the rest. Without the lock, a DELETE landing a
# moment before would leave a claim of a live owner that no sweep takes: a phantom reply. First,
# so that the two never wait for each other's rows the other way round.
_LOCK_CONVERSATION = text("""
    SELECT 1 FROM conversations WHERE id = :conversation AND user_id = :user FOR KEY SHARE
""")
_CLAIM = text("""
    INSERT INTO replies_in_flight (user_message_id, reply_id, conversation_id, user_id, owner, started_at, content)
    SELECT m.id, CAST(:reply AS varchar), m.conversation_id, m.user_id, CAST(:me AS varchar), now(), ''
    FROM messages m
    WHERE m.id = :message AND m.conversation_id = :conversation
    ON CONFLICT (user_message_id) DO NOTHING
    RETURNING reply_id
""")
_MESSAGE_EXISTS = text("SELECT 1 FROM messages WHERE id = :message")
_IN_FLIGHT = text("""
    SELECT f.reply_id, f.user_message_id, f.conversation_id, f.owner FROM replies_in_flight f
    WHERE f.user_id = :user ORDER BY f.started_at
""")
_RECORD = text("""
    SELECT f.reply_id, f.user_message_id, f.conversation_id, f.owner FROM replies_in_flight f
    WHERE f.user_id = :user AND (f.reply_id = :reply OR f.user_message_id = :message)
""")


def renew(store: Store, owner: str, lease_s: float, named_session: bool) -> None:
    store.conn.execute(_RENEW, {"owner": owner, "lease": lease_s, "named": named_session})


def release(store: Store, owner: str) -> None:
    store.conn.execute(_RELEASE, {"owner": owner})


def orphans(store: Store, me: str, grace_s: float) -> list[Orphan]:
    return [Orphan(*row) for row in store.conn.execute(_ORPHANS, {"me": me, "grace": grace_s})]


def forget_dead(store: Store, me: str, grace_s: float) -> None:
    store.conn.execute(_FORGET_DEAD, {"me": me, "grace": grace_s})


def suspects(store: Store, me: str, grace_s: float) -> int:
    return int(store.conn.execute(_SUSPECTS, {"me": me, "grace": grace_s}).scalar() or 0)


def is_live(store: Store, owner: str, grace_s: float) -> bool:
    return bool(store.conn.execute(_IS_LIVE, {"owner": owner, "grace": grace_s}).scalar())


def take_over(store: Store, me: str, grace_s: float, *, message_id: str, reply_id: str, conversation_id: str,
              user_id: str) -> str:
    """Record that `me` generates a new reply to a stored message: "claimed"; "taken" when a
    live process already generates one (then follow that one); "gone" when the message or its
    conversation was deleted."""
    if store.conn.execute(_LOCK_CONVERSATION, {"conversation": conversation_id, "user": user_id}).first() is None:
        return "gone"
    store.conn.execute(_TAKE_OVER, {"message": message_id, "me": me, "grace": grace_s})
    claimed = store.conn.execute(_CLAIM, {"message": message_id, "reply": reply_id, "conversation": conversation_id,
                                          "user": user_id, "me": me}).scalar()
    if claimed == reply_id:
        return "claimed"
    return "taken" if store.conn.execute(_MESSAGE_EXISTS, {"message": message_id}).first() else "gone"


def in_flight(store: Store, user_id: str) -> list[tuple[str, str, str, str]]:
    """(reply_id, user_message_id, conversation_id, owner) of every reply of the user in flight anywhere."""
    return [tuple(row) for row in store.conn.execute(_IN_FLIGHT, {"user": user_id})]  # type: ignore[misc]


def record(store: Store, user_id: str, reply_id: str | None,
           message_id: str | None) -> tuple[str, str, str, str] | None:
    row = store.conn.execute(_RECORD, {"user": user_id, "reply": reply_id, "message": message_id}).first()
    return tuple(row) if row else None  # type: ignore[return-value]
