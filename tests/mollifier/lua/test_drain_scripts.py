"""The adaptive drain's scripts (issue 17) on single-node Redis and a real 3-master cluster:
pop_due.lua (due delayed runs first), drain_rate.lua at the shared rate, drain_eta.lua."""

from mollifier import buffer, keys, scripts
from tests.mollifier.lua.test_buffer_scripts import ENV, NOW, ORG, accept, make_entry

HOUR = 3_600_000


def due(now_ms=NOW) -> list[tuple[str, str]]:
    active = buffer.active(due_by_ms=now_ms, due_limit=100)
    return [(item.member, item.run_id) for item in active.due]


def pop_due(now_ms=NOW, limit=10) -> buffer.Popped:
    return buffer.pop_due(org_id=ORG, env_id=ENV, due=due(now_ms), limit=limit, lease_ms=1000, now_ms=now_ms)


def test_accepting_a_delayed_run_indexes_it_by_its_delay(store):
    accept(make_entry("run_a", delay_until_ms=NOW + HOUR))
    accept(make_entry("run_b"))

    assert store.zrange(keys.delayed(ORG), 0, -1, withscores=True) == [
        (keys.delayed_member(ENV, "run_a").encode(), NOW + HOUR)
    ]
    assert due(NOW + HOUR) == [(keys.delayed_member(ENV, "run_a"), "run_a")]
    assert due(NOW + HOUR - 1) == []


def test_pop_due_leases_due_runs_ahead_of_the_queue_with_a_token(store):
    accept(make_entry("run_a"))  # older, not delayed
    accept(make_entry("run_b", delay_until_ms=NOW + 10), now_ms=NOW + 1)

    popped = pop_due(NOW + 10)

    assert [entry.run_id for entry in popped.entries] == ["run_b"]
    assert store.hget(keys.holders(ORG, ENV), "run_b").decode() == popped.token == popped.entries[0].lease
    assert store.zrange(keys.ready(ORG, ENV), 0, -1) == [b"run_a"]
    assert store.zcard(keys.delayed(ORG)) == 0  # leased: out of the index
    assert buffer.ack(popped.entries, now_ms=NOW + 11) == 1


def test_pop_due_drops_runs_that_left_and_waits_for_runs_backing_off(store):
    for run_id in ("run_a", "run_b", "run_c"):
        accept(make_entry(run_id, delay_until_ms=NOW))
    gone = buffer.pop(org_id=ORG, env_id=ENV, limit=1, lease_ms=1000, now_ms=NOW)  # run_a, in the queue's turn
    buffer.ack(gone.entries, now_ms=NOW)
    backing_off = buffer.pop(org_id=ORG, env_id=ENV, limit=1, lease_ms=1000, now_ms=NOW).entries[0]  # run_b
    buffer.retry(backing_off, now_ms=NOW, backoff_ms=500, code="x", message="y")

    popped = pop_due(NOW + 100)

    assert [entry.run_id for entry in popped.entries] == ["run_c"]
    assert store.zrange(keys.delayed(ORG), 0, -1) == [keys.delayed_member(ENV, "run_b").encode()]
    assert [entry.run_id for entry in pop_due(NOW + 600).entries] == ["run_b"]  # its backoff is over


def test_pop_due_takes_at_most_its_limit_earliest_first(store):
    for i in range(5):
        accept(make_entry(f"run_{i}", delay_until_ms=NOW - i))

    popped = pop_due(NOW, limit=2)

    assert [entry.run_id for entry in popped.entries] == ["run_4", "run_3"]
    assert store.zcard(keys.delayed(ORG)) == 3


def test_a_reschedule_moves_the_run_in_the_index_and_clearing_the_delay_drops_it(store):
    accept(make_entry("run_a", delay_until_ms=NOW + HOUR))

    buffer.set_delay(org_id=ORG, env_id=ENV, run_id="run_a", now_ms=NOW, delay_until_ms=NOW + 5)
    assert store.zscore(keys.delayed(ORG), keys.delayed_member(ENV, "run_a")) == NOW + 5
    buffer.set_delay(org_id=ORG, env_id=ENV, run_id="run_a", now_ms=NOW, delay_until_ms=None)
    assert store.zcard(keys.delayed(ORG)) == 0


def test_the_bucket_runs_at_the_shared_rate_and_samples_it_per_minute(store):
    bucket = [keys.drain_rate(), keys.drain_limit(), keys.drain_minute(NOW // 60_000)]
    store.hset(keys.drain_limit(), mapping={"rate": "200", "epoch": "4"})

    def ask(at_ms, rows, mode="adaptive"):
        wait, granted, rate, epoch = scripts.DRAIN_RATE(
            keys=bucket, args=[at_ms, rows, 1000, 50, mode, 50, "", 100, 25], client=store
        )
        return int(wait), int(granted), float(rate), int(epoch)

    assert ask(NOW, 1000) == (0, 20, 200.0, 4)  # 100 ms of 200 rows/s: 50 ms would hold fewer than 25
    assert ask(NOW + 10, 1000)[0] == 90
    assert ask(NOW + 100, 1000, mode="fixed") == (0, 50, 1000.0, 0)  # fixed: the ceiling, 50 ms of it
    store.hset(keys.drain_limit(), "rate", "5")
    assert ask(NOW + 150, 1000)[1:3] == (5, 50.0)  # never below the floor (nor above the ceiling)
    minute = store.hgetall(keys.drain_minute(NOW // 60_000))
    assert int(minute[b"rate_n"]) == 3 and float(minute[b"rate_sum"]) == 200 + 1000 + 50


def test_curves_are_replaced_whole_and_expire(store):
    assert scripts.DRAIN_ETA(keys=[keys.drain_eta()], args=[NOW, 10_000, 1000, "a", "[1]", "b", "[2]"], client=store)
    assert not scripts.DRAIN_ETA(keys=[keys.drain_eta()], args=[NOW + 999, 10_000, 1000, "c", "[3]"], client=store)
    assert scripts.DRAIN_ETA(keys=[keys.drain_eta()], args=[NOW + 1000, 10_000, 1000, "c", "[3]"], client=store)

    assert store.hgetall(keys.drain_eta()) == {b"at": str(NOW + 1000).encode(), b"c": b"[3]"}
    assert 0 < store.pttl(keys.drain_eta()) <= 10_000
