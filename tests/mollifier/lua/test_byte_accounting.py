"""Memory bounded in bytes: each entry's size, the organisation's sum, and the byte cap — exact
across accept, mutations, ack, park and discard (single node and a 3-master cluster)."""

from mollifier import buffer, keys
from tests.mollifier.lua.test_buffer_scripts import ENV, NOW, ORG, accept, make_entry


def stored_size(store, run_id: str) -> int:
    """What an entry holds: its snapshot, and its hash's fields and values (the `bytes` field aside)."""
    fields = store.hgetall(keys.entry(ORG, run_id))
    fields.pop(b"bytes")
    return len(store.get(keys.snapshot(ORG, run_id))) + sum(len(k) + len(v) for k, v in fields.items())


def entry_bytes(store, run_id: str) -> int:
    return int(store.hget(keys.entry(ORG, run_id), "bytes"))


def test_accept_counts_the_entry_bytes_in_the_entry_and_the_organisation(store):
    accept(make_entry("run_a"))
    accept(make_entry("run_b", snapshot={"payload": "x" * 5000}, tags=["t"]))

    assert entry_bytes(store, "run_a") == stored_size(store, "run_a")
    assert entry_bytes(store, "run_b") == stored_size(store, "run_b")
    assert buffer.buffered_bytes(ORG) == entry_bytes(store, "run_a") + entry_bytes(store, "run_b")


def test_the_byte_cap_refuses_and_writes_nothing(store, settings):
    accept(make_entry("run_a"))
    one = buffer.buffered_bytes(ORG)
    settings.MOLLIFIER = {**settings.MOLLIFIER, "ORG_BUFFER_MAX_BYTES": 2 * one + one // 2}
    assert accept(make_entry("run_b")).status == "accepted"

    refused = accept(make_entry("run_c"))

    assert refused == buffer.AcceptResult("over_cap", "run_c", count=2, bytes=2 * one, limit="bytes")
    assert buffer.get(org_id=ORG, run_id="run_c") is None
    assert store.zcard(keys.ready(ORG, ENV)) == 2 and buffer.buffered_bytes(ORG) == 2 * one
    assert accept(make_entry("run_x", org_id="8")).status == "accepted"  # other organisations are not affected


def test_the_count_cap_says_so(store, settings):
    settings.MOLLIFIER = {**settings.MOLLIFIER, "ORG_BUFFER_CAP": 1}
    accept(make_entry("run_a"))

    refused = accept(make_entry("run_b"))

    assert (refused.status, refused.count, refused.limit) == ("over_cap", 1, "count")


def test_bytes_stay_exact_through_mutations_ack_park_and_discard(store):
    for i, run in enumerate(["run_1", "run_2", "run_3", "run_4"]):
        accept(make_entry(run, snapshot={"payload": "p" * (100 * i)}), now_ms=NOW + i)

    def held() -> int:
        waiting = [
            r for r in ("run_1", "run_2", "run_3", "run_4") if store.hget(keys.entry(ORG, r), "materialised") != b"1"
        ]
        return sum(entry_bytes(store, r) for r in waiting if store.exists(keys.entry(ORG, r)))

    buffer.add_tags(org_id=ORG, env_id=ENV, run_id="run_1", now_ms=NOW, tags=["a", "bb", "ccc"], max_tags=10)
    buffer.set_metadata(
        org_id=ORG,
        env_id=ENV,
        run_id="run_2",
        now_ms=NOW,
        metadata='{"m":"' + "z" * 3000 + '"}',
        metadata_type="application/json",
        expected_version=None,
    )
    buffer.set_metadata(
        org_id=ORG,
        env_id=ENV,
        run_id="run_2",
        now_ms=NOW,
        metadata="{}",
        metadata_type="application/json",
        expected_version=None,
    )
    buffer.cancel(org_id=ORG, env_id=ENV, run_id="run_3", now_ms=NOW, reason="a reason")
    for run in ("run_1", "run_2", "run_3"):  # each change moved the entry's count with its size
        assert entry_bytes(store, run) == stored_size(store, run)
    assert buffer.buffered_bytes(ORG) == held()

    popped = buffer.pop(org_id=ORG, env_id=ENV, limit=4, lease_ms=10_000, now_ms=NOW + 10)
    first, second, third, fourth = popped.entries
    assert buffer.ack([first, second], now_ms=NOW + 20) == 2
    assert buffer.buffered_bytes(ORG) == held() == entry_bytes(store, "run_3") + entry_bytes(store, "run_4")
    assert buffer.ack([first], now_ms=NOW + 30) == 0  # acking twice takes nothing back twice
    assert buffer.buffered_bytes(ORG) == held()

    assert buffer.park(third, now_ms=NOW + 40, code="unwritable", message="no")
    assert buffer.buffered_bytes(ORG) == held()  # parked entries still hold their memory
    assert buffer.discard(buffer.get(org_id=ORG, run_id="run_3"))
    assert buffer.buffered_bytes(ORG) == entry_bytes(store, "run_4")
    assert buffer.ack([fourth], now_ms=NOW + 50) == 1
    assert buffer.buffered_bytes(ORG) == 0 and buffer.buffered_count(ORG) == 0


def test_a_memory_full_accept_writes_nothing(store):
    result = buffer.accept(make_entry("run_a"), now_ms=NOW, memory_full=True)

    assert result.status == "memory_full"
    assert buffer.get(org_id=ORG, run_id="run_a") is None and buffer.buffered_bytes(ORG) == 0
    assert accept(make_entry("run_a")).status == "accepted"  # nothing was left behind
