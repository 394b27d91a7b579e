"""Kill the drainer at each step of a round: every accepted run still ends as exactly one row."""

import pytest

from mollifier import buffer
from runs.models import RunStatus, TaskRun
from tests.buffering import fill_buffer
from tests.factories import EnvironmentFactory
from tests.server import start_manage

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.mark.parametrize("step", ["after_pop", "before_commit", "after_commit"])
def test_a_drainer_killed_at_any_step_loses_and_duplicates_nothing(step):
    environment = EnvironmentFactory()
    run_ids = fill_buffer(environment, 300)
    lease = {"MOLLIFIER_DRAIN_LEASE_MS": "1000"}

    crashed = start_manage(
        "mollifier_drain",
        MOLLIFIER_SINK="tests.reliability.crashing_sink.CrashingSink",
        MOLLIFIER_CRASH_AT=step,
        **lease,
    )
    assert crashed.wait(60) == 9  # it died mid-round
    written_before = TaskRun.objects.count()
    recovery = start_manage("mollifier_drain", "--once", **lease)
    output, _ = recovery.communicate(timeout=120)

    assert recovery.returncode == 0, output
    rows = TaskRun.objects.filter(environment=environment)
    assert sorted(run.friendly_id for run in rows) == sorted(run_ids)  # each exactly once
    assert not rows.filter(status=RunStatus.SYSTEM_FAILURE).exists()
    assert buffer.buffered_count(str(environment.organization_id)) == 0
    assert (written_before > 0) == (step == "after_commit")  # only a committed round survives the kill
    if step == "after_commit":
        # The committed round is settled by its transaction's outcome (acked), not written again.
        assert "0 already written" in output and f"{written_before} pins settled" in output
