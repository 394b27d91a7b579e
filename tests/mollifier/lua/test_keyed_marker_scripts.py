"""The keyed marker's half in Redis (keys.keyed; lib/accept.lua, clear_keyed_marker.lua), single node
and a 3-master cluster: a keyed run is buffered only while the marker is set; the marker is taken
away only when nothing of the environment waits, and a generation taken away is never set again."""

from mollifier import buffer, keys
from tests.mollifier.lua.test_buffer_scripts import ENV, NOW, ORG, make_entry


def accept(run_id, *, key="k", marker_gen=None) -> buffer.AcceptResult:
    return buffer.accept(make_entry(run_id, idempotency_key=key), now_ms=NOW, marker_gen=marker_gen)


def marker(store) -> dict:
    return {k.decode(): int(v) for k, v in store.hgetall(keys.keyed(ORG, ENV)).items()}


def clear(generation: int) -> bool:
    return buffer.clear_keyed_marker(org_id=ORG, env_id=ENV, generation=generation)


def test_a_keyed_run_needs_the_marker_and_nothing_is_written_without_it(store):
    assert accept("run_a").status == "needs_marker"

    assert not store.exists(
        keys.entry(ORG, "run_a"), keys.listing(ORG, ENV), keys.idempotency(ORG, ENV, "hello-world", "k")
    )
    assert buffer.buffered_count(ORG) == 0
    assert accept("run_b", key=None).status == "accepted"  # a run without a key never needs one


def test_a_keyed_run_is_taken_only_with_the_marker_s_very_generation(store):
    """The caller read that generation before it looked for its key among the rows: a caller who
    read none, or an older one, looks again once it has made sure of the current one."""
    assert accept("run_a", marker_gen=7).status == "accepted"
    assert marker(store) == {"marker": 7}

    assert accept("run_b", key="b", marker_gen=7).status == "accepted"
    assert accept("run_c", key="c").status == "needs_marker"
    assert accept("run_c", key="c", marker_gen=5).status == "needs_marker"
    assert marker(store) == {"marker": 7}  # an older generation never lowers it
    assert accept("run_c", key="c", marker_gen=9).status == "accepted"  # a newer one raises it
    assert marker(store) == {"marker": 9}


def test_the_marker_is_taken_away_only_when_nothing_of_the_environment_waits(store):
    accept("run_a", marker_gen=7)

    assert clear(7) is False  # run_a waits
    popped = buffer.pop(org_id=ORG, env_id=ENV, limit=10, lease_ms=1000, now_ms=NOW)
    assert buffer.ack(popped.entries, now_ms=NOW + 1) == 1

    assert clear(7) is True
    assert marker(store) == {"cleared": 7}


def test_a_generation_taken_away_is_not_set_again(store):
    accept("run_a", marker_gen=7)
    buffer.ack(buffer.pop(org_id=ORG, env_id=ENV, limit=10, lease_ms=1000, now_ms=NOW).entries, now_ms=NOW + 1)
    assert clear(7)

    # A web process that made sure of generation 7 (or older) before the clear comes back with it.
    assert accept("run_b", marker_gen=7).status == "needs_marker"
    assert accept("run_b", marker_gen=6).status == "needs_marker"
    assert accept("run_b", marker_gen=8).status == "accepted"
    assert marker(store) == {"marker": 8, "cleared": 7}


def test_a_clear_with_an_older_generation_than_the_buffers_leaves_the_marker(store):
    """Postgres's marker was made again (generation 9) after the clearer read generation 8."""
    accept("run_a", marker_gen=9)
    buffer.ack(buffer.pop(org_id=ORG, env_id=ENV, limit=10, lease_ms=1000, now_ms=NOW).entries, now_ms=NOW + 1)

    assert clear(8) is False
    assert marker(store) == {"marker": 9}


def test_a_parked_keyed_run_keeps_the_marker(store):
    accept("run_a", marker_gen=3)
    popped = buffer.pop(org_id=ORG, env_id=ENV, limit=10, lease_ms=1000, now_ms=NOW)
    assert buffer.park(popped.entries[0], now_ms=NOW + 1, code="unwritable", message="no row")

    assert clear(3) is False  # it still holds its key, and may be retried
    assert marker(store) == {"marker": 3}


def test_with_no_marker_in_redis_an_empty_environment_lets_postgres_s_go(store):
    """Postgres's marker was made, and the buffer never took a run under it (or lost its mirror):
    it may go, and its generation is not taken again."""
    assert clear(4) is True
    assert marker(store) == {"cleared": 4}
    assert accept("run_a", marker_gen=4).status == "needs_marker"
