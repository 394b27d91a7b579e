"""Drainers as real processes: killed, stopped, starved of Postgres — every run lands exactly once."""

import signal
import time
from collections import Counter

import pytest

from mollifier import buffer, keys
from mollifier.client import get as redis_client
from runs.models import BatchTaskRun, BatchTaskRunItem, RunStatus, TaskRun
from tests.buffering import fill_buffer
from tests.factories import EnvironmentFactory
from tests.server import finish, start_manage, wait_until

pytestmark = pytest.mark.django_db(transaction=True)


def waiting(environment) -> int:
    return buffer.buffered_count(str(environment.organization_id))


def test_twenty_thousand_runs_two_drainers_one_killed_and_restarted():
    environment = EnvironmentFactory()
    other = EnvironmentFactory()
    batch = BatchTaskRun.objects.create(environment=environment, run_count=500, sealed=True, status="PROCESSING")
    run_ids = fill_buffer(environment, 500, batch=batch)
    run_ids += fill_buffer(environment, 17_500)
    run_ids += fill_buffer(other, 2_000)
    org = str(environment.organization_id)
    cancelled = run_ids[600:700]
    for run_id in cancelled:
        assert (
            buffer.cancel(
                org_id=org, env_id=str(environment.pk), run_id=run_id, now_ms=int(time.time() * 1000), reason="test"
            ).status
            == "applied"
        )
    knobs = {"MOLLIFIER_DRAIN_MAX_ROWS_PER_SEC": "5000", "MOLLIFIER_DRAIN_LEASE_MS": "2000"}

    first = start_manage("mollifier_drain", **knobs)
    second = start_manage("mollifier_drain", **knobs)
    wait_until(lambda: TaskRun.objects.count() >= 3_000)
    first.kill()  # SIGKILL mid-round: its leases expire and are re-driven
    first.wait()
    restarted = start_manage("mollifier_drain", "--once", **knobs)
    finish(restarted)
    second.send_signal(signal.SIGTERM)
    finish(second)

    rows = TaskRun.objects.all()
    assert rows.count() == 20_000
    assert {run.friendly_id for run in rows} == set(run_ids)
    assert not rows.filter(status=RunStatus.SYSTEM_FAILURE).exists()
    assert set(rows.filter(status=RunStatus.CANCELED).values_list("id", flat=True)) == {
        r.removeprefix("run_") for r in cancelled
    }
    assert BatchTaskRunItem.objects.filter(batch=batch).count() == 500
    assert waiting(environment) == 0 and waiting(other) == 0
    # The shared limiter held the write rate under the cap. Rows are stamped when a round is written,
    # just after its grant, so each of the two drainers may land one round (cap/20) in the next second.
    per_second = Counter(int(stamp.timestamp()) for stamp in rows.values_list("materialised_at", flat=True))
    assert max(per_second.values()) <= 5000 + 2 * 5000 // 20, per_second.most_common(3)


def test_sigterm_finishes_and_acks_the_round_in_hand():
    environment = EnvironmentFactory()
    fill_buffer(environment, 400)
    org, env = str(environment.organization_id), str(environment.pk)

    drainer = start_manage("mollifier_drain", MOLLIFIER_DRAIN_MAX_ROWS_PER_SEC="200")
    wait_until(lambda: TaskRun.objects.count() >= 20)
    drainer.send_signal(signal.SIGTERM)
    output = finish(drainer, timeout=30)

    assert redis_client().zcard(keys.leases(org, env)) == 0  # nothing left half-done
    assert TaskRun.objects.count() + waiting(environment) == 400
    assert waiting(environment) > 0  # it stopped early, not after draining everything
    assert "runs acked" in output


def test_postgres_unreachable_entries_stay_and_land_when_it_returns():
    environment = EnvironmentFactory()
    run_ids = fill_buffer(environment, 50)
    org = str(environment.organization_id)

    starved = start_manage(
        "mollifier_drain",
        DATABASE_URL="postgresql://postgres@127.0.0.1:1/nowhere",
        DB_CONNECT_TIMEOUT="1",
        MOLLIFIER_DRAIN_BACKOFF_BASE_MS="100",
    )
    wait_until(lambda: all(e.last_error for e in buffer.get_many(org_id=org, run_ids=run_ids)), timeout=60)
    starved.send_signal(signal.SIGTERM)
    finish(starved, timeout=60)

    entries = buffer.get_many(org_id=org, run_ids=run_ids)
    assert len(entries) == 50 and not any(e.materialised for e in entries)
    assert {e.last_error["code"] for e in entries if e.last_error} == {"database_unavailable"}
    assert {e.attempts for e in entries} == {0}  # an unreachable database is not the entries' fault
    assert TaskRun.objects.count() == 0

    finish(start_manage("mollifier_drain", "--once"))

    assert {run.friendly_id for run in TaskRun.objects.all()} == set(run_ids)
    assert not TaskRun.objects.filter(status=RunStatus.SYSTEM_FAILURE).exists()
