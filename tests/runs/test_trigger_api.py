import json

import jwt
import pytest

from runs.models import RunStatus, TaskRun
from tests.helpers import trigger

pytestmark = pytest.mark.django_db


def test_trigger_stores_the_run_and_answers_id_and_is_cached(api, environment):
    response = trigger(api, payload={"hello": "world", "n": 1}, payloadSize=32)

    assert response.status_code == 200
    body = response.json()
    assert body["isCached"] is False
    run = TaskRun.objects.get(id=body["id"].removeprefix("run_"))
    assert run.environment == environment
    assert run.status == RunStatus.QUEUED
    assert run.payload == '{"json": {"hello": "world", "n": 1}}'  # stored as sent
    assert run.payload_type == "application/super+json"
    assert run.buffered_at is None and run.materialised_at is None


def test_trigger_sends_a_public_token_signed_with_the_callers_key(api, environment):
    response = trigger(api, payload=1)

    claims = jwt.decode(
        response.headers["x-trigger-jwt"],
        environment.secret_key,
        algorithms=["HS256"],
        audience="https://api.trigger.dev",
    )
    assert claims["scopes"] == [f"read:runs:{response.json()['id']}"]
    assert claims["sub"] == str(environment.pk)


def test_retrieve_decodes_the_payload_and_reports_status_flags(api):
    run_id = trigger(api, payload={"hello": "world", "n": 1}).json()["id"]

    body = api.get(f"/api/v3/runs/{run_id}").json()

    assert body["id"] == run_id
    assert body["payload"] == {"hello": "world", "n": 1}
    assert body["status"] == "QUEUED"
    assert body["isQueued"] is True and body["isCompleted"] is False and body["isCancelled"] is False
    assert body["triggerFunction"] == "trigger"
    assert body["relatedRuns"] == {}
    assert body["depth"] == 0 and body["attemptCount"] == 0


def test_retrieve_omits_absent_optional_fields_rather_than_sending_null(api):
    run_id = trigger(api, payload=1).json()["id"]

    body = api.get(f"/api/v3/runs/{run_id}").json()

    assert None not in body.values()
    for absent in ["idempotencyKey", "version", "ttl", "batchId", "metadata", "delayedUntil", "finishedAt", "error"]:
        assert absent not in body


def test_text_and_missing_payloads_round_trip(api):
    text = api.post(
        "/api/v1/tasks/t/trigger", {"payload": "plain text ✓", "options": {"payloadType": "text/plain"}}, format="json"
    ).json()["id"]
    missing = api.post(
        "/api/v1/tasks/t/trigger", {"options": {"payloadType": "application/json", "payloadSize": 0}}, format="json"
    ).json()["id"]

    assert api.get(f"/api/v3/runs/{text}").json()["payload"] == "plain text ✓"
    assert "payload" not in api.get(f"/api/v3/runs/{missing}").json()


def test_all_trigger_options_are_kept_and_shown(api):
    response = trigger(
        api,
        payload={"a": 1},
        queue={"name": "my-queue"},
        concurrencyKey=42,
        tags=["b", "a", "b"],
        maxAttempts=3,
        metadata={"m": 1},
        maxDuration=600,
        machine="small-1x",
        priority=10,
        region="eu-central-1",
        lockToVersion="20250101.1",
        ttl="10m",
        delay="30s",
        idempotencyKey="0e16d9db8d30b750a3d0384efa1d775a5cc850cf2b5d99693d231eaff2f3b854",
        idempotencyKeyTTL="1h",
        idempotencyKeyOptions={"key": "user-123-order-9", "scope": "run"},
    )
    run_id = response.json()["id"]
    run = TaskRun.objects.get(id=run_id.removeprefix("run_"))
    body = api.get(f"/api/v3/runs/{run_id}").json()

    assert run.queue == "my-queue" and run.concurrency_key == "42" and run.max_attempts == 3
    assert run.machine == "small-1x" and run.priority == 10 and run.max_duration == 600
    assert run.status == RunStatus.DELAYED and run.delay_until is not None
    assert body["status"] == "DELAYED" and body["isQueued"] is True and "delayedUntil" in body
    assert body["tags"] == ["a", "b"]
    assert body["metadata"] == {"m": 1}
    assert body["version"] == "20250101.1"
    assert body["ttl"] == "10m"
    assert body["region"] == "eu-central-1"
    assert body["idempotencyKey"] == "user-123-order-9"  # the user's key, not the hash


def test_task_ids_may_contain_slashes_and_spaces(api):
    response = api.post("/api/v1/tasks/my%2Ftask%20id/trigger", {"payload": "x"}, format="json")

    assert response.status_code == 200
    assert TaskRun.objects.get().task_identifier == "my/task id"


def test_child_run_records_its_parent_and_depth(api):
    parent = trigger(api, payload=1).json()["id"]

    child = trigger(api, payload=2, parentRunId=parent, resumeParentOnCompletion=True).json()["id"]

    body = api.get(f"/api/v3/runs/{child}").json()
    assert body["depth"] == 1
    assert body["triggerFunction"] == "triggerAndWait"
    assert json.dumps(body)  # serialisable end to end


def test_a_numeric_delay_is_epoch_milliseconds_as_upstream_reads_it(api):
    """Upstream's schema coerces a number to a date (``z.coerce.date()``): epoch milliseconds."""
    at = "2030-01-01T00:00:00.250Z"
    epoch_ms = 1893456000250

    delayed = trigger(api, payload=1, delay=epoch_ms)
    past = trigger(api, payload=1, delay=1000)

    assert delayed.status_code == 200 and past.status_code == 200
    body = api.get(f"/api/v3/runs/{delayed.json()['id']}").json()
    assert body["status"] == "DELAYED" and body["delayedUntil"] == at
    assert api.get(f"/api/v3/runs/{past.json()['id']}").json()["status"] == "QUEUED"  # a past date: now

    later_ms = epoch_ms + 86_400_000
    rescheduled = api.post(f"/api/v1/runs/{delayed.json()['id']}/reschedule", {"delay": later_ms}, format="json")
    assert rescheduled.status_code == 200 and rescheduled.json()["delayedUntil"] == "2030-01-02T00:00:00.250Z"


@pytest.mark.parametrize("delay", [10**20, -(10**20), True])
def test_a_numeric_delay_no_date_can_hold_is_400(api, delay):
    response = trigger(api, payload=1, delay=delay)

    assert response.status_code == 400 and "options.delay" in response.json()["error"]
    assert TaskRun.objects.count() == 0
