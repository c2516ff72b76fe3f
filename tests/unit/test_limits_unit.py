"""Abuse-limit bookkeeping (server/chat/limits.py) with a fake clock: token buckets refill at their
rate and never beyond their burst, each user has a message bucket of their own, sockets are counted
per user, and the map of buckets stays bounded however many users come and go."""

from __future__ import annotations

import pytest

from server.chat.limits import KeyedBuckets, TokenBucket, UserLimits


class FakeClock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def take_all(take, limit: int = 100_000) -> int:  # type: ignore[no-untyped-def]
    """How many times `take()` succeeds in a row (at one instant)."""
    n = 0
    while n < limit and take():
        n += 1
    return n


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


# -- TokenBucket ---------------------------------------------------------------------------------
def test_bucket_starts_full_and_gives_exactly_its_burst(clock):
    bucket = TokenBucket(rate=1.0, burst=5, clock=clock)
    assert bucket.full()
    assert take_all(bucket.take) == 5
    assert not bucket.take() and not bucket.full()


def test_bucket_refills_at_its_rate(clock):
    bucket = TokenBucket(rate=2.0, burst=10, clock=clock)
    take_all(bucket.take)
    clock.advance(0.49)  # 0.98 of a token: not yet one
    assert not bucket.take()
    clock.advance(0.01)
    assert bucket.take() and not bucket.take()
    clock.advance(1.5)  # three tokens
    assert take_all(bucket.take) == 3


def test_failed_takes_do_not_lose_the_time_that_passed(clock):
    bucket = TokenBucket(rate=1.0, burst=3, clock=clock)
    take_all(bucket.take)
    outcomes = []
    for _ in range(4):  # asking often must not restart the refill
        clock.advance(0.25)
        outcomes.append(bucket.take())
    assert outcomes == [False, False, False, True]


def test_bucket_never_holds_more_than_its_burst(clock):
    bucket = TokenBucket(rate=10.0, burst=4, clock=clock)
    take_all(bucket.take)
    clock.advance(3600)
    assert bucket.full()
    assert take_all(bucket.take) == 4


def test_fractional_rate_per_minute_bucket(clock):
    # A per-minute limit of 6: one token every 10 s, six at most.
    bucket = TokenBucket(rate=6 / 60, burst=6, clock=clock)
    assert take_all(bucket.take) == 6
    clock.advance(9.9)
    assert not bucket.take()
    clock.advance(0.1)
    assert bucket.take()
    clock.advance(59.999)
    assert take_all(bucket.take) == 5


def test_full_reports_refill_without_taking(clock):
    bucket = TokenBucket(rate=1.0, burst=2, clock=clock)
    assert bucket.take()
    assert not bucket.full()
    clock.advance(1.0)
    assert bucket.full()
    assert take_all(bucket.take) == 2  # full() did not spend anything


def test_a_clock_that_does_not_move_never_refills(clock):
    bucket = TokenBucket(rate=1000.0, burst=1, clock=clock)
    assert bucket.take()
    assert take_all(bucket.take) == 0


# -- UserLimits: messages ----------------------------------------------------------------------------------
def test_each_user_gets_the_per_minute_burst(clock):
    limits = UserLimits(messages_per_minute=5, max_sockets=10, clock=clock)
    assert take_all(lambda: limits.allow_message("alice")) == 5
    assert not limits.allow_message("alice")
    assert take_all(lambda: limits.allow_message("bob")) == 5  # alice's use costs bob nothing


def test_user_rate_refills_over_the_minute(clock):
    limits = UserLimits(messages_per_minute=60, max_sockets=10, clock=clock)
    assert take_all(lambda: limits.allow_message("alice")) == 60
    clock.advance(1.0)
    assert limits.allow_message("alice") and not limits.allow_message("alice")
    clock.advance(60.0)
    assert take_all(lambda: limits.allow_message("alice")) == 60


def test_default_limit_allows_thirty_messages_a_minute_sustained(clock):
    limits = UserLimits(messages_per_minute=60, max_sockets=10, clock=clock)
    for _ in range(5 * 30):  # five minutes at 30 a minute, one every 2 s
        assert limits.allow_message("steady")
        clock.advance(2.0)


# -- UserLimits: sockets -----------------------------------------------------------------------------------
def test_sockets_are_counted_per_user_up_to_the_cap(clock):
    limits = UserLimits(messages_per_minute=60, max_sockets=3, clock=clock)
    assert [limits.open_socket("alice") for _ in range(4)] == [True, True, True, False]
    assert limits.sockets("alice") == 3  # the refused one is not counted
    assert limits.open_socket("bob") and limits.sockets("bob") == 1


def test_closing_a_socket_frees_a_place(clock):
    limits = UserLimits(messages_per_minute=60, max_sockets=2, clock=clock)
    assert limits.open_socket("alice") and limits.open_socket("alice")
    limits.close_socket("alice")
    assert limits.sockets("alice") == 1
    assert limits.open_socket("alice") and not limits.open_socket("alice")


def test_closing_every_socket_forgets_the_user(clock):
    limits = UserLimits(messages_per_minute=60, max_sockets=2, clock=clock)
    limits.open_socket("alice")
    limits.close_socket("alice")
    assert limits.sockets("alice") == 0
    assert "alice" not in limits._sockets  # no entry left behind per user that came and went


def test_an_extra_close_never_makes_room_for_more_than_the_cap(clock):
    limits = UserLimits(messages_per_minute=60, max_sockets=2, clock=clock)
    limits.close_socket("alice")  # never opened: must not go negative
    limits.close_socket("alice")
    assert limits.sockets("alice") == 0
    assert [limits.open_socket("alice") for _ in range(3)] == [True, True, False]


# -- UserLimits: the bucket map stays bounded ----------------------------------------------------------------
def test_bucket_map_forgets_users_whose_bucket_refilled(clock):
    limits = UserLimits(messages_per_minute=60, max_sockets=10, clock=clock, max_users=100)
    for i in range(100):
        assert limits.allow_message(f"u{i}")
    tracked = limits._messages._buckets
    assert len(tracked) == 100
    clock.advance(60.0)  # every bucket is full again: nothing to remember about them
    assert limits.allow_message("newcomer")
    assert len(limits._messages._buckets) == 1


def test_bucket_map_keeps_users_that_are_still_limited(clock):
    limits = UserLimits(messages_per_minute=60, max_sockets=10, clock=clock, max_users=100)
    assert take_all(lambda: limits.allow_message("hog")) == 60
    for i in range(1000):  # a spray of users, none refilled yet: the map stays bounded
        limits.allow_message(f"u{i}")
        assert len(limits._messages._buckets) <= 100
    clock.advance(30.0)  # the others have refilled, the hog only half way
    assert limits.allow_message("newcomer")
    assert "hog" in limits._messages._buckets
    # Pruning did not hand the hog a fresh burst.
    assert take_all(lambda: limits.allow_message("hog")) == 30


def test_keyed_buckets_count_each_key_apart_and_say_how_long_to_wait():
    now = [0.0]
    buckets = KeyedBuckets(60, clock=lambda: now[0])
    assert all(buckets.take("a") == 0 for _ in range(60))
    assert buckets.take("a") == pytest.approx(1.0)  # one a second
    assert buckets.take("b") == 0
    now[0] += 1
    assert buckets.take("a") == 0


def test_keyed_buckets_at_zero_never_limit():
    assert all(KeyedBuckets(0).take("a") == 0 for _ in range(1000))


def test_keyed_buckets_stay_bounded_under_a_spray_of_keys():
    buckets = KeyedBuckets(60, clock=lambda: 0.0, max_keys=100)
    for i in range(1000):
        buckets.take(f"k{i}")
    assert len(buckets._buckets) <= 100


def test_the_per_address_key_is_an_ipv4_address_or_an_ipv6_slash_64():
    from server.web.guards import client_address

    assert client_address({"client": ("203.0.113.9", 1)}) == "203.0.113.9"
    assert client_address({"client": ("2001:db8:1:2:aaaa::1", 1)}) == client_address(
        {"client": ("2001:db8:1:2:bbbb::9", 1)}) == "2001:db8:1:2::/64"
    assert client_address({"client": ("::ffff:198.51.100.7", 1)}) == "198.51.100.7"
    assert client_address({}) == "unknown"
