"""The trip evaluator and the claim scripts, against single-node Redis and a real cluster."""

import pytest

from mollifier import claims, keys, scripts
from mollifier.exceptions import ClaimTimeout

ORG, ENV = "7", "42"
T0 = 1_800_000_000_000  # a multiple of the window: window edges fall on round numbers


def trip(store, now_ms, *, window=1000, threshold=10, hold=500):
    estimate, tripped = scripts.TRIP(
        keys=[keys.rate(ORG, ENV), keys.tripped(ORG, ENV)], args=[now_ms, window, threshold, hold], client=store
    )
    return int(estimate), bool(int(tripped))


def test_trips_once_the_rate_passes_the_threshold(store):
    results = [trip(store, T0 + i) for i in range(11)]

    assert [tripped for _, tripped in results] == [False] * 10 + [True]
    assert 0 < store.pttl(keys.tripped(ORG, ENV)) <= 500


def test_a_burst_straddling_a_window_edge_trips_before_twice_the_threshold(store):
    # A fixed window would pass 10 at the end of one window and 10 more at the start of the next.
    late = [trip(store, T0 + 900 + i) for i in range(10)]
    early = [trip(store, T0 + 1000 + i) for i in range(10)]

    passed = sum(not tripped for _, tripped in late + early)
    assert passed <= 11
    assert early[-1][1] is True


def test_the_trip_holds_until_hold_after_the_last_overage(store):
    for i in range(11):
        trip(store, T0 + i)
    # The marker expires hold ms after the last over-threshold trigger (TTL checked, not slept).
    assert 400 < store.pttl(keys.tripped(ORG, ENV)) <= 500
    # Well after the window the estimate is low again; with the marker gone the gate is open.
    store.delete(keys.tripped(ORG, ENV))
    assert trip(store, T0 + 5000) == (1, False)


def test_the_rate_counter_expires(store):
    trip(store, T0)
    assert 0 < store.pttl(keys.rate(ORG, ENV)) <= 2000


def acquire(**overrides):
    kwargs = dict(org_id=ORG, env_id=ENV, task="t", key="k", key_expires_ms=None, now_ms=T0)
    kwargs.update(overrides)
    return claims.acquire(**kwargs)


def test_claim_then_publish_resolves_later_callers(store, settings):
    settings.MOLLIFIER = {**settings.MOLLIFIER, "CLAIM_WAIT_MS": 100}
    first = acquire()

    assert first.kind == "claimed"
    with pytest.raises(ClaimTimeout):
        acquire()  # pending until the holder publishes
    assert claims.publish(first.claim, "run_winner")
    assert acquire() == claims.ClaimOutcome("resolved", "run_winner")
    assert 0 < store.ttl(first.claim.redis_key) <= 30


def test_release_lets_the_next_caller_claim(store):
    first = acquire()

    assert claims.release(first.claim)
    assert acquire().kind == "claimed"


def test_an_expired_holder_cannot_publish_or_release_the_new_owners_claim(store):
    stale = acquire()
    store.delete(stale.claim.redis_key)  # its TTL ran out mid-trigger
    owner = acquire()

    assert not claims.publish(stale.claim, "run_stale")
    assert not claims.release(stale.claim)
    assert store.get(owner.claim.redis_key).decode() == owner.claim.marker
    assert claims.publish(owner.claim, "run_owner")


def test_a_buffered_holder_answers_the_claim(store):
    store.set(keys.idempotency(ORG, ENV, "t", "k"), "run_buffered")

    assert acquire() == claims.ClaimOutcome("buffered", "run_buffered")


def test_claim_ttl_has_a_floor_and_a_cap():
    assert claims.claim_ttl_seconds(now_ms=T0, key_expires_ms=T0 + 2000) == 5  # floor
    assert claims.claim_ttl_seconds(now_ms=T0, key_expires_ms=T0 + 12_000) == 12
    assert claims.claim_ttl_seconds(now_ms=T0, key_expires_ms=T0 + 86_400_000) == 30  # cap
    assert claims.claim_ttl_seconds(now_ms=T0, key_expires_ms=None) == 30


def test_claims_fail_open_when_redis_is_unreachable(dead_redis):
    assert acquire().kind == "unavailable"
