"""Every batch reaches a final status, whichever store its runs are in, and a batch request is all
or nothing in both stores."""

import pytest

from mollifier import buffer
from mollifier.drainer import Drainer
from runs.models import BatchTaskRun, BatchTaskRunItem, BatchTaskRunPendingItem, RunStatus, TaskRun
from tests.buffering import fill_buffer
from tests.factories import TaskRunFactory
from tests.helpers import send_items, trigger

pytestmark = pytest.mark.django_db(transaction=True)


def item(index: int, **options) -> dict:
    return {
        "index": index,
        "task": "hello-world",
        "payload": f'{{"json":{index}}}',
        "options": {"payloadType": "application/super+json", **options},
    }


def create_batch(api, run_count: int, **body) -> str:
    response = api.post(
        "/api/v3/batches", {"runCount": run_count, "taskIdentifiers": ["hello-world"], **body}, format="json"
    )
    assert response.status_code == 202, response.json()
    return response.json()["id"]


def trip_the_gate(api) -> None:
    for i in range(6):  # the test gate trips after 5 triggers
        trigger(api, task="warm-up", payload=i)


def test_an_item_cached_on_a_buffered_run_links_once_that_run_is_written(api, enrolled):
    trip_the_gate(api)
    holder = trigger(api, payload="first", idempotencyKey="shared").json()["id"]
    batch = create_batch(api, 2)

    response = send_items(api, batch, item(0), item(1, idempotencyKey="shared"))

    assert response.json()["sealed"] is True
    before = api.get(f"/api/v2/batches/{batch}").json()
    assert before["status"] == "PROCESSING" and before["runs"][1] == holder
    Drainer().run(once=True)
    after = api.get(f"/api/v2/batches/{batch}").json()
    assert after["status"] == "COMPLETED" and after["runs"][1] == holder
    assert BatchTaskRunItem.objects.get(batch_id=batch.removeprefix("batch_"), index=1).task_run_id == holder[4:]


def test_an_item_cached_on_a_written_run_is_linked_at_once(api, enrolled):
    holder = TaskRunFactory(environment=enrolled, idempotency_key="shared")
    batch = create_batch(api, 1)

    send_items(api, batch, item(0, idempotencyKey="shared"))

    detail = api.get(f"/api/v2/batches/{batch}").json()
    assert detail["status"] == "COMPLETED" and detail["runs"] == [holder.friendly_id]


def test_a_member_whose_drain_ends_as_a_failure_row_still_completes_the_batch(api, enrolled):
    trip_the_gate(api)
    batch = create_batch(api, 2)
    send_items(api, batch, item(0), item(1, idempotencyKey="taken"))
    TaskRunFactory(environment=enrolled, idempotency_key="taken")  # the key is taken in Postgres meanwhile

    Drainer().run(once=True)

    detail = api.get(f"/api/v2/batches/{batch}").json()
    assert detail["status"] == "COMPLETED" and len(detail["runs"]) == 2
    assert TaskRun.objects.get(id=detail["runs"][1][4:]).status == RunStatus.SYSTEM_FAILURE


def test_an_invalid_item_writes_nothing_in_either_store(api, enrolled):
    trip_the_gate(api)  # the batch's valid items would be buffered
    batch = create_batch(api, 3)
    before = TaskRun.objects.count()

    response = send_items(api, batch, item(0), item(1), item(2, parentRunId="run_doesnotexist"))

    assert response.status_code == 400 and "Parent run not found" in response.json()["error"]
    assert TaskRun.objects.count() == before
    assert buffer.batch_buffered_items(org_id=str(enrolled.organization_id), batch_id=batch[6:]) == {}
    assert api.get(f"/api/v2/batches/{batch}").json()["runs"] == []


def test_a_batch_with_an_unknown_parent_run_is_refused(api):
    response = api.post(
        "/api/v3/batches",
        {"runCount": 1, "parentRunId": "run_doesnotexist", "resumeParentOnCompletion": True},
        format="json",
    )

    assert response.status_code == 400 and "Parent run not found" in response.json()["error"]


def test_a_pending_item_is_linked_whichever_commits_last(api, enrolled):
    """The holder is written between the batch request and the next drain: reading the batch links it."""
    (holder,) = fill_buffer(enrolled, 1, idempotencyKey="shared")
    batch = create_batch(api, 1)
    send_items(api, batch, item(0, idempotencyKey="shared"))
    Drainer().run(once=True)  # writes the holder (and links the item after its commit)

    detail = api.get(f"/api/v2/batches/{batch}").json()

    assert detail["status"] == "COMPLETED" and detail["runs"] == [holder]


def test_the_round_that_writes_a_run_links_the_items_waiting_for_it(api, enrolled):
    """In its own transaction: the batch is complete once the drain is, before anyone reads it."""
    trip_the_gate(api)
    holder = trigger(api, payload="first", idempotencyKey="shared").json()["id"]
    batch = create_batch(api, 1)
    send_items(api, batch, item(0, idempotencyKey="shared"))
    assert BatchTaskRunPendingItem.objects.filter(batch_id=batch.removeprefix("batch_")).exists()

    Drainer().run(once=True)

    assert BatchTaskRunItem.objects.get(batch_id=batch.removeprefix("batch_"), index=0).task_run_id == holder[4:]
    assert not BatchTaskRunPendingItem.objects.exists()
    assert BatchTaskRun.objects.get(id=batch.removeprefix("batch_")).status == BatchTaskRun.Status.COMPLETED


def test_an_item_that_missed_the_round_writing_its_run_is_linked_when_the_drain_goes_idle(api, enrolled):
    """A batch request whose pending item commits after the round's link statement and before the
    round's commit: neither saw the other. The drain links it once it has nothing left to write."""
    (holder,) = fill_buffer(enrolled, 1, idempotencyKey="shared")
    batch = create_batch(api, 1)
    batch_id = batch.removeprefix("batch_")

    def after_round(result):
        if result.report.inserted:  # the run's row is committed; the item arrives just too late
            BatchTaskRunPendingItem.objects.create(batch_id=batch_id, index=0, run_internal_id=holder[4:])

    Drainer().run(once=True, on_round=after_round)

    assert BatchTaskRunItem.objects.get(batch_id=batch_id, index=0).task_run_id == holder[4:]
    assert not BatchTaskRunPendingItem.objects.exists()
