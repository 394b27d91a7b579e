"""Drainers that stall past their lease — in Postgres, or frozen by SIGSTOP — while the API changes
the runs they hold. Whatever the API acknowledged survives, and each run is one row.

Real processes: a gunicorn server answers the cancels (retried like the SDK retries a 503), real
drainer processes write, and a real Postgres table lock or SIGSTOP stalls them.
"""

import logging
import signal
import threading
import time

import psycopg
import pytest
from django.db import DatabaseError, connection, transaction

from mollifier import buffer, keys
from mollifier.client import get as redis_client
from mollifier.clock import now_ms
from mollifier.drainer import Drainer
from mollifier.exceptions import SinkUnavailable
from runs.models import RunStatus, TaskRun
from runs.services.materialise import COLUMNS, TaskRunSink, _begin_fenced
from tests.buffering import fill_buffer
from tests.conftest import enroll
from tests.factories import EnvironmentFactory
from tests.helpers import sdk_post
from tests.server import database_url, finish, running_server, start_manage, wait_until

pytestmark = pytest.mark.django_db(transaction=True)

LEASE = {"MOLLIFIER_DRAIN_LEASE_MS": "1500", "MOLLIFIER_DRAIN_BATCH_SIZE": "100"}


def blocked_on_the_lock() -> bool:
    """A drainer's write is waiting on the table lock (so its round is leased, and mid-write)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query ILIKE '%%runs_taskrun%%'"
        )
        return cursor.fetchone()[0] > 0


def cancel_all(base_url: str, environment, run_ids: list[str]) -> dict[str, int]:
    """Cancel each run from its own thread, retrying 5xx answers the way the SDK does."""
    answers: dict[str, int] = {}

    def cancel(run_id: str) -> None:
        answers[run_id] = sdk_post(f"{base_url}/api/v2/runs/{run_id}/cancel", key=environment.secret_key)

    threads = [threading.Thread(target=cancel, args=(run_id,)) for run_id in run_ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return answers


def assert_each_run_once_with_its_cancel(run_ids: list[str], answers: dict[str, int]) -> None:
    rows = {run.friendly_id: run for run in TaskRun.objects.all()}
    assert sorted(rows) == sorted(run_ids)  # every run, exactly once
    acknowledged = [run_id for run_id, status in answers.items() if status == 200]
    assert acknowledged, answers
    assert {run_id: rows[run_id].status for run_id in acknowledged} == dict.fromkeys(acknowledged, RunStatus.CANCELED)
    others = set(run_ids) - set(answers)
    assert {rows[run_id].status for run_id in others} == {RunStatus.QUEUED}


def test_a_drainer_stalled_by_postgres_past_its_lease_keeps_every_acknowledged_cancel():
    """The issue's report: a table lock held while a drainer writes; its lease expires, the sweep
    runs, cancels are answered, then the drainer wakes. On the unfenced drain all 11 cancelled runs
    ended QUEUED."""
    environment = enroll(EnvironmentFactory())
    run_ids = fill_buffer(environment, 30)
    lock = psycopg.connect(database_url())
    lock.execute("LOCK TABLE runs_taskrun IN EXCLUSIVE MODE")  # inserts wait; reads go on

    drainer = start_manage("mollifier_drain", DB_STATEMENT_TIMEOUT_MS="60000", **LEASE)
    try:
        wait_until(blocked_on_the_lock)  # the round is leased, and its INSERT waits on the lock
        time.sleep(2)  # past the lease
        sweep = start_manage("mollifier_sweep", **LEASE)
        finish(sweep)
        with running_server() as base_url:
            threading.Timer(4, lock.rollback).start()  # Postgres recovers while the cancels wait
            answers = cancel_all(base_url, environment, run_ids[:11])
            wait_until(lambda: buffer.buffered_count(str(environment.organization_id)) == 0)
    finally:
        lock.close()
        drainer.send_signal(signal.SIGTERM)
        finish(drainer)

    assert_each_run_once_with_its_cancel(run_ids, answers)


def test_a_frozen_drainer_cannot_overwrite_cancels_once_it_wakes():
    """SIGSTOP while its transaction is open: Postgres ends the idle transaction after the lease,
    the cancels land in the buffer, a second drainer writes the runs; the first, woken, writes and
    acks nothing."""
    environment = enroll(EnvironmentFactory())
    run_ids = fill_buffer(environment, 30)
    lock = psycopg.connect(database_url())
    lock.execute("LOCK TABLE runs_taskrun IN EXCLUSIVE MODE")

    frozen = start_manage("mollifier_drain", DB_STATEMENT_TIMEOUT_MS="60000", **LEASE)
    try:
        wait_until(blocked_on_the_lock)
        frozen.send_signal(signal.SIGSTOP)
        lock.rollback()  # its INSERT completes in Postgres; the transaction then idles, frozen
        time.sleep(2)
        with running_server() as base_url:
            answers = cancel_all(base_url, environment, run_ids[:11])
        finish(start_manage("mollifier_drain", "--once", **LEASE))
        frozen.send_signal(signal.SIGCONT)
        time.sleep(1)  # it wakes, finds its transaction gone, and gives back what it no longer holds
    finally:
        lock.close()
        frozen.send_signal(signal.SIGCONT)
        frozen.send_signal(signal.SIGTERM)
        finish(frozen)

    assert_each_run_once_with_its_cancel(run_ids, answers)
    assert buffer.buffered_count(str(environment.organization_id)) == 0


def test_a_drainer_whose_lease_lapses_waiting_for_the_rate_limiter_writes_nothing_it_lost():
    """A slow rate cap holds a leased round past its lease: cancels take the runs back meanwhile,
    and the late round is fenced, not written over them."""
    environment = enroll(EnvironmentFactory())
    run_ids = fill_buffer(environment, 6)
    knobs = {"MOLLIFIER_DRAIN_LEASE_MS": "300", "MOLLIFIER_DRAIN_MAX_ROWS_PER_SEC": "1"}

    drainer = start_manage("mollifier_drain", **knobs)
    try:
        with running_server() as base_url:
            wait_until(lambda: TaskRun.objects.exists())  # the first round; the next waits for its grant
            time.sleep(0.5)
            answers = cancel_all(base_url, environment, run_ids)
            wait_until(lambda: buffer.buffered_count(str(environment.organization_id)) == 0, timeout=60)
    finally:
        drainer.send_signal(signal.SIGTERM)
        output = finish(drainer)

    rows = {run.friendly_id: run.status for run in TaskRun.objects.all()}
    assert sorted(rows) == sorted(run_ids)
    assert {rows[run_id] for run_id, status in answers.items() if status == 200} <= {RunStatus.CANCELED}
    assert sum(status == 200 for status in answers.values()) >= 4, (answers, output)


class FrozenMidCopy(TaskRunSink):
    """A drainer frozen while its COPY streams (SIGSTOP, a long pause, a cut network): its round is
    pinned to its transaction and the COPY open, and it sends nothing until ``wake`` is set. Then it
    goes on as a drainer would, with the real sink (its own write has failed by then)."""

    def __init__(self):
        self.copying = threading.Event()
        self.wake = threading.Event()

    def write(self, entries, *, pin, last_resort=False):
        if self.copying.is_set():
            return super().write(entries, pin=pin, last_resort=last_resort)
        try:
            with transaction.atomic():
                pin(_begin_fenced())
                with connection.cursor() as cursor, cursor.cursor.copy(f"COPY runs_taskrun ({COLUMNS}) FROM STDIN"):
                    self.copying.set()
                    self.wake.wait(60)
                    raise RuntimeError("woke mid-COPY")
        except (DatabaseError, psycopg.Error, RuntimeError) as error:
            raise SinkUnavailable(str(error)) from error


def in_background(drainer: Drainer) -> threading.Thread:
    def run():
        try:
            drainer.run()
        finally:
            connection.close()  # this thread's own: the test database is dropped at the end

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_a_drainer_frozen_mid_copy_is_ended_once_its_lease_lapses_and_its_runs_land_once(settings, caplog):
    """Postgres applies neither statement_timeout nor idle_in_transaction_session_timeout to a COPY
    waiting for its client: the drainer that finds the lapsed pins ends that transaction."""
    caplog.set_level(logging.WARNING)
    settings.MOLLIFIER = {**settings.MOLLIFIER, "DRAIN_LEASE_MS": 1000, "DRAIN_BACKOFF_BASE_MS": 100}
    environment = EnvironmentFactory()
    run_ids = fill_buffer(environment, 50)
    frozen_sink = FrozenMidCopy()
    frozen, alive = Drainer(sink=frozen_sink), Drainer()
    threads = [in_background(frozen)]
    try:
        assert frozen_sink.copying.wait(30)
        threads.append(in_background(alive))
        wait_until(lambda: TaskRun.objects.count() == 50, timeout=30)
    finally:
        frozen_sink.wake.set()
        frozen.stop.set()
        alive.stop.set()
        for thread in threads:
            thread.join(30)

    assert sorted(run.friendly_id for run in TaskRun.objects.all()) == sorted(run_ids)  # each once
    assert any("mollifier.drain.stalled_writer_ended" in record.getMessage() for record in caplog.records)
    assert buffer.buffered_count(str(environment.organization_id)) == 0


def test_a_write_whose_transaction_postgres_ended_for_idling_is_the_database_not_the_entries(settings):
    """A drainer that stalled between two statements finds its transaction ended by Postgres
    (idle_in_transaction_session_timeout, the lease): the database refused the round, which is
    retried after a backoff, not taken apart entry by entry as if one of them were at fault."""
    settings.MOLLIFIER = {**settings.MOLLIFIER, "DRAIN_LEASE_MS": 200}
    environment = EnvironmentFactory()
    fill_buffer(environment, 3)
    entries = buffer.pop(
        org_id=str(environment.organization_id),
        env_id=str(environment.pk),
        limit=3,
        lease_ms=60_000,
        now_ms=int(time.time() * 1000),
    ).entries
    assert len(entries) == 3

    def stalled_pin(txid: str) -> set[str]:
        time.sleep(0.6)  # idle in the transaction, past the lease
        return {entry.run_id for entry in entries}

    with pytest.raises(SinkUnavailable) as refused:
        TaskRunSink().write(entries, pin=stalled_pin)

    assert "idle-in-transaction timeout" in str(refused.value) and refused.value.answered
    assert not TaskRun.objects.exists()


class LostCommit(TaskRunSink):
    """Pins its round to a transaction that is still running (as a COMMIT whose answer was lost may
    yet commit), then fails: the outcome is not known when the drainer settles."""

    def __init__(self, txid: str):
        self.txid = txid

    def write(self, entries, *, pin, last_resort=False):
        pin(self.txid)
        raise SinkUnavailable("no answer to COMMIT")


def test_a_write_whose_outcome_is_not_known_leaves_its_pins_for_whoever_settles_them(settings):
    """Given back at once, the runs could be changed in the buffer and then found written by a
    transaction that did commit after all: the change would be lost. They stay pinned until the
    transaction's outcome is known; then they are written once."""
    settings.MOLLIFIER = {**settings.MOLLIFIER, "DRAIN_LEASE_MS": 500}
    environment = EnvironmentFactory()
    org, env = str(environment.organization_id), str(environment.pk)
    run_ids = fill_buffer(environment, 5)
    with psycopg.connect(database_url()) as other:
        txid = other.execute("SELECT pg_current_xact_id()::text").fetchone()[0]

        result = Drainer(sink=LostCommit(txid)).drain_environment(org_id=org, env_id=env)

        holders = redis_client().hmget(keys.holders(org, env), run_ids)
        assert result.retried == 0 and all(h and h.decode().endswith(f":{txid}") for h in holders), holders
        other.rollback()  # the outcome: not committed

    time.sleep(0.6)  # the lease lapses: the next drainer settles the pins, then writes the runs
    Drainer().run(once=True)

    assert sorted(run.friendly_id for run in TaskRun.objects.all()) == sorted(run_ids)


# -- a lease that lapses before the pin, and a transaction that ends after the COPY -----------------


def stale_round(environment, count: int):
    """A round whose first run's lease lapses (1 s) while the others' hold (10 min); returns it and
    a time ``later`` at which only that first lease has lapsed."""
    org, env = str(environment.organization_id), str(environment.pk)
    leased = now_ms()
    first = buffer.pop(org_id=org, env_id=env, limit=1, lease_ms=1000, now_ms=leased).entries
    rest = buffer.pop(org_id=org, env_id=env, limit=count - 1, lease_ms=600_000, now_ms=leased).entries
    assert len(first + rest) == count
    return org, env, first + rest, leased + 2000


def test_a_stale_round_commits_no_row_for_a_run_the_api_took_back(settings):
    """A drainer stalled past its lease; one of its runs was cancelled meanwhile (the cancel took
    the lapsed lease back). Its round writes the two runs it still holds, not the cancelled one's
    old row; the cancelled run lands CANCELED with the next drain."""
    environment = EnvironmentFactory()
    run_ids = fill_buffer(environment, 3)
    org, env, entries, later = stale_round(environment, 3)
    taken = entries[0].run_id
    assert buffer.cancel(org_id=org, env_id=env, run_id=taken, now_ms=later, reason="by the API").status == "applied"

    report = TaskRunSink().write(
        entries, pin=lambda txid: buffer.pin(entries, txid=txid, now_ms=later, lease_ms=60_000)
    )

    assert (report.inserted, report.fenced) == (2, 1)
    assert sorted(run.friendly_id for run in TaskRun.objects.all()) == sorted(set(run_ids) - {taken})
    Drainer(clock=lambda: later).drain_environment(org_id=org, env_id=env)  # the cancelled run, back in the queue
    assert TaskRun.objects.get(id=taken.removeprefix("run_")).status == RunStatus.CANCELED


def test_a_stale_round_leaves_the_row_another_drainer_committed_for_a_run_it_lost(settings):
    """The cancelled run was written by another drainer before the stalled one's round reached
    Postgres: the row stays as the API left it."""
    environment = EnvironmentFactory()
    run_ids = fill_buffer(environment, 3)
    org, env, entries, later = stale_round(environment, 3)
    taken = entries[0].run_id
    assert buffer.cancel(org_id=org, env_id=env, run_id=taken, now_ms=later, reason="by the API").status == "applied"
    Drainer(clock=lambda: later).drain_environment(org_id=org, env_id=env)  # the others are still leased
    assert [run.friendly_id for run in TaskRun.objects.all()] == [taken]

    report = TaskRunSink().write(
        entries, pin=lambda txid: buffer.pin(entries, txid=txid, now_ms=later, lease_ms=60_000)
    )

    assert (report.inserted, report.already, report.fenced) == (2, 0, 1)
    rows = {run.friendly_id: run.status for run in TaskRun.objects.all()}
    assert rows == {run_id: RunStatus.CANCELED if run_id == taken else RunStatus.QUEUED for run_id in run_ids}


@pytest.fixture
def transaction_ended_after_the_copy():
    """Postgres ends the first drain transaction at the statement after its COPY (the batch items'
    move), as it ends the transaction of a drainer paused past its lease there
    (``idle_in_transaction_session_timeout``). Yields how many times that statement ran."""
    with connection.cursor() as cursor:
        cursor.execute("CREATE SEQUENCE test_end_once")
        cursor.execute(
            "CREATE FUNCTION test_end_once() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "IF nextval('test_end_once') = 1 THEN PERFORM pg_terminate_backend(pg_backend_pid()); END IF; "
            "RETURN NULL; END $$"
        )
        cursor.execute(
            "CREATE TRIGGER test_end_once AFTER DELETE ON runs_batchtaskrunpendingitem "
            "FOR EACH STATEMENT EXECUTE FUNCTION test_end_once()"
        )

    def statements() -> int:
        with connection.cursor() as cursor:
            cursor.execute("SELECT last_value FROM test_end_once")
            return cursor.fetchone()[0]

    yield statements
    connection.close()  # maybe the one Postgres ended
    with connection.cursor() as cursor:
        cursor.execute("DROP TRIGGER test_end_once ON runs_batchtaskrunpendingitem")
        cursor.execute("DROP FUNCTION test_end_once()")
        cursor.execute("DROP SEQUENCE test_end_once")


def test_a_round_whose_transaction_ends_after_its_copy_is_written_again_not_acked(
    settings, transaction_ended_after_the_copy
):
    """The round's COPY went through, then Postgres ended its transaction: nothing committed. The
    round fails as the database's failure and its runs are written by a later round; acked as if
    committed, they would be gone from the buffer with no row."""
    settings.MOLLIFIER = {**settings.MOLLIFIER, "DRAIN_LEASE_MS": 1000, "DRAIN_BACKOFF_BASE_MS": 50}
    environment = EnvironmentFactory()
    run_ids = fill_buffer(environment, 3)

    Drainer().run(once=True)

    assert transaction_ended_after_the_copy() >= 2  # it ended the first round's, then let one commit
    assert sorted(run.friendly_id for run in TaskRun.objects.all()) == sorted(run_ids)
    assert buffer.buffered_count(str(environment.organization_id)) == 0
