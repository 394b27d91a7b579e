import io
import signal
import time

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from mollifier import buffer, keys
from mollifier.client import get as redis_client
from mollifier.clock import now_ms
from mollifier.sweep import sweep
from runs.models import TaskRun
from tests.buffering import fill_buffer
from tests.factories import EnvironmentFactory
from tests.faults import RedisProcess, silent_port
from tests.server import finish, start_manage, wait_until

pytestmark = pytest.mark.django_db


def test_sweep_reclaims_expired_leases_and_reports_stale_runs(settings):
    settings.MOLLIFIER = {**settings.MOLLIFIER, "STALE_AFTER_MS": 60_000}
    environment = EnvironmentFactory()
    fill_buffer(environment, 5)
    org, env = str(environment.organization_id), str(environment.pk)
    buffer.pop(org_id=org, env_id=env, limit=3, lease_ms=1000, now_ms=now_ms())

    report = sweep(now_ms=now_ms() + 120_000)

    assert report.expired_leases == 3 and report.waiting == 5 and report.stale == 5
    assert report.oldest_age_ms >= 120_000
    assert redis_client().zcard(keys.leases(org, env)) == 0
    assert redis_client().zcard(keys.ready(org, env)) == 5


def test_sweep_repairs_the_organisation_index():
    environment = EnvironmentFactory()
    fill_buffer(environment, 2)
    redis_client().zrem(keys.orgs(), str(environment.organization_id))  # lost between accept and index

    report = sweep(now_ms=now_ms())

    assert report.reindexed_orgs == 1
    assert buffer.active_orgs() == [str(environment.organization_id)]


def test_a_quiet_sweep_reports_only_what_it_found_or_repaired():
    environment = EnvironmentFactory()
    fill_buffer(environment, 2)
    quiet_and_healthy, quiet_and_repairing = io.StringIO(), io.StringIO()

    call_command("mollifier_sweep", "--quiet", stdout=quiet_and_healthy)
    redis_client().zrem(keys.orgs(), str(environment.organization_id))
    call_command("mollifier_sweep", "--quiet", stdout=quiet_and_repairing)

    assert quiet_and_healthy.getvalue() == ""
    assert "index: +1 -0" in quiet_and_repairing.getvalue()


def test_one_sweeper_at_a_time():
    redis_client().set(keys.sweep_lease(), "pending:someone-else", px=60_000)

    assert sweep(now_ms=now_ms()) is None
    with pytest.raises(SystemExit) as exit_info:
        call_command("mollifier_sweep", stdout=io.StringIO(), stderr=io.StringIO())
    assert exit_info.value.code == 3


def test_sweep_command_exits_2_on_stale_runs(settings):
    settings.MOLLIFIER = {**settings.MOLLIFIER, "STALE_AFTER_MS": 1}
    fill_buffer(EnvironmentFactory(), 1)
    time.sleep(0.005)  # older than the 1 ms threshold, however fast the machine
    out = io.StringIO()

    with pytest.raises(SystemExit) as exit_info:
        call_command("mollifier_sweep", stdout=out)

    assert exit_info.value.code == 2
    assert "1 waiting" in out.getvalue()


def test_status_shows_depth_per_environment():
    environment = EnvironmentFactory()
    fill_buffer(environment, 7)
    out = io.StringIO()

    call_command("mollifier_status", stdout=out)

    text = out.getvalue()
    assert str(environment) in text and "7" in text and "total waiting: 7" in text
    assert "redis memory:" in text and "per organisation at most 100,000 runs, 256.0 MB" in text


@pytest.mark.parametrize("outage", ["refused", "hung"])
def test_status_shows_the_buffer_while_postgres_does_not_answer(outage):
    """The operator runs the status exactly when something is down: without Postgres it still
    shows what waits in the buffer (by id, the names live in Postgres) and exits 0."""
    environment = EnvironmentFactory()
    fill_buffer(environment, 4)

    with silent_port(outage) as port:
        status = finish(
            start_manage(
                "mollifier_status", DATABASE_URL=f"postgresql://postgres@127.0.0.1:{port}/x", DB_CONNECT_TIMEOUT="1"
            ),
            timeout=60,
        )

    assert "postgres did not answer (" in status and "Traceback" not in status
    assert f"org {environment.organization_id} env {environment.pk} " in status and "(deleted)" not in status
    assert "total waiting: 4" in status


def test_status_of_an_empty_buffer():
    out = io.StringIO()
    call_command("mollifier_status", stdout=out)
    assert "buffer empty" in out.getvalue()


def test_drain_once_prints_a_summary(settings):
    fill_buffer(EnvironmentFactory(), 12)
    out = io.StringIO()

    call_command("mollifier_drain", "--once", "--quiet", stdout=out)

    assert TaskRun.objects.count() == 12
    assert "12 runs acked" in out.getvalue() and "12 inserted" in out.getvalue()


@pytest.mark.parametrize(
    "command",
    [("mollifier_status",), ("mollifier_sweep",), ("mollifier_parked", "list"), ("mollifier_sweep", "--json")],
)
def test_commands_say_in_one_line_that_redis_does_not_answer(dead_redis, command):
    out = io.StringIO()

    with pytest.raises(CommandError) as refused:
        call_command(*command, stdout=out)

    assert str(refused.value).startswith("the buffer's Redis did not answer (")
    assert "Check that Redis is up" in str(refused.value)
    if command[0] == "mollifier_status":
        assert out.getvalue().startswith("mollifier ")  # the settings line, which needs no Redis


def test_status_says_so_when_redis_hangs(settings):
    store = RedisProcess()
    store.start()
    try:
        store.serve(settings)
        with store.paused(), pytest.raises(CommandError, match="did not answer"):
            call_command("mollifier_status", stdout=io.StringIO())
    finally:
        store.cleanup()


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM])
def test_a_sweeper_on_a_loop_stops_cleanly_on_ctrl_c_or_sigterm(stop_signal):
    """`make run` stops its children with Ctrl-C; a sweeper waiting for its next sweep exits at once,
    0 and without a traceback."""
    sweeper = start_manage("mollifier_sweep", "--every", "30")
    wait_until(lambda: sweeper.stdout is not None and sweeper.poll() is None and _swept_once(sweeper), timeout=30)

    sweeper.send_signal(stop_signal)

    output = finish(sweeper, timeout=10)
    assert "Traceback" not in output and "KeyboardInterrupt" not in output


def _swept_once(process) -> bool:
    line = process.stdout.readline()
    return line.startswith("sweep:")
