import pytest

from runs.models import BatchTaskRun, BatchTaskRunItem, RunStatus, TaskRun
from tests.helpers import send_items, trigger

pytestmark = pytest.mark.django_db


def test_two_phase_batch_creates_linked_runs(api):
    created = api.post("/api/v3/batches", {"runCount": 3, "taskIdentifiers": ["a", "b"]}, format="json")
    batch = created.json()["id"]
    items = [
        {
            "index": i,
            "task": "a" if i else "b",
            "payload": f'{{"json":{i}}}',
            "options": {"payloadType": "application/super+json"},
        }
        for i in range(3)
    ]

    response = send_items(api, batch, *items)

    assert created.status_code == 202 and created.json()["isCached"] is False and "x-trigger-jwt" in created.headers
    assert response.json() == {
        "id": batch,
        "itemsAccepted": 3,
        "itemsDeduplicated": 0,
        "sealed": True,
        "enqueuedCount": 3,
        "expectedCount": 3,
    }
    detail = api.get(f"/api/v2/batches/{batch}").json()
    assert detail["status"] == "COMPLETED" and len(detail["runs"]) == 3
    run = api.get(f"/api/v3/runs/{detail['runs'][2]}").json()
    assert run["batchId"] == batch and run["triggerFunction"] == "batchTrigger" and run["payload"] == 2
    assert BatchTaskRunItem.objects.count() == 3


def test_resent_items_are_deduplicated_by_index(api):
    batch = api.post("/api/v3/batches", {"runCount": 2}, format="json").json()["id"]
    first = send_items(api, batch, {"index": 0, "task": "t", "payload": "x"})

    again = send_items(api, batch, {"index": 0, "task": "t", "payload": "x"}, {"index": 1, "task": "t", "payload": "y"})

    assert first.json()["sealed"] is False and first.json()["enqueuedCount"] == 1
    assert (
        again.json()["itemsAccepted"] == 1 and again.json()["itemsDeduplicated"] == 1 and again.json()["sealed"] is True
    )
    assert TaskRun.objects.count() == 2


def test_batch_idempotency_key_returns_the_cached_batch(api):
    body = {"runCount": 1, "idempotencyKey": "b" * 64, "idempotencyKeyOptions": {"key": "batch-key", "scope": "global"}}
    first = api.post("/api/v3/batches", body, format="json").json()

    second = api.post("/api/v3/batches", body, format="json").json()

    assert second["id"] == first["id"] and second["isCached"] is True
    assert BatchTaskRun.objects.count() == 1


def test_item_idempotency_keys_link_the_existing_run(api):
    existing = trigger(api, task="t", payload=1, idempotencyKey="c" * 64).json()["id"]
    batch = api.post("/api/v3/batches", {"runCount": 1}, format="json").json()["id"]

    send_items(api, batch, {"index": 0, "task": "t", "payload": "x", "options": {"idempotencyKey": "c" * 64}})

    assert api.get(f"/api/v2/batches/{batch}").json()["runs"] == [existing]


def test_cancel_a_queued_run(api):
    run_id = trigger(api, payload=1).json()["id"]

    response = api.post(f"/api/v2/runs/{run_id}/cancel", content_type="application/json")

    assert response.status_code == 200 and response.json() == {"id": run_id}
    body = api.get(f"/api/v3/runs/{run_id}").json()
    assert body["status"] == "CANCELED" and body["isCancelled"] and body["isFailed"] and "finishedAt" in body


def test_cancel_of_a_finished_run_is_a_no_op(api):
    run_id = trigger(api, payload=1).json()["id"]
    TaskRun.objects.filter(id=run_id.removeprefix("run_")).update(status=RunStatus.COMPLETED)

    response = api.post(f"/api/v2/runs/{run_id}/cancel")

    assert response.status_code == 200
    assert TaskRun.objects.get().status == RunStatus.COMPLETED


def test_cancel_of_an_unknown_run_is_404(api):
    response = api.post("/api/v2/runs/run_missing/cancel")
    assert response.status_code == 404 and response.json() == {"error": "Run not found"}
