"""Draining: fair, bulk, exactly once, and every outcome a row."""

import json
import logging
import time

import pytest

from mollifier import buffer, keys, scripts
from mollifier.client import get as redis_client
from mollifier.clock import now_ms
from mollifier.drainer import Drainer, settle
from mollifier.sink import SinkReport
from runs.models import BatchTaskRun, BatchTaskRunItem, RunStatus, TaskRun
from runs.services.materialise import TaskRunSink
from tests.buffering import fill_buffer, write_round
from tests.conftest import client_for
from tests.factories import EnvironmentFactory, TaskRunFactory
from tests.helpers import trigger
from tests.redis_watch import watch_redis

pytestmark = pytest.mark.django_db


@pytest.fixture
def drain_settings(settings, mollifier_on):
    settings.MOLLIFIER = {**settings.MOLLIFIER, "DRAIN_BATCH_SIZE": 100, "DRAIN_MAX_ROWS_PER_SEC": 100_000}
    return settings.MOLLIFIER


def drain(**kwargs) -> Drainer:
    drainer = Drainer(**kwargs)
    drainer.run(once=True)
    return drainer


def internal(run_id: str) -> str:
    return run_id.removeprefix("run_")


def test_a_burst_lands_with_the_answered_ids_and_the_trigger_time(enrolled, drain_settings):
    api = client_for(enrolled)
    responses = [trigger(api, payload={"i": i}, tags=["t"]) for i in range(30)]
    answered = {r.json()["id"]: r for r in responses}
    buffered = [r.json()["id"] for r in responses if r.headers.get("x-mollifier")]
    before = {run_id: api.get(f"/api/v3/runs/{run_id}").json()["createdAt"] for run_id in buffered}

    drain()

    assert TaskRun.objects.count() == 30
    assert {run.friendly_id for run in TaskRun.objects.all()} == set(answered)
    for run_id in buffered:
        run = TaskRun.objects.get(id=internal(run_id))
        assert run.buffered_at is not None and run.materialised_at >= run.buffered_at
        assert run.created_at == run.buffered_at
        assert api.get(f"/api/v3/runs/{run_id}").json()["createdAt"] == before[run_id]  # the trigger time
        assert run.tags == ["t"] and run.status == RunStatus.QUEUED
    assert buffer.buffered_count(str(enrolled.organization_id)) == 0
    assert buffer.active_orgs() == []


def test_a_small_tenant_drains_within_two_rounds_beside_a_big_backlog(drain_settings):
    big, small = EnvironmentFactory(), EnvironmentFactory()
    fill_buffer(big, 10_000)
    small_ids = fill_buffer(small, 10)
    drainer = Drainer()

    rounds = [drainer.drain_round() for _ in range(2)]

    assert TaskRun.objects.filter(environment=small).count() == 10
    assert {run.friendly_id for run in TaskRun.objects.filter(environment=small)} == set(small_ids)
    assert TaskRun.objects.filter(environment=big).count() <= 200  # at most one batch per round
    assert sum(r.popped for r in rounds) <= 210


def test_one_environment_gives_at_most_a_batch_per_round(drain_settings):
    environment = EnvironmentFactory()
    fill_buffer(environment, 250)

    result = Drainer().drain_round()

    assert result.popped == 100 and result.acked == 100 and result.report.inserted == 100


@pytest.mark.django_db(transaction=True)  # the pins' transaction must really commit
def test_a_round_committed_but_never_acked_is_settled_not_rewritten(drain_settings):
    environment = EnvironmentFactory()
    fill_buffer(environment, 20)
    org, env = str(environment.organization_id), str(environment.pk)

    popped = buffer.pop(org_id=org, env_id=env, limit=100, lease_ms=1000, now_ms=now_ms())
    write_round(popped.entries, lease_ms=1000)  # committed; the drainer "dies" before its ack

    later = now_ms() + 5_000  # the lease has expired
    drainer = Drainer(clock=lambda: later)
    result = drainer.drain_round()

    # The pins' transaction committed: the entries are acked, not taken back and written again.
    assert result.settled == 20 and result.reclaimed == 0 and result.popped == 0
    assert TaskRun.objects.count() == 20
    assert not TaskRun.objects.filter(status=RunStatus.SYSTEM_FAILURE).exists()
    assert buffer.buffered_count(org) == 0


@pytest.mark.django_db(transaction=True)  # the write commits: its transaction is not the test's
def test_pins_settled_twice_are_logged_once(drain_settings, caplog):
    """Two drainers (or a drainer and the sweep) may settle the same lapsed pins: the log line
    counts what each one changed, so the second, which changes nothing, says nothing."""
    environment = EnvironmentFactory()
    fill_buffer(environment, 6)
    org, env = str(environment.organization_id), str(environment.pk)
    popped = buffer.pop(org_id=org, env_id=env, limit=100, lease_ms=1000, now_ms=now_ms())
    txids = []

    def pin(txid):
        txids.append(txid)
        return buffer.pin(popped.entries, txid=txid, now_ms=now_ms(), lease_ms=1000)

    TaskRunSink().write(popped.entries, pin=pin)  # committed; its drainer "dies" before its ack
    pins = [buffer.Pin(org, env, entry.run_id, f"{entry.lease}:{txids[0]}") for entry in popped.entries]

    with caplog.at_level(logging.INFO, logger="mollifier.drainer"):
        settle(TaskRunSink(), pins, now_ms=now_ms() + 5_000, lapsed=True)
        settle(TaskRunSink(), pins, now_ms=now_ms() + 5_000, lapsed=True)

    lines = [r.getMessage() for r in caplog.records if "pins_settled" in r.getMessage()]
    assert lines == ["mollifier.drain.pins_settled committed=6 not_committed=0"]
    assert buffer.buffered_count(org) == 0 and TaskRun.objects.count() == 6


def test_a_round_holding_a_run_already_written_writes_the_others_and_counts_it(drain_settings):
    """The round's COPY straight into the table meets the existing row; the round goes again
    through the conflict-tolerant insert, in the same transaction."""
    environment = EnvironmentFactory()
    run_ids = fill_buffer(environment, 10)
    org, env = str(environment.organization_id), str(environment.pk)
    popped = buffer.pop(org_id=org, env_id=env, limit=100, lease_ms=60_000, now_ms=now_ms())
    write_round([entry for entry in popped.entries if entry.run_id == run_ids[3]])  # written, not acked

    report = write_round(popped.entries)

    assert (report.inserted, report.already) == (9, 1)
    assert sorted(TaskRun.objects.values_list("id", flat=True)) == sorted(internal(run_id) for run_id in run_ids)


def test_cancelled_and_delayed_runs_land_as_such(enrolled, drain_settings):
    api = client_for(enrolled)
    [trigger(api, payload=i) for i in range(5)]
    cancelled = trigger(api, payload="c").json()["id"]
    delayed = trigger(api, payload="d", delay="1h").json()["id"]
    api.post(f"/api/v2/runs/{cancelled}/cancel")

    drain()

    run = TaskRun.objects.get(id=internal(cancelled))
    assert run.status == RunStatus.CANCELED and run.cancelled_at is not None and run.completed_at is not None
    assert TaskRun.objects.get(id=internal(delayed)).status == RunStatus.DELAYED
    assert api.get(f"/api/v3/runs/{cancelled}").json()["status"] == "CANCELED"


def test_a_key_taken_in_postgres_meanwhile_becomes_a_failure_row_naming_the_winner(drain_settings):
    environment = EnvironmentFactory()
    (buffered,) = fill_buffer(environment, 1, idempotencyKey="k")
    winner = TaskRunFactory(environment=environment, idempotency_key="k", task_identifier="hello-world")

    drain()

    run = TaskRun.objects.get(id=internal(buffered))
    assert run.status == RunStatus.SYSTEM_FAILURE
    assert winner.friendly_id in run.error["message"]
    assert run.idempotency_key is None
    assert TaskRun.objects.get(id=winner.id).idempotency_key == "k"


def test_a_stale_holder_of_the_key_gives_it_up(drain_settings):
    environment = EnvironmentFactory()
    (buffered,) = fill_buffer(environment, 1, idempotencyKey="k")
    stale = TaskRunFactory(environment=environment, idempotency_key="k", status=RunStatus.CRASHED)

    result = Drainer().drain_round()

    assert result.report == SinkReport(inserted=1)  # counted, though inserted on the second try
    assert TaskRun.objects.get(id=internal(buffered)).status == RunStatus.QUEUED
    assert TaskRun.objects.get(id=internal(buffered)).idempotency_key == "k"
    assert TaskRun.objects.get(id=stale.id).idempotency_key is None


def test_a_run_whose_own_key_expired_while_it_waited_is_written_without_it(drain_settings):
    """Its key expired while it waited in the buffer, and another run took the key rightly: the run
    is written as it is, only without the key (no SYSTEM_FAILURE row)."""
    environment = EnvironmentFactory()
    (buffered,) = fill_buffer(environment, 1, idempotencyKey="k", idempotencyKeyTTL="1s")
    time.sleep(1.1)
    winner = TaskRunFactory(environment=environment, idempotency_key="k", task_identifier="hello-world")

    result = Drainer().drain_round()

    assert result.report == SinkReport(inserted=1)
    run = TaskRun.objects.get(id=internal(buffered))
    assert (run.status, run.idempotency_key, run.error) == (RunStatus.QUEUED, None, None)
    assert TaskRun.objects.get(id=winner.id).idempotency_key == "k"


def test_a_run_whose_live_key_was_taken_is_a_failure_row_though_it_expired_since(drain_settings):
    """The other run took the key while this run still held it (a store that did not answer, say):
    that its key expired before the drain does not make the taking right. Both would run."""
    environment = EnvironmentFactory()
    (buffered,) = fill_buffer(environment, 1, idempotencyKey="k", idempotencyKeyTTL="1s")
    winner = TaskRunFactory(environment=environment, idempotency_key="k", task_identifier="hello-world")
    time.sleep(1.1)

    assert Drainer().drain_round().report == SinkReport(failed=1)

    run = TaskRun.objects.get(id=internal(buffered))
    assert (run.status, run.idempotency_key) == (RunStatus.SYSTEM_FAILURE, None)
    assert winner.friendly_id in run.error["message"]


def test_a_cancelled_run_whose_key_was_taken_is_written_cancelled(drain_settings):
    """The cancel was answered: the run lands CANCELED, whoever holds its key by then."""
    environment = EnvironmentFactory()
    (buffered,) = fill_buffer(environment, 1, idempotencyKey="k")
    org, env = str(environment.organization_id), str(environment.pk)
    assert (
        buffer.cancel(org_id=org, env_id=env, run_id=buffered, now_ms=now_ms(), reason="by the API").status == "applied"
    )
    winner = TaskRunFactory(environment=environment, idempotency_key="k", task_identifier="hello-world")

    drain()

    run = TaskRun.objects.get(id=internal(buffered))
    assert (run.status, run.idempotency_key, run.cancelled_at is not None) == (RunStatus.CANCELED, None, True)
    assert TaskRun.objects.get(id=winner.id).idempotency_key == "k"


def test_a_cancelled_run_that_turned_terminal_is_written_cancelled_with_the_reason(drain_settings):
    """Cancel wins: the cancel was answered, so a run whose writes kept failing afterwards (here,
    marked terminal by hand) lands CANCELED, not SYSTEM_FAILURE, and its row says what failed."""
    environment = EnvironmentFactory()
    (run_id,) = fill_buffer(environment, 1)
    org, env = str(environment.organization_id), str(environment.pk)
    api = client_for(environment)
    assert api.post(f"/api/v2/runs/{run_id}/cancel").status_code == 200
    (leased,) = buffer.pop(org_id=org, env_id=env, limit=1, lease_ms=60_000, now_ms=now_ms()).entries
    assert buffer.fail(leased, now_ms=now_ms(), backoff_ms=0, code="attempts_exhausted", message="8 attempts")
    assert api.get(f"/api/v3/runs/{run_id}").json()["status"] == "CANCELED"

    drain()

    run = TaskRun.objects.get(id=internal(run_id))
    assert (run.status, run.cancel_reason) == (RunStatus.CANCELED, "Canceled by user")
    assert run.completed_at == run.cancelled_at and "attempts_exhausted" in run.error["message"]
    assert run.payload is not None  # written whole: only the status and the error differ


@pytest.mark.parametrize("finished_by", ["terminal", "unreadable_snapshot"])
def test_a_cancel_after_a_buffered_run_finished_as_a_failure_changes_nothing(drain_settings, finished_by):
    """A run that already reads SYSTEM_FAILURE is finished: cancelling it is a no-op, as for a
    row, and it is written as the failure it was read as."""
    environment = EnvironmentFactory()
    (run_id,) = fill_buffer(environment, 1)
    org, env = str(environment.organization_id), str(environment.pk)
    if finished_by == "terminal":
        (leased,) = buffer.pop(org_id=org, env_id=env, limit=1, lease_ms=60_000, now_ms=now_ms()).entries
        assert buffer.fail(leased, now_ms=now_ms(), backoff_ms=0, code="attempts_exhausted", message="8 attempts")
    else:
        redis_client().set(keys.snapshot(org, run_id), "{not json")
        redis_client().delete(keys.row(org, run_id))
    api = client_for(environment)
    assert api.get(f"/api/v3/runs/{run_id}").json()["status"] == "SYSTEM_FAILURE"

    assert api.post(f"/api/v2/runs/{run_id}/cancel").status_code == 200
    assert api.get(f"/api/v3/runs/{run_id}").json()["status"] == "SYSTEM_FAILURE"
    assert buffer.get(org_id=org, run_id=run_id).cancelled_at_ms is None

    drain()

    run = TaskRun.objects.get(id=internal(run_id))
    assert (run.status, run.cancelled_at) == (RunStatus.SYSTEM_FAILURE, None)


def test_a_run_marked_terminal_while_its_cancel_was_on_the_way_is_not_cancelled(drain_settings):
    """The drain marked the run terminal after the API read it as QUEUED: mutate.lua sees it and
    applies nothing (the run reads, and is written, SYSTEM_FAILURE)."""
    environment = EnvironmentFactory()
    (run_id,) = fill_buffer(environment, 1)
    org, env = str(environment.organization_id), str(environment.pk)
    (leased,) = buffer.pop(org_id=org, env_id=env, limit=1, lease_ms=60_000, now_ms=now_ms()).entries
    assert buffer.fail(leased, now_ms=now_ms(), backoff_ms=0, code="attempts_exhausted", message="8 attempts")

    cancelled = buffer.cancel(org_id=org, env_id=env, run_id=run_id, now_ms=now_ms(), reason="raced")

    assert cancelled.status == "applied" and buffer.get(org_id=org, run_id=run_id).cancelled_at_ms is None


def test_an_unreadable_snapshot_becomes_a_failure_row(drain_settings):
    environment = EnvironmentFactory()
    (run_id,) = fill_buffer(environment, 1)
    org = str(environment.organization_id)
    redis_client().set(keys.snapshot(org, run_id), "{not json")
    redis_client().delete(keys.row(org, run_id))  # as stored by a version before rows were: read from the snapshot

    drain()

    run = TaskRun.objects.get(id=internal(run_id))
    assert run.status == RunStatus.SYSTEM_FAILURE and "snapshot" in run.error["message"]
    assert run.task_identifier == "hello-world" and run.environment == environment


def test_a_terminal_entry_becomes_a_failure_row(drain_settings):
    environment = EnvironmentFactory()
    (run_id,) = fill_buffer(environment, 1)
    org, env = str(environment.organization_id), str(environment.pk)
    entry = buffer.pop(org_id=org, env_id=env, limit=1, lease_ms=1000, now_ms=now_ms()).entries[0]
    buffer.fail(entry, now_ms=now_ms(), backoff_ms=0, code="attempts_exhausted", message="8 attempts")

    drain()

    run = TaskRun.objects.get(id=internal(run_id))
    assert run.status == RunStatus.SYSTEM_FAILURE and "attempts_exhausted" in run.error["message"]


def test_batch_members_get_their_items_and_the_batch_completes(drain_settings):
    environment = EnvironmentFactory()
    batch = BatchTaskRun.objects.create(environment=environment, run_count=3, sealed=True, status="PROCESSING")
    run_ids = fill_buffer(environment, 3, batch=batch)

    drain()

    items = BatchTaskRunItem.objects.filter(batch=batch).order_by("index")
    assert [f"run_{item.task_run_id}" for item in items] == run_ids
    batch.refresh_from_db()
    assert batch.status == "COMPLETED" and batch.completed_at is not None


def test_entries_of_a_deleted_environment_are_dropped_not_stuck(drain_settings):
    environment = EnvironmentFactory()
    fill_buffer(environment, 3)
    org = str(environment.organization_id)
    environment.delete()

    drainer = Drainer()
    result = drainer.drain_round()

    assert result.report.dropped == 3 and result.acked == 3
    assert buffer.buffered_count(org) == 0


def test_the_rate_limiter_grants_only_what_the_rate_allows():
    redis, now = redis_client(), 1_800_000_000_000
    bucket = [keys.drain_rate(), keys.drain_limit(), keys.drain_minute(now // 60_000)]

    def ask(at_ms, rows):  # fixed at 1000 rows/s, rounds of up to a second
        return int(
            scripts.DRAIN_RATE(keys=bucket, args=[at_ms, rows, 1000, 1, "fixed", 1000, "", 1000, 1], client=redis)[0]
        )

    assert ask(now, 100) == 0  # 100 rows at 1000/s: paid off at now + 100 ms
    assert ask(now + 10, 100) == 90
    assert ask(now + 100, 100) == 0
    assert ask(now + 150, 1) == 50
    # Over one second, grants stay within rate x time plus one request.
    granted, t = 0, now + 1_000_000
    while t < now + 1_000_000 + 1000:
        if ask(t, 50) == 0:
            granted += 50
        t += 1
    assert 1000 <= granted <= 1050


def test_a_round_costs_redis_a_few_commands_per_run_not_one_per_step(drain_settings):
    """Leasing, reading, pinning and acking 50 runs: the queues and holders change once per call
    (lib/bulk.lua); per run there is the read (2 commands) and the ack's own entry work (5)."""
    environment = EnvironmentFactory()
    fill_buffer(environment, 50)
    org, env = str(environment.organization_id), str(environment.pk)

    stop = watch_redis()
    popped = buffer.pop(org_id=org, env_id=env, limit=100, lease_ms=60_000, now_ms=now_ms())
    write_round(popped.entries)
    assert buffer.ack(popped.entries, now_ms=now_ms()) == 50
    run_by_scripts = [event for event in stop() if event.get("client_type") == "lua"]

    assert len(run_by_scripts) <= 7 * 50 + 30, len(run_by_scripts)  # a command per step per run was 1,161


@pytest.mark.django_db(transaction=True)  # each failed write must really roll back: its pins settle by that
@pytest.mark.parametrize(("column", "value"), [("max_attempts", 2**31), ("depth", 2**32 + 5), ("is_test", "false")])
def test_a_snapshot_value_its_column_cannot_hold_is_never_written_as_another_value(drain_settings, column, value):
    """Binary COPY would wrap 2**31 around and read "false" as true; the entry fails instead and
    lands as a failure row that keeps only its ids."""
    environment = EnvironmentFactory()
    good, bad = fill_buffer(environment, 2)
    org = str(environment.organization_id)
    entry = buffer.get(org_id=org, run_id=bad)
    redis_client().set(keys.snapshot(org, bad), json.dumps({**entry.snapshot, column: value}))
    redis_client().delete(keys.row(org, bad))  # the trigger stores no row for such a value (test_copy_rows)

    drainer = Drainer()
    for _ in range(4 * drain_settings["DRAIN_MAX_ATTEMPTS"]):
        drainer.drain_round()
        redis_client().zadd(keys.ready(org, str(environment.pk)), {bad: 0}, xx=True)  # its backoff, now over

    rows = {run.friendly_id: run for run in TaskRun.objects.all()}
    assert rows[good].status == RunStatus.QUEUED
    assert rows[bad].status == RunStatus.SYSTEM_FAILURE
    assert getattr(rows[bad], column) != value
