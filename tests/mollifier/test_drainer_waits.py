"""The drainer survives a Redis that hangs (SIGSTOP) at any of its calls: it waits with a backoff
that grows and resets, says what it waits for, never spins, and writes every run exactly once. Its
wait for a store that refused or did not answer ends as soon as the store answers again."""

import logging
import signal
import threading
import time
from contextlib import contextmanager

import psycopg
import pytest
from django.db import connection

from mollifier import breaker, buffer
from mollifier.drainer import Drainer, Waiting
from runs.models import TaskRun
from runs.services.materialise import TaskRunSink
from tests.buffering import fill_buffer
from tests.factories import EnvironmentFactory
from tests.faults import RedisProcess, silent_port
from tests.server import database_url, wait_until

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def own_redis(settings):
    store = RedisProcess()
    store.start()
    store.serve(
        settings,
        DRAIN_BATCH_SIZE=50,
        DRAIN_MAX_ROWS_PER_SEC=100_000,
        DRAIN_LEASE_MS=1000,
        DRAIN_BACKOFF_BASE_MS=100,
        DRAIN_BACKOFF_MAX_MS=2000,
    )
    breaker.disable()  # as mollifier_drain does: the loop's backoff spaces the calls
    yield store
    store.cleanup()


class PausingSink(TaskRunSink):
    """The real sink; after its first round commits, Redis is paused until ``resume`` is set: the
    ack of that round hangs, and so does the round the drainer leases meanwhile."""

    def __init__(self, store: RedisProcess):
        self.store = store
        self.paused = threading.Event()

    def write(self, entries, *, pin, last_resort=False):
        report = super().write(entries, pin=pin, last_resort=last_resort)
        if not self.paused.is_set():
            self.paused.set()
            self.store.process.send_signal(signal.SIGSTOP)
        return report


def drain_in_background(drainer: Drainer, waits: list[Waiting], rounds: list | None = None) -> threading.Thread:
    def run():
        try:
            drainer.run(on_wait=waits.append, on_round=None if rounds is None else rounds.append)
        finally:
            connection.close()  # this thread's own: the test database is dropped at the end

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def assert_backs_off(waits: list[Waiting]) -> None:
    assert {wait.dependency for wait in waits} == {"redis"}
    assert [wait.failures for wait in waits] == list(range(1, len(waits) + 1))  # one wait per failure
    # Exponential (±20% jitter): every wait is longer than the one before, until the cap.
    delays = [wait.retry_in_ms for wait in waits]
    assert all(later > earlier for earlier, later in zip(delays, delays[1:4])), delays


@pytest.mark.parametrize("hang", ["from_the_start", "after_a_commit"])
def test_a_hung_redis_makes_the_drainer_wait_and_every_run_lands_once(own_redis, hang, caplog):
    """from_the_start: the first calls hang (listing organisations, the rate limiter, leasing).
    after_a_commit: the ack of a committed round hangs, and the lease of the next round (with its
    read) on the prefetch thread."""
    caplog.set_level(logging.WARNING, logger="mollifier.drainer")
    environment = EnvironmentFactory()
    run_ids = fill_buffer(environment, 300)
    waits: list[Waiting] = []
    sink = PausingSink(own_redis)
    if hang == "from_the_start":
        sink.paused.set()
        own_redis.process.send_signal(signal.SIGSTOP)
    drainer = Drainer(sink=sink)
    thread = drain_in_background(drainer, waits)
    try:
        wait_until(lambda: len(waits) >= 4, timeout=60)
        own_redis.process.send_signal(signal.SIGCONT)
        wait_until(lambda: buffer.buffered_count(str(environment.organization_id)) == 0, timeout=60)
    finally:
        own_redis.process.send_signal(signal.SIGCONT)
        drainer.stop.set()
        thread.join(30)

    assert_backs_off(waits)
    assert any("mollifier.drain.recovered" in record.getMessage() for record in caplog.records)
    rows = TaskRun.objects.filter(environment=environment)
    assert sorted(run.friendly_id for run in rows) == sorted(run_ids)  # each exactly once
    assert buffer.buffered_bytes(str(environment.organization_id)) == 0


def test_the_backoff_resets_after_a_round_goes_through(own_redis):
    environment = EnvironmentFactory()
    fill_buffer(environment, 20)
    waits: list[Waiting] = []
    rounds: list = []
    drainer = Drainer()
    thread = drain_in_background(drainer, waits, rounds)
    try:
        for _ in range(2):  # two outages: the second starts counting from one again
            seen = len(waits)
            with own_redis.paused():
                wait_until(lambda seen=seen: len(waits) >= seen + 2, timeout=60)
            # A round through after the outage (the 20 rows may all have been written before it).
            resumed = len(rounds)
            wait_until(lambda resumed=resumed: len(rounds) > resumed and drainer_idle(environment), timeout=60)
    finally:
        drainer.stop.set()
        thread.join(30)
    firsts = [wait for wait in waits if wait.failures == 1]
    assert len(firsts) == 2


def drainer_idle(environment) -> bool:
    return buffer.buffered_count(str(environment.organization_id)) == 0 and TaskRun.objects.count() == 20


def drain_through(outage, settings) -> list[Waiting]:
    """A drainer started inside ``outage`` with a ten-minute backoff: all its runs land within
    seconds of the outage's end, not when the backoff ends. Returns its waits."""
    settings.MOLLIFIER = {**settings.MOLLIFIER, "DRAIN_BACKOFF_BASE_MS": 600_000, "DRAIN_BACKOFF_MAX_MS": 600_000}
    environment = EnvironmentFactory()
    run_ids = fill_buffer(environment, 20)
    waits: list[Waiting] = []
    drainer = Drainer()
    with outage:
        thread = drain_in_background(drainer, waits)
        wait_until(lambda: len(waits) >= 1, timeout=30)  # waiting: about ten minutes, by the backoff
    try:
        wait_until(lambda: buffer.buffered_count(str(environment.organization_id)) == 0, timeout=30)
    finally:
        drainer.stop.set()
        thread.join(30)

    assert sorted(run.friendly_id for run in TaskRun.objects.filter(environment=environment)) == sorted(run_ids)
    assert len(waits) == 1 and waits[0].retry_in_ms >= 480_000
    return waits


def test_the_drain_resumes_once_redis_answers_not_when_the_backoff_ends(own_redis, settings):
    """After a long outage the backoff has grown to its cap: the drainer still starts again within
    moments of Redis answering (it PINGs while it waits), not a whole backoff later."""
    waits = drain_through(own_redis.paused(), settings)

    assert waits[0].dependency == "redis" and waits[0].until_answered


@contextmanager
def postgres_out(outage: str):
    """This thread's and every new Django connection go to a Postgres that refuses (a port nothing
    listens on) or never answers (a socket that accepts and says nothing), until the block ends."""
    database = connection.settings_dict  # shared by every thread's connection
    saved = {name: database[name] for name in ("HOST", "PORT", "OPTIONS")}
    with silent_port(outage) as port:
        database.update(
            HOST="127.0.0.1",
            PORT=str(port),
            OPTIONS={**saved["OPTIONS"], "connect_timeout": 1},
        )
        try:
            yield
        finally:
            database.update(saved)


@pytest.mark.parametrize("outage", ["refused", "hung"])
def test_the_drain_resumes_once_postgres_answers_not_when_the_backoff_ends(settings, outage):
    """As for Redis: the drainer asks Postgres (SELECT 1) once a second while it waits for a database
    that refused or did not answer, and starts again at once when it does, not ten minutes later."""
    waits = drain_through(postgres_out(outage), settings)

    assert waits[0].dependency == "postgres" and waits[0].until_answered


def test_a_statement_timeout_keeps_the_whole_backoff(settings):
    """Postgres answered (a statement timeout, under a lock): a SELECT 1 would be answered while the
    lock holds, so the wait is not cut short by one."""
    settings.MOLLIFIER = {**settings.MOLLIFIER, "DRAIN_BACKOFF_BASE_MS": 600_000, "DRAIN_BACKOFF_MAX_MS": 600_000}
    environment = EnvironmentFactory()
    fill_buffer(environment, 5)
    waits: list[Waiting] = []
    drainer = Drainer()
    database = connection.settings_dict
    saved = database["OPTIONS"]
    locker = psycopg.connect(database_url())
    try:
        locker.execute(f"LOCK TABLE {TaskRun._meta.db_table} IN ACCESS EXCLUSIVE MODE")
        database["OPTIONS"] = {**saved, "options": "-c statement_timeout=300"}
        try:
            thread = drain_in_background(drainer, waits)
            wait_until(lambda: len(waits) >= 1, timeout=30)
        finally:
            database["OPTIONS"] = saved
        locker.rollback()  # the lock is gone: a cut-short wait would now drain
        time.sleep(3)  # three probes' worth
        assert TaskRun.objects.filter(environment=environment).count() == 0
    finally:
        drainer.stop.set()
        thread.join(30)
        locker.close()

    assert len(waits) == 1 and waits[0].dependency == "postgres" and not waits[0].until_answered
    assert "statement timeout" in waits[0].error


def test_no_round_is_leased_while_postgres_still_does_not_answer(settings):
    """A drainer whose backoff ends while Postgres still does not answer asks again (SELECT 1)
    instead of leasing a round that could not be written: the runs stay ready meanwhile, so changes
    to them never wait on a lease (they would answer 503 after TRIGGER_MID_DRAIN_WAIT_SECONDS)."""
    settings.MOLLIFIER = {**settings.MOLLIFIER, "DRAIN_BACKOFF_BASE_MS": 100, "DRAIN_BACKOFF_MAX_MS": 300}
    environment = EnvironmentFactory()
    run_ids = fill_buffer(environment, 20)
    org, env = str(environment.organization_id), str(environment.pk)
    waits: list[Waiting] = []
    drainer = Drainer()
    drainer.types.learn([env])  # as after rounds that went through: its weight is known, nothing to look up
    leased: list[int] = []
    with postgres_out("hung"):
        thread = drain_in_background(drainer, waits)
        try:
            wait_until(lambda: len(waits) >= 1, timeout=30)  # the first round met the outage, and gave its runs back
            until = time.monotonic() + 4  # several backoffs
            while time.monotonic() < until:
                leased.append(len(buffer.leased_ids(org_id=org, env_id=env)))
                time.sleep(0.02)
        except BaseException:
            drainer.stop.set()
            raise
    try:
        wait_until(lambda: buffer.buffered_count(org) == 0, timeout=30)
    finally:
        drainer.stop.set()
        thread.join(30)

    assert waits[-1].failures >= 3  # backoffs ended while it still did not answer
    assert max(leased) == 0
    assert sorted(run.friendly_id for run in TaskRun.objects.filter(environment=environment)) == sorted(run_ids)
