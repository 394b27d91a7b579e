"""Each buffer script against real Redis — single node and a 3-master cluster (no CROSSSLOT) —
with its return codes and the keys and TTLs it leaves."""

import json
import zlib

import pytest

from mollifier import buffer, codec, keys, scripts
from mollifier.codec import Entry

NOW = 1_800_000_000_000
ORG, ENV = "7", "42"


def make_entry(run_id="run_a", **overrides) -> Entry:
    fields = dict(
        run_id=run_id,
        org_id=ORG,
        env_id=ENV,
        task="hello-world",
        accepted_at_ms=NOW,
        snapshot={"payload": '{"json":1}', "n": 2**70, "empty": [], "text": "zaĺ ✓ 𝄞", "nested": {"a": [1, {}]}},
    )
    fields.update(overrides)
    return Entry(**fields)


def accept(entry: Entry, now_ms=NOW) -> buffer.AcceptResult:
    """Keyed entries come with a keyed marker's generation, as the trigger path sends them once
    Postgres holds the marker (the marker's own protocol: test_keyed_marker_scripts.py)."""
    return buffer.accept(entry, now_ms=now_ms, marker_gen=1 if entry.idempotency_key else None)


def test_accept_writes_the_entry_without_ttl_and_indexes_the_org(store):
    result = accept(make_entry(tags=[]))

    assert result == buffer.AcceptResult("accepted", "run_a")
    assert store.ttl(keys.entry(ORG, "run_a")) == -1  # waiting entries never expire
    assert store.ttl(keys.snapshot(ORG, "run_a")) == -1
    assert store.zscore(keys.ready(ORG, ENV), "run_a") == NOW
    assert store.zscore(keys.listing(ORG, ENV), "run_a") == NOW
    assert store.smembers(keys.envs(ORG)) == {b"42"}
    assert buffer.buffered_count(ORG) == 1
    assert buffer.active_orgs() == [ORG]


def test_buffered_total_sums_the_organisations_asked_for():
    for run_id in ("run_a", "run_b"):
        accept(make_entry(run_id))
    accept(make_entry("run_c", org_id="other-org"))
    accept(make_entry("run_d", org_id="third-org"))

    assert buffer.buffered_total([ORG, "other-org"]) == 3
    assert buffer.buffered_total(["third-org", "no-such-org"]) == 1
    assert buffer.buffered_total([]) == 0


def test_snapshot_round_trips_exactly(store):
    original = make_entry(tags=["b", "a"], metadata='{"m":1}', metadata_type="application/json")
    accept(original)

    entry = buffer.get(org_id=ORG, run_id="run_a")

    assert entry.snapshot == original.snapshot
    assert entry.snapshot["n"] == 2**70 and entry.snapshot["empty"] == [] and entry.snapshot["nested"] == {"a": [1, {}]}
    assert entry.tags == ["b", "a"] and entry.metadata == '{"m":1}'
    assert entry.accepted_at_ms == NOW and entry.attempts == 0 and not entry.materialised


def test_a_large_snapshot_is_compressed_and_round_trips(store):
    big = {"payload": '{"json":' + '"' + "é✓ " * 2000 + '"}', "tags": [], "n": 10**30}
    accept(make_entry(snapshot=big))

    stored = store.get(keys.snapshot(ORG, "run_a"))
    assert len(stored) < 1000 and stored.startswith(codec.LZ4)  # compressed, not JSON
    assert buffer.get(org_id=ORG, run_id="run_a").snapshot == big
    assert store.object("encoding", keys.entry(ORG, "run_a")) in (b"listpack", b"ziplist")  # the compact hash


@pytest.mark.parametrize(
    "payload",
    ['{"json":{"a":"x\\ny","b":[1,2]}}', "line one\nline two\n\n", "", '{"json":"\u2028 ✓ \\"q\\""}', None, {"n": 1}],
)
def test_the_payload_round_trips_outside_the_json_whatever_it_holds(store, payload):
    """A string payload is stored after the rest's JSON (newlines and quotes in it included); a payload
    of another kind stays inside the JSON."""
    snapshot = {"payload": payload, "payload_type": "application/super+json", "tags": ["t"], "n": 2**70}
    accept(make_entry(snapshot=snapshot))

    assert buffer.get(org_id=ORG, run_id="run_a").snapshot == snapshot


@pytest.mark.parametrize(
    "stored",
    [
        json.dumps({"payload": '{"json":1}', "n": 2**70}).encode(),  # plain JSON
        zlib.compress(json.dumps({"payload": '{"json":1}' * 100, "n": 2**70}).encode(), 1),  # zlib
    ],
)
def test_snapshots_stored_by_earlier_versions_still_read(store, stored):
    """Entries buffered before an upgrade are drained after it."""
    accept(make_entry(snapshot={"payload": "replaced"}))
    store.set(keys.snapshot(ORG, "run_a"), stored)

    expected = json.loads(zlib.decompress(stored) if stored[:1] != b"{" else stored)
    assert buffer.get(org_id=ORG, run_id="run_a").snapshot == expected


def test_accept_deduplicates_by_run_id(store):
    accept(make_entry())

    assert accept(make_entry(task="other")).status == "duplicate_run"
    assert buffer.get(org_id=ORG, run_id="run_a").task == "hello-world"
    assert buffer.buffered_count(ORG) == 1


def test_accept_deduplicates_by_idempotency_key(store):
    accept(make_entry("run_a", idempotency_key="k"))

    result = accept(make_entry("run_b", idempotency_key="k"))

    assert result == buffer.AcceptResult("duplicate_idempotency", "run_a")
    assert buffer.get(org_id=ORG, run_id="run_b") is None
    assert buffer.lookup_idempotency(org_id=ORG, env_id=ENV, task="hello-world", key="k", now_ms=NOW).run_id == "run_a"


def test_idempotency_keys_are_scoped_and_segments_never_alias(store):
    assert keys.idempotency(ORG, ENV, "a:b", "c") != keys.idempotency(ORG, ENV, "a", "b:c")
    accept(make_entry("run_a", task="a:b", idempotency_key="c"))

    assert accept(make_entry("run_b", task="a", idempotency_key="b:c")).status == "accepted"
    assert accept(make_entry("run_c", env_id="43", task="a:b", idempotency_key="c")).status == "accepted"


def test_an_expired_key_is_released_on_lookup(store):
    accept(make_entry("run_a", idempotency_key="k", idempotency_expires_ms=NOW + 2000))

    assert buffer.lookup_idempotency(org_id=ORG, env_id=ENV, task="hello-world", key="k", now_ms=NOW + 1000)
    assert buffer.lookup_idempotency(org_id=ORG, env_id=ENV, task="hello-world", key="k", now_ms=NOW + 3000) is None
    assert buffer.get(org_id=ORG, run_id="run_a").idempotency_key is None
    assert accept(make_entry("run_b", idempotency_key="k")).status == "accepted"


def test_the_org_cap_refuses_and_writes_nothing(store, settings):
    settings.MOLLIFIER = {**settings.MOLLIFIER, "ORG_BUFFER_CAP": 2}
    accept(make_entry("run_a"))
    accept(make_entry("run_b"))

    result = accept(make_entry("run_c"))

    assert result.status == "over_cap" and result.count == 2
    assert buffer.get(org_id=ORG, run_id="run_c") is None
    assert store.zcard(keys.ready(ORG, ENV)) == 2
    assert accept(make_entry("run_x", org_id="8")).status == "accepted"  # other organisations are not affected


def test_pop_leases_oldest_first_and_reclaims_expired_leases(store):
    for i, run in enumerate(["run_1", "run_2", "run_3"]):
        accept(make_entry(run), now_ms=NOW + i)

    first = buffer.pop(org_id=ORG, env_id=ENV, limit=2, lease_ms=1000, now_ms=NOW + 10)
    assert [e.run_id for e in first.entries] == ["run_1", "run_2"]
    assert store.zscore(keys.leases(ORG, ENV), "run_1") == NOW + 1010

    again = buffer.pop(org_id=ORG, env_id=ENV, limit=5, lease_ms=1000, now_ms=NOW + 20)
    after_expiry = buffer.pop(org_id=ORG, env_id=ENV, limit=5, lease_ms=1000, now_ms=NOW + 2000)

    assert [e.run_id for e in again.entries] == ["run_3"]
    assert after_expiry.reclaimed == 3 and sorted(e.run_id for e in after_expiry.entries) == ["run_1", "run_2", "run_3"]


def test_ack_releases_key_slot_and_count_keeps_entry_for_grace_without_its_snapshot(store):
    accept(make_entry("run_a", idempotency_key="k", batch_id="b1", batch_index=0))
    popped = buffer.pop(org_id=ORG, env_id=ENV, limit=10, lease_ms=1000, now_ms=NOW)

    acked = buffer.ack(popped.entries, now_ms=NOW + 5)
    again = buffer.ack(popped.entries, now_ms=NOW + 6)

    assert (acked, again) == (1, 0)
    entry = buffer.get(org_id=ORG, run_id="run_a")
    assert entry.materialised
    assert 0 < store.pttl(keys.entry(ORG, "run_a")) <= 30_000
    assert store.exists(keys.snapshot(ORG, "run_a")) == 0  # most of its bytes: no reader renders it now
    assert store.get(keys.idempotency(ORG, ENV, "hello-world", "k")) is None
    assert buffer.batch_buffered_items(org_id=ORG, batch_id="b1") == {}
    assert buffer.buffered_count(ORG) == 0
    assert store.smembers(keys.envs(ORG)) == set()
    assert buffer.active_orgs() == []  # idle: un-indexed


def test_reactivation_after_idle_keeps_the_org_indexed(store):
    accept(make_entry("run_a"))
    popped = buffer.pop(org_id=ORG, env_id=ENV, limit=10, lease_ms=1000, now_ms=NOW)
    accept(make_entry("run_b"))  # the org has work again before the ack

    buffer.ack(popped.entries, now_ms=NOW)

    assert buffer.active_orgs() == [ORG]


def test_retry_backs_off_and_counts_attempts(store):
    accept(make_entry())
    entry = buffer.pop(org_id=ORG, env_id=ENV, limit=1, lease_ms=1000, now_ms=NOW).entries[0]

    attempts = buffer.retry(entry, now_ms=NOW + 1, backoff_ms=500, code="db", message="down")
    lost = buffer.retry(entry, now_ms=NOW + 2, backoff_ms=500, code="db", message="down")

    assert (attempts, lost) == (1, -1)  # the second caller no longer held the lease
    assert store.zscore(keys.ready(ORG, ENV), "run_a") == NOW + 501
    stored = buffer.get(org_id=ORG, run_id="run_a")
    assert stored.attempts == 1 and stored.last_error == {"code": "db", "message": "down"}
    assert buffer.pop(org_id=ORG, env_id=ENV, limit=1, lease_ms=1000, now_ms=NOW + 100).entries == []


def test_fail_marks_terminal_and_gives_it_back_after_a_backoff(store):
    accept(make_entry())
    entry = buffer.pop(org_id=ORG, env_id=ENV, limit=1, lease_ms=1000, now_ms=NOW).entries[0]

    assert buffer.fail(entry, now_ms=NOW + 1, backoff_ms=500, code="attempts_exhausted", message="8 attempts")

    assert buffer.pop(org_id=ORG, env_id=ENV, limit=1, lease_ms=1000, now_ms=NOW + 100).entries == []
    again = buffer.pop(org_id=ORG, env_id=ENV, limit=1, lease_ms=1000, now_ms=NOW + 501).entries[0]
    assert again.terminal_error == {"code": "attempts_exhausted", "message": "8 attempts"}


def mutate_kwargs(**extra):
    return {"org_id": ORG, "env_id": ENV, "run_id": "run_a", "now_ms": NOW, **extra}


def test_cancel_first_wins_and_is_refused_while_leased(store):
    accept(make_entry())

    assert buffer.cancel(**mutate_kwargs(reason="first")).status == "applied"
    assert buffer.cancel(**mutate_kwargs(reason="second", now_ms=NOW + 9)).status == "applied"
    entry = buffer.get(org_id=ORG, run_id="run_a")
    assert (entry.cancelled_at_ms, entry.cancel_reason) == (NOW, "first")

    buffer.pop(org_id=ORG, env_id=ENV, limit=1, lease_ms=1000, now_ms=NOW)
    assert buffer.cancel(**mutate_kwargs(reason="late")).status == "busy"


def test_mutations_refuse_another_environment_and_materialised_entries(store):
    accept(make_entry())

    assert buffer.cancel(**mutate_kwargs(env_id="999", reason="x")).status == "not_found"
    assert buffer.cancel(**mutate_kwargs(run_id="run_missing", reason="x")).status == "not_found"
    buffer.ack(buffer.pop(org_id=ORG, env_id=ENV, limit=1, lease_ms=1000, now_ms=NOW).entries, now_ms=NOW)
    assert buffer.cancel(**mutate_kwargs(reason="x")).status == "materialised"


def test_add_tags_dedupes_and_respects_the_cap(store):
    accept(make_entry(tags=[]))

    assert buffer.add_tags(**mutate_kwargs(tags=["a", "b", "a"], max_tags=3)).status == "applied"
    assert buffer.add_tags(**mutate_kwargs(tags=["b", "c"], max_tags=3)).status == "applied"
    over = buffer.add_tags(**mutate_kwargs(tags=["d"], max_tags=3))

    assert (over.status, over.value) == ("limit_exceeded", "4")
    assert buffer.get(org_id=ORG, run_id="run_a").tags == ["a", "b", "c"]


def test_empty_tags_written_by_lua_read_back_as_a_list(store):
    accept(make_entry(tags=[]))
    store.hset(keys.entry(ORG, "run_a"), "tags", "{}")  # what cjson makes of an empty array

    assert buffer.get(org_id=ORG, run_id="run_a").tags == []
    assert buffer.add_tags(**mutate_kwargs(tags=["x"], max_tags=10)).status == "applied"
    assert buffer.get(org_id=ORG, run_id="run_a").tags == ["x"]


def test_set_delay_and_metadata_compare_and_set(store):
    accept(make_entry(metadata='{"v":0}'))

    assert buffer.set_delay(**mutate_kwargs(delay_until_ms=NOW + 60_000)).status == "applied"
    first = buffer.set_metadata(
        **mutate_kwargs(metadata='{"v":1}', metadata_type="application/json", expected_version=0)
    )
    stale = buffer.set_metadata(
        **mutate_kwargs(metadata='{"v":9}', metadata_type="application/json", expected_version=0)
    )

    assert (first.status, first.value) == ("applied", "1")
    assert (stale.status, stale.value) == ("conflict", "1")
    entry = buffer.get(org_id=ORG, run_id="run_a")
    assert (
        entry.delay_until_ms == NOW + 60_000 and json.loads(entry.metadata) == {"v": 1} and entry.metadata_version == 1
    )


def test_reset_idempotency_clears_lookup_claim_and_entry_fields(store):
    accept(make_entry(idempotency_key="k"))
    store.set(keys.claim(ORG, ENV, "hello-world", "k"), "run_a")

    result = buffer.reset_idempotency(org_id=ORG, env_id=ENV, task="hello-world", key="k", now_ms=NOW)

    assert result == buffer.ResetResult("reset", "run_a")
    assert store.get(keys.idempotency(ORG, ENV, "hello-world", "k")) is None
    assert store.get(keys.claim(ORG, ENV, "hello-world", "k")) is None
    assert buffer.get(org_id=ORG, run_id="run_a").idempotency_key is None
    assert buffer.reset_idempotency(org_id=ORG, env_id=ENV, task="hello-world", key="k", now_ms=NOW).status == "none"


def test_reset_idempotency_is_busy_while_leased(store):
    accept(make_entry(idempotency_key="k"))
    buffer.pop(org_id=ORG, env_id=ENV, limit=1, lease_ms=1000, now_ms=NOW)

    assert buffer.reset_idempotency(org_id=ORG, env_id=ENV, task="hello-world", key="k", now_ms=NOW).status == "busy"


def test_batch_items_are_tracked_while_buffered(store):
    accept(make_entry("run_a", batch_id="b1", batch_index=0))
    accept(make_entry("run_b", batch_id="b1", batch_index=3))

    assert buffer.batch_buffered_items(org_id=ORG, batch_id="b1") == {0: "run_a", 3: "run_b"}


def test_unreadable_snapshot_is_kept_not_dropped(store):
    accept(make_entry())
    store.set(keys.snapshot(ORG, "run_a"), "{broken")

    entry = buffer.pop(org_id=ORG, env_id=ENV, limit=1, lease_ms=1000, now_ms=NOW).entries[0]

    assert entry.run_id == "run_a" and entry.snapshot is None and entry.raw_snapshot == "{broken"


@pytest.mark.parametrize("value", ["abc", "", "9" * 40])
def test_garbage_times_read_as_absent(store, value):
    accept(make_entry(delay_until_ms=NOW))
    store.hset(keys.entry(ORG, "run_a"), "delay_until_ms", value)

    entry = buffer.get(org_id=ORG, run_id="run_a")

    assert entry.delay_until_ms is None or entry.delay_until_ms == int(value)


def test_every_entry_field_reads_back_in_its_own_place(store):
    """codec.ENTRY_FIELDS and from_values's unpacking are kept in the same order by hand: each field
    set to a value of its own must come back on its own attribute."""
    original = make_entry(
        tags=["t1"],
        metadata='{"m":1}',
        metadata_type="application/x-meta",
        delay_until_ms=NOW + 1,
        idempotency_key="idem",
        idempotency_expires_ms=NOW + 2,
        batch_id="batch_b",
        batch_index=3,
        request_key="req",
        attempts=4,
        metadata_version=5,
        cancelled_at_ms=NOW + 6,
        cancel_reason="why",
    )
    accept(original)
    store.hset(
        keys.entry(ORG, "run_a"),
        mapping={
            "last_error": '{"code":"last"}',
            "terminal_error": '{"code":"terminal"}',
            "materialised": "1",
            "parked_at_ms": str(NOW + 7),
        },
    )

    entry = buffer.get(org_id=ORG, run_id="run_a")

    assert (entry.run_id, entry.org_id, entry.env_id, entry.task, entry.accepted_at_ms) == (
        "run_a",
        ORG,
        ENV,
        "hello-world",
        NOW,
    )
    assert (entry.tags, entry.metadata, entry.metadata_type, entry.delay_until_ms) == (
        ["t1"],
        '{"m":1}',
        "application/x-meta",
        NOW + 1,
    )
    assert (entry.idempotency_key, entry.idempotency_expires_ms, entry.batch_id, entry.batch_index) == (
        "idem",
        NOW + 2,
        "batch_b",
        3,
    )
    assert (entry.request_key, entry.attempts, entry.metadata_version) == ("req", 4, 5)
    assert (entry.cancelled_at_ms, entry.cancel_reason) == (NOW + 6, "why")
    assert (entry.last_error, entry.terminal_error) == ({"code": "last"}, {"code": "terminal"})
    assert entry.materialised and entry.parked_at_ms == NOW + 7


def test_read_answers_values_in_the_order_asked_and_nothing_for_a_gone_entry(store):
    accept(make_entry(tags=["x"]))
    entry_keys = [
        keys.entry(ORG, "run_a"),
        keys.snapshot(ORG, "run_a"),
        keys.row(ORG, "run_a"),
        keys.entry(ORG, "gone"),
        keys.snapshot(ORG, "gone"),
        keys.row(ORG, "gone"),
    ]

    (found, found_snapshot, found_row), (gone, gone_snapshot, gone_row) = scripts.READ(
        keys=entry_keys, args=["task", "no_such_field", "run"], client=store
    )

    assert found == [b"hello-world", None, b"run_a"] and found_snapshot
    assert found_row is None  # a snapshot that holds its payload: its row is not read
    assert gone == [None, None, None] and gone_snapshot is None and gone_row is None


@pytest.mark.parametrize(
    "text, expected",
    [
        ('{"n":123456789012345678901234567890}', {"n": 123456789012345678901234567890}),  # past 64 bits: exact
        ('{"n":-9223372036854775809,"f":1.5}', {"n": -9223372036854775809, "f": 1.5}),
        ('{"a":1,"a":2}', {"a": 2}),
        ('{"s":"\\ud800"}', {"s": "\ud800"}),  # a lone surrogate: json reads it
        ('{"x":NaN}', {"x": float("nan")}),
        ('{"x":1e400}', {"x": float("inf")}),
        ('{"x": [ 1 , 2 ] }', {"x": [1, 2]}),
        ('{"s":"12345678901234567890123","n":1}', {"s": "12345678901234567890123", "n": 1}),  # digits in a string
        ('{"n":1234567890123456789,"m":18446744073709551615}', {"n": 1234567890123456789, "m": 18446744073709551615}),
        ('{"n":18446744073709551616,"s":"é"}', {"n": 18446744073709551616, "s": "é"}),  # one past 64 bits
        ('{"s":"١٢٣٤٥٦٧٨٩٠١٢٣٤٥٦٧٨٩٠"}', {"s": "١٢٣٤٥٦٧٨٩٠١٢٣٤٥٦٧٨٩٠"}),  # digits, not ASCII ones
        ("not json", None),
        ("", None),
    ],
)
def test_stored_json_reads_as_json_reads_it(text, expected):
    for value in (text, text.encode("utf-8", "surrogatepass")):
        assert json.dumps(codec._loads(value)) == json.dumps(expected)  # as text: NaN equals NaN
