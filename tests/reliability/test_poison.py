"""Entries that cannot become their row, drained by real drainer processes: they back off, turn
terminal, become a SYSTEM_FAILURE row — or, when not even a minimal row can be written, are parked
for an operator. Never a loop, never silent, one log line per failure."""

import json
import re
from io import StringIO

import pytest
from django.core.management import call_command

from mollifier import buffer, keys, scripts
from mollifier.client import get as redis_client
from mollifier.clock import now_ms
from mollifier.drainer import Drainer
from runs.models import RunStatus, TaskRun
from tests.buffering import fill_buffer
from tests.conftest import client_for
from tests.factories import EnvironmentFactory
from tests.server import finish, start_manage

pytestmark = pytest.mark.django_db(transaction=True)

FAST = {
    "MOLLIFIER_DRAIN_MAX_ATTEMPTS": "2",
    "MOLLIFIER_DRAIN_PARK_AFTER": "2",
    "MOLLIFIER_DRAIN_BACKOFF_BASE_MS": "50",
    "MOLLIFIER_DRAIN_BACKOFF_MAX_MS": "200",
}


def poison_snapshot(environment, run_id: str, **values) -> None:
    """Overwrite a buffered run's snapshot with values its row cannot hold (as a bug, a version
    skew or a hand-edited entry might). Its stored row goes too: the drain builds the row from the
    snapshot, as for an entry buffered by a version that stored no rows."""
    org = str(environment.organization_id)
    entry = buffer.get(org_id=org, run_id=run_id)
    redis_client().set(keys.snapshot(org, run_id), json.dumps({**entry.snapshot, **values}))
    redis_client().delete(keys.row(org, run_id))


def test_an_entry_its_row_cannot_hold_backs_off_then_lands_as_a_minimal_failure_row():
    environment = EnvironmentFactory()
    good, bad = fill_buffer(environment, 2)
    poison_snapshot(environment, bad, ttl="1" * 100)  # the ttl column holds 64 characters

    output = finish(start_manage("mollifier_drain", "--once", **FAST), timeout=60)

    rows = {run.friendly_id: run for run in TaskRun.objects.all()}
    assert sorted(rows) == sorted([good, bad]), output
    assert rows[good].status == RunStatus.QUEUED
    assert rows[bad].status == RunStatus.SYSTEM_FAILURE
    assert "attempts_exhausted" in rows[bad].error["message"] and "only its ids were kept" in rows[bad].error["message"]
    assert rows[bad].ttl is None and rows[bad].task_identifier == "hello-world"
    assert buffer.buffered_count(str(environment.organization_id)) == 0
    failures = re.findall(r"mollifier\.drain\.entry_failed run=(\S+) attempts=(\d+)", output)
    assert {run for run, _ in failures} == {bad} and len(failures) <= 4  # backed off, not a loop
    assert "Traceback" not in output  # one line per failure


def test_a_cancelled_entry_its_row_cannot_hold_lands_as_a_minimal_cancelled_row():
    """Cancel wins over the failure: the row is the minimal one, but CANCELED, with the cancel's
    time and reason, and says what could not be kept."""
    environment = EnvironmentFactory()
    (bad,) = fill_buffer(environment, 1)
    poison_snapshot(environment, bad, ttl="1" * 100)
    assert client_for(environment).post(f"/api/v2/runs/{bad}/cancel").status_code == 200

    output = finish(start_manage("mollifier_drain", "--once", **FAST), timeout=60)

    run = TaskRun.objects.get()
    assert (run.friendly_id, run.status, run.ttl) == (bad, RunStatus.CANCELED, None), output
    assert run.cancelled_at is not None and run.completed_at == run.cancelled_at
    assert "only its ids were kept" in run.error["message"]
    assert buffer.buffered_count(str(environment.organization_id)) == 0


def test_an_entry_that_cannot_be_written_in_any_form_is_parked_then_discarded_by_an_operator():
    environment = EnvironmentFactory()
    (good,) = fill_buffer(environment, 1)
    # An entry whose very id cannot be a row id (ids are at most 32 characters).
    entry = buffer.get(org_id=str(environment.organization_id), run_id=good)
    entry.run_id = "run_" + "z" * 40
    scripts.ACCEPT(
        keys=buffer.accept_keys(entry), args=[entry.accepted_at_ms, *buffer.accept_args(entry)], client=redis_client()
    )

    output = finish(start_manage("mollifier_drain", "--once", **FAST), timeout=60)

    assert "mollifier.drain.parked run=" + entry.run_id in output and "Traceback" not in output
    assert [e.run_id for e in buffer.parked_entries()] == [entry.run_id]
    assert TaskRun.objects.get().friendly_id == good
    status = finish(start_manage("mollifier_status"))
    assert "PARKED: 1 run" in status and entry.run_id in status

    refused = start_manage("mollifier_parked", "discard", entry.run_id)
    assert refused.wait(30) != 0 and "--reason" in refused.communicate()[0]
    discarded = finish(start_manage("mollifier_parked", "discard", entry.run_id, "--reason", "id from a bad import"))

    assert f"{entry.run_id} discarded: id from a bad import" in discarded
    assert buffer.parked_entries() == [] and buffer.buffered_count(str(environment.organization_id)) == 0


def test_entries_of_a_deleted_environment_leave_a_trace_for_operators():
    environment = EnvironmentFactory()
    run_ids = fill_buffer(environment, 3)
    environment.delete()

    output = finish(start_manage("mollifier_drain", "--once"))
    status = finish(start_manage("mollifier_status"))

    assert "3 dropped" in output and output.count("mollifier.drain.environment_gone") == 3
    assert "dropped: 3 runs on record" in status and run_ids[-1] in status


def test_an_operator_lists_shows_and_retries_a_parked_run_and_a_cancel_of_it_is_kept():
    """Once the cause is fixed (here: the entry was parked although writable), ``retry`` gives a
    parked run back to the drain with its attempts reset; a cancel answered while it was parked is
    what its row says."""
    environment = EnvironmentFactory()
    (run_id,) = fill_buffer(environment, 1)
    popped = buffer.pop(
        org_id=str(environment.organization_id), env_id=str(environment.pk), limit=1, lease_ms=60_000, now_ms=now_ms()
    )
    assert buffer.park(popped.entries[0], now_ms=now_ms(), code="unwritable", message="a cause since fixed")

    def parked(*args) -> str:
        out = StringIO()
        call_command("mollifier_parked", *args, stdout=out)
        return out.getvalue()

    assert run_id in parked("list") and "a cause since fixed" in parked("list")
    shown = json.loads(parked("show", run_id))
    assert shown["run"] == run_id and shown["snapshot"]["payload_type"] and shown["parked_at_ms"]
    Drainer().run(once=True)
    assert not TaskRun.objects.exists()  # parked: the drain leaves it to the operator

    cancelled = client_for(environment).post(f"/api/v2/runs/{run_id}/cancel")
    assert cancelled.status_code == 200

    assert parked("retry", run_id) == f"{run_id} is back in the drain\n"
    assert buffer.parked_entries() == []
    assert buffer.get(org_id=str(environment.organization_id), run_id=run_id).attempts == 0
    Drainer().run(once=True)
    assert TaskRun.objects.get().status == RunStatus.CANCELED
