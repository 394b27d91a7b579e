"""The fence: lease tokens and pins (lib/lease.lua) in every script that touches a leased entry,
on single-node Redis and a real 3-master cluster."""

from mollifier import buffer, keys, scripts
from mollifier.buffer import MutateStatus, Pin, ResetStatus
from tests.mollifier.lua.test_buffer_scripts import ENV, NOW, ORG, accept, make_entry, mutate_kwargs


def lease(now_ms=NOW, lease_ms=1000, limit=10) -> buffer.Popped:
    return buffer.pop(org_id=ORG, env_id=ENV, limit=limit, lease_ms=lease_ms, now_ms=now_ms)


def holder(store, run_id="run_a"):
    value = store.hget(keys.holders(ORG, ENV), run_id)
    return value.decode() if value is not None else None


def test_pop_gives_each_lease_its_own_token(store):
    accept(make_entry("run_a"))
    accept(make_entry("run_b"))

    first, second = lease(limit=1), lease(limit=1)

    assert first.token and second.token and first.token != second.token
    assert first.entries[0].lease == first.token and holder(store, "run_a") == first.token
    assert holder(store, "run_b") == second.token


def test_a_drainer_whose_lease_was_taken_back_can_neither_pin_nor_ack(store):
    accept(make_entry(idempotency_key="k"))
    stale = lease().entries[0]
    fresh = lease(now_ms=NOW + 2000).entries[0]  # the lease expired unpinned: taken back, leased again

    assert buffer.pin([stale], txid="100", now_ms=NOW + 2001, lease_ms=1000) == set()
    assert buffer.ack([stale], now_ms=NOW + 2002) == 0
    assert not buffer.get(org_id=ORG, run_id="run_a").materialised
    assert store.get(keys.idempotency(ORG, ENV, "hello-world", "k")) == b"run_a"  # the key still held
    assert buffer.ack([fresh], now_ms=NOW + 2003) == 1


def test_retry_fail_and_park_by_a_stale_drainer_change_nothing(store):
    accept(make_entry())
    stale = lease().entries[0]
    fresh = lease(now_ms=NOW + 2000).entries[0]

    assert buffer.retry(stale, now_ms=NOW + 2001, backoff_ms=0, code="x", message="y") == -1
    assert not buffer.fail(stale, now_ms=NOW + 2001, backoff_ms=0, code="x", message="y")
    assert not buffer.park(stale, now_ms=NOW + 2001, code="x", message="y")
    assert holder(store) == fresh.lease and store.zscore(keys.leases(ORG, ENV), "run_a") is not None


def test_a_pinned_lease_is_never_taken_back_by_time_only_reported(store):
    accept(make_entry())
    entry = lease().entries[0]
    assert buffer.pin([entry], txid="777", now_ms=NOW + 10, lease_ms=1000) == {"run_a"}
    assert holder(store) == f"{entry.lease}:777"

    later = lease(now_ms=NOW + 5000)

    assert later.entries == [] and later.reclaimed == 0
    assert later.pins == [Pin(ORG, ENV, "run_a", f"{entry.lease}:777")]
    assert store.zscore(keys.leases(ORG, ENV), "run_a") == NOW + 6000  # reported once per lease
    assert lease(now_ms=NOW + 5500).pins == []
    assert buffer.reclaim(org_id=ORG, env_id=ENV, now_ms=NOW + 7000, lease_ms=1000) == (0, later.pins)


def test_unpin_gives_an_uncommitted_round_back_unchanged(store):
    accept(make_entry())
    entry = lease().entries[0]
    buffer.pin([entry], txid="9", now_ms=NOW, lease_ms=1000)
    pin = Pin(ORG, ENV, "run_a", f"{entry.lease}:9")

    assert buffer.unpin([Pin(ORG, ENV, "run_a", f"{entry.lease}:8")], now_ms=NOW + 1) == 0  # another pin
    assert buffer.unpin([pin], now_ms=NOW + 1) == 1

    assert holder(store) is None and store.zscore(keys.ready(ORG, ENV), "run_a") == NOW + 1
    assert buffer.get(org_id=ORG, run_id="run_a").attempts == 0
    assert buffer.ack([entry], now_ms=NOW + 2) == 0  # the drainer that pinned it holds nothing now


def test_an_ack_by_the_exact_pin_settles_a_committed_round(store):
    accept(make_entry())
    entry = lease().entries[0]
    buffer.pin([entry], txid="9", now_ms=NOW, lease_ms=1000)

    entry.lease = f"{entry.lease}:8"
    assert buffer.ack([entry], now_ms=NOW + 1) == 0
    entry.lease = entry.lease.replace(":8", ":9")
    assert buffer.ack([entry], now_ms=NOW + 1) == 1


def test_a_change_takes_back_an_expired_unpinned_lease_then_applies(store):
    accept(make_entry())
    stale = lease().entries[0]

    assert buffer.cancel(**mutate_kwargs(now_ms=NOW + 500, reason="early")).status == MutateStatus.BUSY
    assert buffer.cancel(**mutate_kwargs(now_ms=NOW + 1500, reason="late")).status == MutateStatus.APPLIED

    assert buffer.get(org_id=ORG, run_id="run_a").cancel_reason == "late"
    assert holder(store) is None and store.zscore(keys.ready(ORG, ENV), "run_a") == NOW + 1500
    assert buffer.pin([stale], txid="1", now_ms=NOW + 1600, lease_ms=1000) == set()  # fenced out


def test_a_change_to_a_pinned_run_reports_the_pin_instead_of_applying(store):
    accept(make_entry(idempotency_key="k"))
    entry = lease().entries[0]
    buffer.pin([entry], txid="42", now_ms=NOW, lease_ms=1000)

    result = buffer.cancel(**mutate_kwargs(now_ms=NOW + 5000, reason="x"))
    reset = buffer.reset_idempotency(org_id=ORG, env_id=ENV, task="hello-world", key="k", now_ms=NOW + 5000)

    assert (result.status, result.value) == (MutateStatus.PINNED, f"{entry.lease}:42")
    assert (reset.status, reset.run_id, reset.holder) == (ResetStatus.PINNED, "run_a", f"{entry.lease}:42")
    assert buffer.get(org_id=ORG, run_id="run_a").cancelled_at_ms is None


def test_park_takes_an_entry_out_of_the_drain_for_an_operator(store):
    accept(make_entry(idempotency_key="k", batch_id="b", batch_index=2))
    entry = lease().entries[0]

    assert buffer.park(entry, now_ms=NOW + 1, code="unwritable", message="no row")

    assert lease(now_ms=NOW + 10_000).entries == []
    assert [e.run_id for e in buffer.parked_entries()] == ["run_a"]
    assert buffer.buffered_count(ORG) == 1 and buffer.parked_count(ORG) == 1
    parked = buffer.parked_entries()[0]
    assert parked.parked_at_ms == NOW + 1 and parked.last_error["code"] == "unwritable"

    assert buffer.unpark(parked, now_ms=NOW + 20)
    again = lease(now_ms=NOW + 30).entries[0]
    assert again.attempts == 0 and again.terminal_error is None and buffer.parked_orgs() == []
    assert buffer.active_orgs() == [ORG]


def test_discard_removes_a_parked_entry_and_releases_its_key_and_slot(store):
    accept(make_entry(idempotency_key="k", batch_id="b", batch_index=2))
    buffer.park(lease().entries[0], now_ms=NOW + 1, code="unwritable", message="no row")
    parked = buffer.parked_entries()[0]

    assert buffer.discard(parked)

    assert buffer.get(org_id=ORG, run_id="run_a") is None
    assert buffer.buffered_count(ORG) == 0 and buffer.parked_orgs() == []
    assert store.get(keys.idempotency(ORG, ENV, "hello-world", "k")) is None
    assert buffer.batch_buffered_items(org_id=ORG, batch_id="b") == {}
    assert not buffer.discard(parked)  # only parked entries can be discarded


def test_the_rate_limiter_takes_back_unused_rows_without_banking_time(store):
    bucket = [keys.drain_rate(), keys.drain_limit(), keys.drain_minute(NOW // 60_000)]

    def ask(at_ms, rows):  # fixed at 1000 rows/s, rounds of up to a second
        return int(
            scripts.DRAIN_RATE(keys=bucket, args=[at_ms, rows, 1000, 1, "fixed", 1000, "", 1000, 1], client=store)[0]
        )

    assert ask(NOW, 100) == 0  # paid off at NOW + 100
    assert ask(NOW, -60) == 0  # 60 unused: paid off at NOW + 40
    assert ask(NOW + 10, 10) == 30
    assert ask(NOW + 40, 10) == 0
    assert ask(NOW + 40, -1000) == 0  # never before now
    assert ask(NOW + 41, 10) == 0
