"""Abuse limits: token buckets for message and frame rates, and sockets per user.

Pure bookkeeping with an injectable clock, so the rules are unit-tested without sleeping.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

Clock = Callable[[], float]


@dataclass(slots=True)
class TokenBucket:
    """`rate` tokens per second, holding at most `burst`; starts full."""

    rate: float
    burst: float
    clock: Clock = time.monotonic
    tokens: float = field(init=False)
    stamp: float = field(init=False)

    def __post_init__(self) -> None:
        self.tokens = self.burst
        self.stamp = self.clock()

    def take(self) -> bool:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False

    def full(self) -> bool:
        return self.tokens + (self.clock() - self.stamp) * self.rate >= self.burst

    def wait_s(self) -> float:
        """How long until take() would succeed (0 when it would now)."""
        tokens = min(self.burst, self.tokens + (self.clock() - self.stamp) * self.rate)
        return 0.0 if tokens >= 1 else (1 - tokens) / self.rate


class KeyedBuckets:
    """One bucket of `per_minute` (a burst of that many, refilled evenly) per key: a user or a
    client address. 0 means no limit. Bounded: past `max_keys`, keys whose bucket refilled go."""

    def __init__(self, per_minute: int, clock: Clock = time.monotonic, max_keys: int = 10_000):
        self.per_minute = per_minute
        self.clock = clock
        self.max_keys = max_keys
        self._buckets: dict[str, TokenBucket] = {}

    def take(self, key: str) -> float:
        """0 when allowed (and counted); else the seconds to wait before trying again."""
        if self.per_minute <= 0:
            return 0.0
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_keys:
                self._buckets = {k: b for k, b in self._buckets.items() if not b.full()}
                if len(self._buckets) >= self.max_keys:  # a spray of keys: forget the half nearest to full
                    kept = sorted(self._buckets.items(), key=lambda item: item[1].tokens)[: self.max_keys // 2]
                    self._buckets = dict(kept)
            bucket = self._buckets[key] = TokenBucket(self.per_minute / 60, self.per_minute, self.clock)
        return 0.0 if bucket.take() else max(bucket.wait_s(), 0.001)


class UserLimits:
    """Per user, across all of the user's sockets in this process."""

    def __init__(self, messages_per_minute: int, max_sockets: int, clock: Clock = time.monotonic,
                 max_users: int = 10_000, reads_per_minute: int = 0):
        self.max_sockets = max_sockets
        self._messages = KeyedBuckets(messages_per_minute, clock, max_users)
        self._reads = KeyedBuckets(reads_per_minute, clock, max_users)  # 0: no limit
        self._sockets: dict[str, int] = {}

    def allow_message(self, user_id: str) -> bool:
        return self._messages.take(user_id) == 0

    def allow_read(self, user_id: str) -> bool:
        """resume, history, cancel by id: frames that cost reads or a broadcast, not a turn."""
        return self._reads.take(user_id) == 0

    def open_socket(self, user_id: str) -> bool:
        """Count a new socket for this user; False (and not counted) when it has too many."""
        count = self._sockets.get(user_id, 0)
        if count >= self.max_sockets:
            return False
        self._sockets[user_id] = count + 1
        return True

    def close_socket(self, user_id: str) -> None:
        count = self._sockets.get(user_id, 0) - 1
        if count > 0:
            self._sockets[user_id] = count
        else:
            self._sockets.pop(user_id, None)

    def sockets(self, user_id: str) -> int:
        return self._sockets.get(user_id, 0)
