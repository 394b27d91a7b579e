"""The drain rate adapts to Postgres (issue 17): cut after slow or refused rounds, raised again after
fast ones, between the floor and the ceiling, shared by every drainer; fixed when asked."""

import os
import subprocess
import sys
import threading
from contextlib import contextmanager

import psycopg
import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import connection
from django.test import Client

from mollifier import conf, keys, rate, scripts
from mollifier.client import get as redis_client
from mollifier.drainer import Drainer
from mollifier.metrics import exposition
from runs.models import TaskRun
from tests.buffering import fill_buffer
from tests.server import ROOT

pytestmark = pytest.mark.django_db

NOW = 1_800_000_000_000
CEILING, FLOOR, TARGET = 1000, 50, 100


@pytest.fixture
def adaptive(settings):
    settings.MOLLIFIER = {
        **settings.MOLLIFIER,
        "DRAIN_RATE_MODE": "adaptive",
        "DRAIN_MAX_ROWS_PER_SEC": CEILING,
        "DRAIN_MIN_ROWS_PER_SEC": FLOOR,
        "DRAIN_TARGET_COMMIT_MS": TARGET,
        "DRAIN_RATE_RISE_SECONDS": 10,  # (1000 - 50) / 10 = 95 rows/s more per healthy second
        "DRAIN_RATE_CUT_PERCENT": 50,
    }
    return settings.MOLLIFIER


class Clock:
    """now_ms for the drain: moves only when a test moves it."""

    def __init__(self, now: int = NOW):
        self.now = now

    def __call__(self) -> int:
        return self.now


def round_at(clock: Clock) -> rate.Grant:
    """A round's grant, a second after the last one (the bucket never makes a test wait)."""
    clock.now += 1000
    return rate.reserve(1_000_000, clock=clock)


def test_the_drain_adapts_by_default():
    """Without MOLLIFIER_DRAIN_RATE_MODE the settings choose the adaptive drain; the fixed rate is
    the opt-out. Read by a process of its own: this one runs on the test settings."""
    env = {k: v for k, v in os.environ.items() if k != "MOLLIFIER_DRAIN_RATE_MODE"}
    env.update(DEBUG="1", DJANGO_SETTINGS_MODULE="trigger_project.settings")
    script = "from trigger_project import settings; print(settings.MOLLIFIER['DRAIN_RATE_MODE'])"
    mode = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert mode == conf.RateMode.ADAPTIVE


def test_a_slow_round_cuts_the_rate_and_healthy_rounds_raise_it_again(adaptive):
    clock = Clock()
    first = round_at(clock)
    assert first.rate == CEILING  # no round has reported yet: the ceiling

    cut = rate.report(first, write_ms=TARGET + 50, failed=False, rows=50, now_ms=clock.now)
    assert (cut.change, cut.rate) == ("cut", CEILING / 2)

    grant = round_at(clock)  # a second later
    assert grant.rate == CEILING / 2 and grant.epoch == first.epoch + 1
    risen = rate.report(grant, write_ms=TARGET - 50, failed=False, rows=50, now_ms=clock.now)
    assert (risen.change, risen.rate) == ("rise", CEILING / 2 + 95)  # one healthy second: +95 rows/s

    for _ in range(10):
        last = rate.report(round_at(clock), write_ms=10, failed=False, rows=50, now_ms=clock.now)
    assert last.rate == CEILING  # back at the ceiling, and never above it
    assert rate.state().rate == CEILING


def test_a_round_the_database_refused_cuts_the_rate_whatever_its_latency(adaptive):
    clock = Clock()

    change = rate.report(round_at(clock), write_ms=None, failed=True, rows=0, now_ms=clock.now)

    assert (change.change, change.rate) == ("cut", CEILING / 2)


def test_one_slow_round_among_fast_ones_does_not_cut_but_a_lasting_slowdown_does(adaptive):
    clock = Clock()
    for _ in range(5):
        rate.report(round_at(clock), write_ms=20, failed=False, rows=50, now_ms=clock.now)

    spike = rate.report(round_at(clock), write_ms=2 * TARGET, failed=False, rows=50, now_ms=clock.now)
    assert (spike.change, spike.rate) == ("rise", CEILING)  # 0.7 x ~20 + 0.3 x 200 = 74 < 100
    slow = [
        rate.report(round_at(clock), write_ms=2 * TARGET, failed=False, rows=50, now_ms=clock.now) for _ in range(2)
    ]
    assert [change.change for change in slow] == ["cut", "cut"]  # 112 > 100; then 0.7 x 80 + 60 = 116
    assert rate.state(now_ms=clock.now).rate == CEILING / 4


def test_one_slowdown_cuts_once_however_many_drainers_and_rounds_in_flight_saw_it(adaptive):
    clock = Clock()
    # Three rounds reserved at the same rate: two drainers, one of them with a round leased ahead.
    in_flight = [round_at(clock), round_at(clock), round_at(clock)]

    changes = [rate.report(grant, write_ms=500, failed=False, rows=50, now_ms=clock.now).change for grant in in_flight]

    assert changes == ["cut", "held", "held"]  # the first cut answered the slowdown they all saw
    assert rate.state().rate == CEILING / 2
    # A round reserved after the cut that is still slow: the cut was not enough, cut again.
    assert rate.report(round_at(clock), write_ms=500, failed=False, rows=50, now_ms=clock.now).rate == CEILING / 4


def test_the_rate_never_goes_below_the_floor_nor_above_the_ceiling(adaptive):
    clock = Clock()
    for _ in range(20):
        rate.report(round_at(clock), write_ms=None, failed=True, rows=0, now_ms=clock.now)
    assert rate.state().rate == FLOOR
    # At the floor a round stretches to LONGEST_ROUND_MS of it (fewer than ROUND_MIN_ROWS either way).
    assert round_at(clock).rows == FLOOR * rate.LONGEST_ROUND_MS // 1000

    clock.now += 3_600_000 - 1  # an hour of healthy rounds in one report: still the ceiling
    assert rate.report(round_at(clock), write_ms=1, failed=False, rows=50, now_ms=clock.now).rate == CEILING


def test_the_rise_is_per_second_whatever_the_number_of_drainers_reporting(adaptive):
    clock = Clock()
    rate.report(round_at(clock), write_ms=None, failed=True, rows=0, now_ms=clock.now)  # down to 500
    start = clock.now
    # Two drainers, each reporting a healthy round every 50 ms, for two seconds.
    grant = rate.reserve(1, clock=clock)
    while clock.now < start + 2000:
        clock.now += 25
        rate.report(grant, write_ms=10, failed=False, rows=50, now_ms=clock.now)

    assert rate.state().rate == pytest.approx(CEILING / 2 + 2 * 95)  # as if one had reported


def test_rounds_are_sized_from_the_allowed_rate(adaptive):
    clock = Clock()
    assert round_at(clock).rows == CEILING * rate.ROUND_MS // 1000  # a twentieth of a second
    rate.report(round_at(clock), write_ms=None, failed=True, rows=0, now_ms=clock.now)

    assert round_at(clock).rows == CEILING // 2 * rate.ROUND_MS // 1000  # a cut shortens the rounds
    for _ in range(3):
        rate.report(round_at(clock), write_ms=None, failed=True, rows=0, now_ms=clock.now)
    # 62.5 rows/s: 50 ms of it would be 3 rows; the round stretches to 100 ms (the most a round may).
    assert rate.state().rate == CEILING / 16
    assert round_at(clock).rows == int(CEILING / 16 * rate.LONGEST_ROUND_MS / 1000)
    assert rate.reserve(3, clock=Clock(clock.now + 1000)).rows == 3  # never more than asked


def test_fixed_mode_keeps_the_ceiling_and_only_records_the_latency(adaptive, settings):
    settings.MOLLIFIER = {**settings.MOLLIFIER, "DRAIN_RATE_MODE": "fixed"}
    clock = Clock()

    changes = [
        rate.report(round_at(clock), write_ms=900, failed=i % 2 == 0, rows=50, now_ms=clock.now) for i in range(4)
    ]

    assert {(c.change, c.rate) for c in changes} == {("fixed", CEILING)}
    assert rate.state().rate == CEILING and rate.state().commit_ms is not None


def test_a_cut_is_reported_on_the_dashboard_line_and_in_metrics(adaptive):
    clock = Clock()
    rate.report(round_at(clock), write_ms=None, failed=True, rows=0, now_ms=clock.now)
    round_at(clock)

    minute = [row for row in rate.minutes(now_ms=clock.now) if row["rate"] is not None]
    assert minute and minute[-1]["cuts"] == 1 and FLOOR <= minute[-1]["rate"] <= CEILING
    assert "mollifier_drain_rate_limit 500.0" in exposition().decode()


def test_metrics_read_the_shared_rate_from_redis(adaptive):
    redis_client().hset(keys.drain_limit(), mapping={"rate": "321.5", "epoch": 3})  # set by some drainer

    body = Client().get("/metrics").content.decode()

    assert "mollifier_drain_rate_limit 321.5" in body


def test_settings_are_checked_when_read(settings):
    settings.MOLLIFIER = {**settings.MOLLIFIER, "DRAIN_RATE_MODE": "sometimes"}
    with pytest.raises(ImproperlyConfigured):
        conf.drain_rate_mode()
    settings.MOLLIFIER = {**settings.MOLLIFIER, "DRAIN_WEIGHTS": "production:8,staging"}
    with pytest.raises(ImproperlyConfigured):
        conf.drain_weights()
    settings.MOLLIFIER = {**settings.MOLLIFIER, "DRAIN_WEIGHTS": "Production:3, preview:2"}
    assert conf.drain_weights() == {"production": 3, "preview": 2}
    settings.MOLLIFIER = {**settings.MOLLIFIER, "DRAIN_MAX_ROWS_PER_SEC": 10, "DRAIN_MIN_ROWS_PER_SEC": 100}
    assert conf.drain_min_rows_per_sec() == 10  # the floor never exceeds the ceiling


def test_the_adapt_script_keeps_its_state_in_one_hash_with_a_ttl(adaptive):
    store = redis_client()
    minute = keys.drain_minute(NOW // 60_000)

    reply = scripts.DRAIN_ADAPT(
        keys=[keys.drain_limit(), minute],
        args=[NOW, 0, "ok", 250, 1000, 50, 95, 0.5, 60_000, 100, 40],
        client=store,
    )

    assert [r.decode() if isinstance(r, bytes) else r for r in reply] == ["cut", "500", 1]
    state = store.hgetall(keys.drain_limit())
    assert {k: state[k] for k in (b"rate", b"epoch", b"at", b"commit_ms", b"signal")} == {
        b"rate": b"500",
        b"epoch": b"1",
        b"at": str(NOW).encode(),
        b"commit_ms": b"250",
        b"signal": b"80",  # the average restarts at 80% of the target after a cut
    }
    assert 0 < store.pttl(keys.drain_limit()) <= 60_000
    assert store.hget(minute, "cuts") == b"1" and 0 < store.pttl(minute) <= 7_200_000


# -- through a real drainer and a real Postgres -------------------------------------------------


@contextmanager
def postgres_holding_the_runs_table(seconds: float):
    """Another session locks the runs table against writes for ``seconds`` (as a heavy migration or
    a long report would), then lets go."""
    locked, done = threading.Event(), threading.Event()
    params = {
        k: v
        for k, v in connection.get_connection_params().items()
        if k in ("dbname", "user", "password", "host", "port")
    }

    def hold():
        with psycopg.connect(**params) as other:
            other.execute(f"LOCK TABLE {TaskRun._meta.db_table} IN SHARE MODE")
            locked.set()
            done.wait(seconds)
            other.rollback()

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    assert locked.wait(10)
    try:
        yield
    finally:
        done.set()
        thread.join(10)


@pytest.mark.django_db(transaction=True)
def test_a_drainer_cuts_the_rate_while_postgres_is_slow_and_raises_it_after(adaptive, settings, environment):
    # A generous target: only the held round is slow, whatever else this machine is doing.
    settings.MOLLIFIER = {**settings.MOLLIFIER, "DRAIN_RATE_RISE_SECONDS": 1, "DRAIN_TARGET_COMMIT_MS": 250}
    fill_buffer(environment, 300)
    drainer = Drainer()

    first = drainer.drain_round()
    assert first.rate_limit == CEILING
    with postgres_holding_the_runs_table(1.5):
        slow = drainer.drain_round()  # its insert waits for the lock: 0.3 x 1,500 ms alone is over 250

    assert slow.write_ms > 1000 and slow.acked > 0
    assert slow.rate_limit == CEILING / 2
    healthy = [drainer.drain_round() for _ in range(12)]  # a round every 50 ms or more: over half a second
    assert healthy[-1].rate_limit > CEILING / 2
    assert TaskRun.objects.count() == sum(r.acked for r in [first, slow, *healthy])


@pytest.mark.django_db(transaction=True)
def test_a_statement_timeout_cuts_the_rate_and_the_round_is_given_back(adaptive, environment):
    fill_buffer(environment, 20)
    drainer = Drainer()
    with connection.cursor() as cursor:
        cursor.execute("SET statement_timeout = 150")
    try:
        with postgres_holding_the_runs_table(1.0):
            refused = drainer.drain_round()
    finally:
        with connection.cursor() as cursor:
            cursor.execute("SET statement_timeout = 0")

    assert refused.sink_unavailable and refused.acked == 0 and refused.retried == 20
    assert refused.rate_limit == CEILING / 2
    assert TaskRun.objects.count() == 0
