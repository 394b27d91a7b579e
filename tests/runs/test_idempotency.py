import threading
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from runs.api.serializers import trigger_options_from
from runs.models import RunStatus, TaskRun
from runs.services.trigger import task_run_trigger
from tests.factories import EnvironmentFactory
from tests.helpers import trigger

KEY = "a" * 64


@pytest.mark.django_db
def test_same_key_returns_the_same_run_cached(api):
    first = trigger(api, payload=1, idempotencyKey=KEY).json()
    second = trigger(api, payload=2, idempotencyKey=KEY).json()

    assert second == {"id": first["id"], "isCached": True}
    assert first["isCached"] is False
    assert TaskRun.objects.count() == 1


@pytest.mark.django_db
def test_key_is_scoped_to_task_and_environment(api, other_api):
    a = trigger(api, task="task-a", payload=1, idempotencyKey=KEY).json()["id"]
    b = trigger(api, task="task-b", payload=1, idempotencyKey=KEY).json()["id"]
    c = trigger(other_api, task="task-a", payload=1, idempotencyKey=KEY).json()["id"]

    assert len({a, b, c}) == 3


@pytest.mark.django_db
def test_expired_key_moves_to_a_new_run(environment):
    now = timezone.now()
    options = trigger_options_from({"options": {"idempotencyKey": KEY, "idempotencyKeyTTL": "2s"}}, now=now)
    first = task_run_trigger(environment=environment, task_identifier="t", options=options, now=now)

    within = task_run_trigger(
        environment=environment, task_identifier="t", options=options, now=now + timedelta(seconds=1)
    )
    after = task_run_trigger(
        environment=environment, task_identifier="t", options=options, now=now + timedelta(seconds=4)
    )

    assert within.run.id == first.run.id and within.is_cached
    assert after.run.id != first.run.id and not after.is_cached
    first.run.refresh_from_db()
    assert first.run.idempotency_key is None  # the key moved, it is not shared
    assert TaskRun.objects.get(id=after.run.id).idempotency_key == KEY


@pytest.mark.django_db
def test_default_key_lifetime_is_thirty_days(api):
    run = TaskRun.objects.get(id=trigger(api, payload=1, idempotencyKey=KEY).json()["id"].removeprefix("run_"))

    assert run.idempotency_key_expires_at - run.created_at == timedelta(days=30)


@pytest.mark.django_db
@pytest.mark.parametrize("status", ["SYSTEM_FAILURE", "CRASHED", "TIMED_OUT", "FAILED", "EXPIRED"])
def test_failed_like_runs_release_their_key(api, status):
    first = trigger(api, payload=1, idempotencyKey=KEY).json()["id"]
    TaskRun.objects.filter(id=first.removeprefix("run_")).update(status=status)

    second = trigger(api, payload=1, idempotencyKey=KEY).json()

    assert second["id"] != first and second["isCached"] is False


@pytest.mark.django_db
@pytest.mark.parametrize("status", ["COMPLETED", "CANCELED"])
def test_completed_and_cancelled_runs_keep_their_key(api, status):
    first = trigger(api, payload=1, idempotencyKey=KEY).json()["id"]
    TaskRun.objects.filter(id=first.removeprefix("run_")).update(status=status)

    assert trigger(api, payload=1, idempotencyKey=KEY).json() == {"id": first, "isCached": True}


@pytest.mark.django_db
def test_reset_releases_the_key(api):
    first = trigger(api, payload=1, idempotencyKey=KEY).json()["id"]

    response = api.post(f"/api/v1/idempotencyKeys/{KEY}/reset", {"taskIdentifier": "hello-world"}, format="json")
    second = trigger(api, payload=1, idempotencyKey=KEY).json()

    assert response.status_code == 200 and response.json() == {"id": KEY}
    assert second["id"] != first and second["isCached"] is False


@pytest.mark.django_db
def test_reset_of_an_unknown_key_is_404(api, other_api):
    trigger(other_api, payload=1, idempotencyKey=KEY)  # another tenant's key is not ours to reset

    response = api.post(f"/api/v1/idempotencyKeys/{KEY}/reset", {"taskIdentifier": "hello-world"}, format="json")

    assert response.status_code == 404
    assert "No runs found with idempotency key" in response.json()["error"]
    assert TaskRun.objects.get().idempotency_key == KEY


@pytest.mark.django_db
def test_a_retried_request_gets_its_first_run_back(api):
    headers = {"x-trigger-request-idempotency-key": "74357c7d-6df8-46f1-a19f-bfe67003daf4"}

    first = trigger(api, payload=1, headers=headers).json()
    retry = trigger(api, payload=1, headers=headers).json()

    assert retry == {"id": first["id"], "isCached": False}
    assert TaskRun.objects.count() == 1


@pytest.mark.django_db
def test_request_key_is_scoped_to_environment_and_task(api, other_api):
    headers = {"x-trigger-request-idempotency-key": "same-uuid"}

    a = trigger(api, payload=1, headers=headers).json()["id"]
    b = trigger(api, task="other-task", payload=1, headers=headers).json()["id"]
    c = trigger(other_api, payload=1, headers=headers).json()["id"]

    assert len({a, b, c}) == 3
    assert TaskRun.objects.count() == 3


@pytest.mark.django_db(transaction=True)
def test_concurrent_same_key_triggers_make_one_run():
    environment = EnvironmentFactory()
    options = trigger_options_from({"options": {"idempotencyKey": KEY}}, now=timezone.now())
    barrier = threading.Barrier(20)
    outcomes, errors = [], []

    def fire():
        try:
            barrier.wait()
            outcomes.append(task_run_trigger(environment=environment, task_identifier="t", options=options))
        except Exception as error:  # collected, asserted below
            errors.append(error)
        finally:
            connection.close()

    threads = [threading.Thread(target=fire) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert len({outcome.run.id for outcome in outcomes}) == 1
    assert sum(not outcome.is_cached for outcome in outcomes) == 1
    assert TaskRun.objects.filter(status=RunStatus.QUEUED).count() == 1
