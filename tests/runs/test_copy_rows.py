"""Rows stored at the trigger (MOLLIFIER_STORE_ROWS, runs/copy_rows.py): the drain writes a buffered
run's row as it was encoded when the run was buffered, unless the run changed since; the run's
payload is kept in that row only. These tests hold the stored row to the row the entry itself
gives, every change to marking it stale, and readers to the payload it holds."""

from datetime import UTC, datetime

import lz4.block
import pytest
from django.utils import timezone

from mollifier import buffer, keys
from mollifier.client import get as redis_client
from mollifier.clock import now_ms
from mollifier.codec import PAYLOAD_IN_ROW, from_row
from mollifier.drainer import Drainer
from runs import copy_rows
from runs.models import BatchTaskRun, RunStatus, TaskRun
from runs.services.materialise import TaskRunSink
from runs.snapshots import entry_values, run_to_entry
from tests.buffering import fill_buffer
from tests.factories import EnvironmentFactory, TaskRunFactory

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def store_rows(settings):
    settings.MOLLIFIER = {**settings.MOLLIFIER, "STORE_ROWS": True}


# Options as the SDK sends them, each column kind: text, integers, booleans, timestamps, jsonb,
# an array (empty and not), NULLs, text beyond ASCII.
OPTIONS = [
    {},
    {"tags": ["b", "a", "ünï"], "ttl": "10m", "maxAttempts": 3, "queue": {"name": "q"}, "concurrencyKey": "c"},
    {"idempotencyKey": "key-1", "idempotencyKeyTTL": "1h", "metadata": {"n": 1, "s": "✓"}, "priority": 5},
    {"delay": "1h", "machine": "small-1x", "maxDuration": 30, "test": True},
]


def stored_rows(environment, run_ids):
    org = str(environment.organization_id)
    return {run_id: redis_client().get(keys.row(org, run_id)) for run_id in run_ids}


@pytest.mark.parametrize("options", OPTIONS)
def test_the_stored_row_is_the_row_the_entry_gives(mollifier_on, options):
    """Byte for byte: the row encoded at the trigger and the row built at the drain from the entry
    as Redis returns it (snapshot, fields) are the same row."""
    environment = EnvironmentFactory()
    run_ids = fill_buffer(environment, 1, payload='{"json":{"ü":[1,2.5,null]}}', **options)
    org = str(environment.organization_id)
    for run_id, stored in stored_rows(environment, run_ids).items():
        assert stored is not None
        envelope = from_row(stored, run_id=run_id, org_id=org, env_id=str(environment.pk))
        whole = buffer.get(org_id=org, run_id=run_id)
        rebuilt = copy_rows.row_prefix(entry_values(whole, environment=environment, now=timezone.now()))
        assert copy_rows.prefix_of(envelope.row) == rebuilt
        assert (envelope.task, envelope.accepted_at_ms, envelope.delay_until_ms) == (
            whole.task,
            whole.accepted_at_ms,
            whole.delay_until_ms,
        )
        assert (envelope.idempotency_key, envelope.batch_id, envelope.batch_index) == (
            whole.idempotency_key,
            whole.batch_id,
            whole.batch_index,
        )


@pytest.mark.parametrize("options", OPTIONS)
def test_a_row_written_as_stored_reads_back_as_the_row_built_from_the_entry(mollifier_on, settings, options):
    """The same runs drained twice, once from their stored rows and once from their entries (rows
    deleted): every column reads back the same from Postgres but the time it was written."""
    environment = EnvironmentFactory()
    batch = BatchTaskRun.objects.create(environment=environment, run_count=1, sealed=True, status="PROCESSING")
    run_ids = fill_buffer(environment, 1, batch=batch, **options)
    org, env = str(environment.organization_id), str(environment.pk)
    entries = buffer.pop(org_id=org, env_id=env, limit=10, lease_ms=60_000, now_ms=now_ms()).entries
    assert all(entry.row is not None and entry.snapshot is None for entry in entries)
    whole = buffer.reread(entries)
    assert all(entry.row is None and entry.snapshot is not None for entry in whole)

    def written(round_entries):
        TaskRunSink().write(
            round_entries,
            pin=lambda txid: buffer.pin(round_entries, txid=txid, now_ms=now_ms(), lease_ms=60_000),
        )
        rows = {f"run_{run.id}": run for run in TaskRun.objects.filter(id__in=[r[4:] for r in run_ids])}
        columns = [field.attname for field in TaskRun._meta.concrete_fields if field.attname != "materialised_at"]
        values = {run_id: {name: getattr(row, name) for name in columns} for run_id, row in rows.items()}
        TaskRun.objects.filter(id__in=[r[4:] for r in run_ids]).delete()
        return values

    as_stored = written(entries)
    from_entries = written(whole)
    assert as_stored == from_entries
    assert set(as_stored) == set(run_ids)
    assert all(row["batch_id"] == batch.id for row in as_stored.values())


def test_each_change_while_buffered_marks_the_stored_row_stale(mollifier_on):
    environment = EnvironmentFactory()
    org, env = str(environment.organization_id), str(environment.pk)
    cancelled, tagged, delayed, described, keyed, kept = fill_buffer(environment, 6, idempotencyKey=None)
    (key_holder,) = fill_buffer(environment, 1, task="keyed", idempotencyKey="k")
    now = now_ms()
    buffer.cancel(org_id=org, env_id=env, run_id=cancelled, now_ms=now, reason="r")
    buffer.add_tags(org_id=org, env_id=env, run_id=tagged, now_ms=now, tags=["x"], max_tags=10)
    buffer.set_delay(org_id=org, env_id=env, run_id=delayed, now_ms=now, delay_until_ms=now + 60_000)
    buffer.set_metadata(
        org_id=org,
        env_id=env,
        run_id=described,
        now_ms=now,
        metadata='{"a":1}',
        metadata_type="application/json",
        expected_version=None,
    )
    buffer.reset_idempotency(org_id=org, env_id=env, task="keyed", key="k", now_ms=now)

    rows = stored_rows(environment, [cancelled, tagged, delayed, described, key_holder, kept])
    assert [run_id for run_id, row in rows.items() if row[:1] != b"!"] == [kept]
    for run_id in rows:  # a stale row is not written, but still holds the payload readers see
        assert from_row(rows[run_id], run_id=run_id, org_id=org, env_id=env) is None or run_id == kept
        assert buffer.get(org_id=org, run_id=run_id).snapshot["payload"] == '{"n":1}'


def test_an_entry_marked_terminal_has_its_stored_row_marked_stale(mollifier_on):
    environment = EnvironmentFactory()
    (run_id,) = fill_buffer(environment, 1)
    org, env = str(environment.organization_id), str(environment.pk)
    (entry,) = buffer.pop(org_id=org, env_id=env, limit=1, lease_ms=60_000, now_ms=now_ms()).entries
    buffer.fail(entry, now_ms=now_ms(), backoff_ms=0, code="attempts_exhausted", message="m")

    assert stored_rows(environment, [run_id])[run_id][:1] == b"!"


def test_the_stored_row_is_counted_in_the_entry_bytes_and_freed_by_the_drain(mollifier_on, settings):
    environment = EnvironmentFactory()
    org = str(environment.organization_id)
    (run_id,) = fill_buffer(environment, 1)
    row = redis_client().get(keys.row(org, run_id))
    snapshot = redis_client().get(keys.snapshot(org, run_id))
    assert int(redis_client().hget(keys.entry(org, run_id), "bytes")) > len(row) + len(snapshot)

    settings.MOLLIFIER = {**settings.MOLLIFIER, "DRAIN_MAX_ROWS_PER_SEC": 100_000}
    Drainer().run(once=True)

    assert TaskRun.objects.get(id=run_id.removeprefix("run_")).status == RunStatus.QUEUED
    assert redis_client().exists(keys.row(org, run_id)) == 0
    assert int(redis_client().hget(keys.stats(org), "bytes") or 0) == 0


def test_the_payload_is_kept_once_in_the_row_and_read_back_whole(mollifier_on, settings):
    environment = EnvironmentFactory()
    org = str(environment.organization_id)
    payload = '{"json":{"text":"' + "é✓ " * 20_000 + '"}}'
    (run_id,) = fill_buffer(environment, 1, payload=payload)

    snapshot = redis_client().get(keys.snapshot(org, run_id))
    assert snapshot[:1] == PAYLOAD_IN_ROW and len(snapshot) < 1_000  # the payload is not in it
    assert buffer.get(org_id=org, run_id=run_id).snapshot["payload"] == payload
    settings.MOLLIFIER = {**settings.MOLLIFIER, "DRAIN_MAX_ROWS_PER_SEC": 100_000}
    Drainer().run(once=True)
    assert TaskRun.objects.get(id=run_id.removeprefix("run_")).payload == payload


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("max_attempts", 2**31),  # binary COPY would send it wrapped around
        ("depth", -(2**31) - 1),
        ("is_test", "false"),  # ... and read any truthy value as true
        ("payload", "\ud800"),  # not text any column can hold
        ("created_at", datetime(2026, 1, 1)),  # noqa: DTZ001 - naive: no instant to store
    ],
)
def test_a_value_its_column_cannot_hold_gives_no_stored_row(column, value):
    """The drain then builds the row from the entry, meets the same value and isolates the entry
    (tests/mollifier/test_drainer.py), instead of writing another value than the run had."""
    run = TaskRunFactory.build(environment=EnvironmentFactory(), created_at=datetime.now(UTC))
    setattr(run, column, value)
    with pytest.raises((ValueError, TypeError)):
        copy_rows.row_prefix({field.attname: getattr(run, field.attname) for field in TaskRun._meta.concrete_fields})
    if column != "created_at":  # the entry's trigger time is its own field, always an instant
        assert run_to_entry(run).row is None
    run.is_test, run.max_attempts, run.depth, run.payload, run.created_at = False, 3, 0, "{}", datetime.now(UTC)
    assert run_to_entry(run).row is not None


@pytest.mark.django_db(transaction=True)  # the failed COPY must really roll back
def test_a_stored_row_postgres_refuses_costs_a_retry_from_the_entry_not_the_run(mollifier_on, settings):
    """A stored row Postgres cannot read (damaged in Redis, say) fails its round; the drain then
    writes each entry on its own, built from its snapshot, and the run lands as it was triggered."""
    environment = EnvironmentFactory()
    good, damaged = fill_buffer(environment, 2)
    org = str(environment.organization_id)
    stored = redis_client().get(keys.row(org, damaged))
    head, _, body = stored.partition(b"\n")
    row = lz4.block.decompress(body[1:]) if body[:1] == b"z" else body[1:]
    row = row[:4] + b"\x00\x07" + row[6:]  # it says it has 7 columns: its payload's place is unchanged
    redis_client().set(keys.row(org, damaged), head + b"\nr" + row)

    settings.MOLLIFIER = {**settings.MOLLIFIER, "DRAIN_MAX_ROWS_PER_SEC": 100_000}
    Drainer().run(once=True)

    rows = {f"run_{run.id}": run for run in TaskRun.objects.all()}
    assert set(rows) == {good, damaged}
    assert rows[damaged].status == RunStatus.QUEUED and rows[damaged].payload == rows[good].payload
    assert rows[damaged].buffered_at == rows[damaged].created_at
    assert buffer.buffered_count(org) == 0


def test_no_row_is_stored_unless_asked(mollifier_on, settings):
    settings.MOLLIFIER = {**settings.MOLLIFIER, "STORE_ROWS": False}
    environment = EnvironmentFactory()
    (run_id,) = fill_buffer(environment, 1)

    assert stored_rows(environment, [run_id])[run_id] is None
    settings.MOLLIFIER = {**settings.MOLLIFIER, "DRAIN_MAX_ROWS_PER_SEC": 100_000}
    Drainer().run(once=True)
    assert TaskRun.objects.get(id=run_id.removeprefix("run_")).status == RunStatus.QUEUED


def test_a_row_stored_under_another_table_layout_is_built_again_from_its_entry(mollifier_on, settings):
    """A migration since the run was buffered: its stored row is not written, nor taken for an
    unreadable entry; the row is built from the snapshot (its payload read from the stored row)."""
    environment = EnvironmentFactory()
    org = str(environment.organization_id)
    (run_id,) = fill_buffer(environment, 1, payload='{"json":{"kept":true}}', tags=["t"])
    head, _, body = redis_client().get(keys.row(org, run_id)).partition(b"\n")
    row = lz4.block.decompress(body[1:]) if body[:1] == b"z" else body[1:]
    redis_client().set(keys.row(org, run_id), head + b"\nr" + b"\x00\x00\x00\x00" + row[4:])  # another layout

    settings.MOLLIFIER = {**settings.MOLLIFIER, "DRAIN_MAX_ROWS_PER_SEC": 100_000}
    Drainer().run(once=True)

    written = TaskRun.objects.get(id=run_id.removeprefix("run_"))
    assert written.status == RunStatus.QUEUED
    assert (written.payload, written.tags) == ('{"json":{"kept":true}}', ["t"])


def test_runs_stored_with_rows_drain_whole_once_rows_are_turned_off(mollifier_on, settings):
    environment = EnvironmentFactory()
    (run_id,) = fill_buffer(environment, 1, payload='{"json":{"kept":1}}')
    settings.MOLLIFIER = {**settings.MOLLIFIER, "STORE_ROWS": False, "DRAIN_MAX_ROWS_PER_SEC": 100_000}

    Drainer().run(once=True)

    written = TaskRun.objects.get(id=run_id.removeprefix("run_"))
    assert (written.status, written.payload) == (RunStatus.QUEUED, '{"json":{"kept":1}}')


def test_a_drainer_writes_stored_rows_whatever_its_own_setting(mollifier_on, settings):
    """The web processes that buffered the runs decided: a drainer started without the setting
    still leases their stored rows."""
    environment = EnvironmentFactory()
    fill_buffer(environment, 2)
    settings.MOLLIFIER = {**settings.MOLLIFIER, "STORE_ROWS": False}
    org, env = str(environment.organization_id), str(environment.pk)

    entries = buffer.pop(org_id=org, env_id=env, limit=10, lease_ms=60_000, now_ms=now_ms()).entries

    assert len(entries) == 2 and all(entry.row is not None and entry.snapshot is None for entry in entries)
