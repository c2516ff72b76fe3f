"""What an operator needs first, in Prometheus form (served at /metrics)."""

from prometheus_client import Counter, Gauge, Histogram

SOCKETS_OPEN = Gauge("chat_sockets_open", "WebSocket connections currently open")
REPLIES_IN_FLIGHT = Gauge("chat_replies_in_flight", "Assistant replies being generated now")
REPLIES_DETACHED = Gauge("chat_replies_detached", "Replies in flight that no socket follows now")
REPLIES_SWEPT = Counter("chat_replies_swept_total", "Replies of a dead process stored as interrupted")
NOTIFY_SENT = Counter("chat_notify_payloads_total", "NOTIFY payloads sent to other processes")
NOTIFY_DROPPED = Counter("chat_notify_dropped_total", "NOTIFY payloads not sent (the LISTEN connection was down)")
NOTIFY_SKIPPED = Counter("chat_notify_records_skipped_total",
                         "Records from other processes of a kind or version this release does not know")
NOTIFY_CONNECTED = Gauge("chat_notify_connected",
                         "1 while this process's LISTEN connection is up (PostgreSQL with CHAT_PG_NOTIFY)")
NOTIFY_RECONNECTS = Counter("chat_notify_reconnects_total", "Times the LISTEN connection was lost and opened again")
TURNS = Counter("chat_turns_total", "Turns by final status of the reply", ["status"])
MESSAGES_REFUSED = Counter("chat_messages_refused_total", "Client frames answered with an error", ["code"])
DB_COMMITS = Counter("chat_db_commits_total", "Units of work committed")
DB_COMMIT_FAILURES = Counter("chat_db_commit_failures_total", "Units of work whose commit failed")
DB_UNITS_PER_COMMIT = Histogram(
    "chat_db_units_per_commit", "Writes sharing one commit (group commit; PostgreSQL: the turn writes)",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128))
DB_BATCHES_REPLAYED = Counter(
    "chat_db_batches_replayed_total",
    "PostgreSQL group commits that failed on one write's error and were sent again one write at a time")
DB_COMMIT_SECONDS = Histogram(
    "chat_db_commit_seconds", "Time for COMMIT to return",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
FIRST_DELTA_SECONDS = Histogram(
    "chat_time_to_first_delta_seconds", "From the user's message to the first delta of its reply",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
DB_POOL_CHECKED_OUT = Gauge("chat_db_pool_checked_out", "Database connections checked out of the pool now")
FEEDBACK = Counter("chat_feedback_total", "Ratings people gave replies (PUT /api/messages/{id}/feedback)",
                   ["rating", "model"])
