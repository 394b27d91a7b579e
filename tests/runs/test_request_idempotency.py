"""Request idempotency (the SDK's ``x-trigger-request-idempotency-key``, one per call, the same on each
retry): a retried call gets its first run back, whichever store took it, for 24 hours — at no extra
Redis round trip. The key lives with the run: on its row, or resolved by the gate's own script."""

import uuid
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from mollifier import buffer, keys, memory
from mollifier.drainer import Drainer
from runs.models import BatchTaskRun, RunStatus, TaskRun
from tests.conftest import client_for, enroll
from tests.factories import EnvironmentFactory, TaskRunFactory
from tests.helpers import trigger
from tests.redis_watch import round_trips, watch_redis

pytestmark = pytest.mark.django_db

TASK = "hello-world"


def sdk_trigger(api, request_key: str, **options):
    return trigger(api, payload={"p": 1}, headers={"x-trigger-request-idempotency-key": request_key}, **options)


def trip(redis_client, environment, on: bool = True) -> None:
    tripped = keys.tripped(str(environment.organization_id), str(environment.pk))
    if on:
        redis_client.set(tripped, "1", px=60_000)
    else:
        redis_client.delete(tripped)


def test_a_retried_call_gets_its_written_run_back_with_the_mollifier_off(api, environment):
    request_key = str(uuid.uuid4())

    first, retry = sdk_trigger(api, request_key), sdk_trigger(api, request_key)

    assert retry.json() == {"id": first.json()["id"], "isCached": False}
    assert TaskRun.objects.get().request_key == request_key


@pytest.mark.parametrize("first_buffered, retry_buffered", [(False, False), (True, True), (False, True), (True, False)])
def test_a_retried_call_gets_its_first_run_back_whichever_store_took_either(
    api, enrolled, redis_client, first_buffered, retry_buffered
):
    request_key = str(uuid.uuid4())
    trip(redis_client, enrolled, first_buffered)
    first = sdk_trigger(api, request_key)
    trip(redis_client, enrolled, retry_buffered)

    retry = sdk_trigger(api, request_key)

    assert retry.json() == {"id": first.json()["id"], "isCached": False}
    assert ("x-mollifier" in first.headers) == first_buffered and "x-mollifier" not in retry.headers
    written = TaskRun.objects.filter(task_identifier=TASK).count()
    waiting = 1 if first_buffered else 0
    assert written + waiting == 1  # one run, not two
    ttl = redis_client.pttl(keys.request(str(enrolled.organization_id), str(enrolled.pk), TASK, request_key))
    assert 24 * 3600 * 1000 - 60_000 < ttl <= 24 * 3600 * 1000  # remembered for 24 hours


def test_a_retried_call_gets_its_drained_run_back_as_first_answered(api, enrolled, redis_client):
    request_key = str(uuid.uuid4())
    trip(redis_client, enrolled)
    first = sdk_trigger(api, request_key)
    assert first.headers.get("x-mollifier") == "buffered"
    Drainer().run(once=True)

    retry = sdk_trigger(api, request_key)

    assert retry.json() == {"id": first.json()["id"], "isCached": False}
    # The row keeps the key: a retry finds it in Postgres alone (also while Redis does not answer).
    assert TaskRun.objects.get().request_key == request_key


def test_a_drained_run_whose_request_key_a_row_took_meanwhile_is_still_written(api, enrolled, redis_client):
    # The first attempt was buffered; its retry reached Postgres while Redis did not answer and made a
    # run of its own with the same request key. The drain must still write the first run.
    request_key = str(uuid.uuid4())
    trip(redis_client, enrolled)
    first = sdk_trigger(api, request_key).json()["id"]
    redis_client.delete(keys.request(str(enrolled.organization_id), str(enrolled.pk), TASK, request_key))
    trip(redis_client, enrolled, on=False)
    retry = sdk_trigger(api, request_key)
    assert retry.json()["id"] != first  # the buffered run could not be found: a second run
    Drainer().run(once=True)

    rows = {run.friendly_id: run.request_key for run in TaskRun.objects.all()}
    assert rows == {first: None, retry.json()["id"]: request_key}


@pytest.mark.django_db(transaction=True)  # the failed round must really roll back
def test_a_drained_run_whose_request_key_is_taken_while_its_key_conflict_resolves_is_not_lost(
    api, enrolled, redis_client
):
    """The drain meets a row holding the run's idempotency key (expired: it is cleared, and the run
    tried again); between the drain's check of the request key and that retry, another run takes
    the request key. Refused then even as a failure row, the run must not be acked without a row:
    the round fails and the run is written by the next attempt."""
    request_key = str(uuid.uuid4())
    trip(redis_client, enrolled)
    first = sdk_trigger(api, request_key, idempotencyKey="k").json()["id"]
    holder = TaskRunFactory(
        environment=enrolled,
        idempotency_key="k",
        idempotency_key_expires_at=timezone.now() - timedelta(minutes=1),
        status=RunStatus.COMPLETED,
    )
    with connection.cursor() as cursor:  # once: as the stale key is cleared, the request key is taken
        cursor.execute("CREATE SEQUENCE test_take_once")
        cursor.execute(
            "CREATE FUNCTION test_take_once() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "IF pg_trigger_depth() = 1 THEN IF nextval('test_take_once') = 1 THEN "  # not its own UPDATE
            f"UPDATE runs_taskrun SET request_key = '{request_key}' WHERE id = '{holder.id}'; END IF; END IF; "
            "RETURN NULL; END $$"
        )
        cursor.execute(
            "CREATE TRIGGER test_take_once AFTER UPDATE ON runs_taskrun "
            "FOR EACH STATEMENT EXECUTE FUNCTION test_take_once()"
        )
    try:
        Drainer().run(once=True)
        with connection.cursor() as cursor:
            cursor.execute("SELECT last_value FROM test_take_once")
            # The stale key was released twice: in the round the taken key failed, then in the run's own.
            assert cursor.fetchone()[0] >= 2
    finally:
        with connection.cursor() as cursor:
            cursor.execute("DROP TRIGGER test_take_once ON runs_taskrun")
            cursor.execute("DROP FUNCTION test_take_once()")
            cursor.execute("DROP SEQUENCE test_take_once")

    row = TaskRun.objects.get(id=first.removeprefix("run_"))
    assert (row.status, row.idempotency_key, row.request_key) == (RunStatus.QUEUED, "k", request_key)
    assert buffer.buffered_count(str(enrolled.organization_id)) == 0


def test_a_retry_is_not_counted_against_the_rate(api, enrolled, redis_client):
    request_key = str(uuid.uuid4())
    rate = keys.rate(str(enrolled.organization_id), str(enrolled.pk))
    sdk_trigger(api, request_key)
    counted = redis_client.hget(rate, "c")

    sdk_trigger(api, request_key)

    assert redis_client.hget(rate, "c") == counted


def test_a_retry_of_a_keyed_call_is_its_first_answer_not_cached(api, enrolled, redis_client):
    request_key = str(uuid.uuid4())
    trip(redis_client, enrolled)
    first = sdk_trigger(api, request_key, idempotencyKey="k")

    retry = sdk_trigger(api, request_key, idempotencyKey="k")
    other = sdk_trigger(api, str(uuid.uuid4()), idempotencyKey="k")

    assert retry.json() == {"id": first.json()["id"], "isCached": False}
    assert other.json() == {"id": first.json()["id"], "isCached": True}


def test_a_request_key_whose_run_was_never_written_makes_a_new_run(api, enrolled, redis_client):
    request_key = str(uuid.uuid4())
    # The first attempt passed the gate (which made the key name its run), then failed to write.
    redis_client.set(keys.request(str(enrolled.organization_id), str(enrolled.pk), TASK, request_key), "run_gone")

    retry = sdk_trigger(api, request_key)
    again = sdk_trigger(api, request_key)

    assert retry.status_code == 200 and retry.json()["id"] != "run_gone"
    assert again.json() == {"id": retry.json()["id"], "isCached": False}


def test_a_retried_batch_create_gets_its_first_batch_back(api):
    request_key = str(uuid.uuid4())
    body = {"runCount": 2, "taskIdentifiers": ["t"]}
    headers = {"x-trigger-request-idempotency-key": request_key}

    first = api.post("/api/v3/batches", body, format="json", headers=headers).json()
    retry = api.post("/api/v3/batches", body, format="json", headers=headers).json()

    assert retry == first and first["isCached"] is False
    assert BatchTaskRun.objects.get().request_key == request_key


@pytest.mark.parametrize(
    "case, expected",
    [("off", 0), ("not enrolled", 0), ("enrolled pass-through", 1), ("mollified", 1), ("keyed and mollified", 2)],
)
def test_redis_round_trips_of_an_sdk_shaped_trigger(settings, redis_client, mollifier_on, case, expected):
    """P4's table, counted from Redis itself (MONITOR), with the SDK's request key on every call."""
    # The memory guard's INFO is once a second per process, not per trigger: keep the warm-up's
    # reading for the test so a slow machine does not count it against the trigger measured.
    settings.MOLLIFIER = {**settings.MOLLIFIER, "REDIS_MEMORY_CHECK_MS": 600_000}
    memory.reset()
    environment = EnvironmentFactory()
    if case != "not enrolled":
        enroll(environment)
    if case == "off":
        settings.MOLLIFIER = {**settings.MOLLIFIER, "ENABLED": False}
    if case in ("mollified", "keyed and mollified"):
        trip(redis_client, environment)
    api = client_for(environment)
    options = {"idempotencyKey": f"k-{uuid.uuid4()}"} if case.startswith("keyed") else {}
    sdk_trigger(api, str(uuid.uuid4()), **options)  # scripts loaded, connections open

    stop = watch_redis()
    response = sdk_trigger(api, str(uuid.uuid4()), **(options and {"idempotencyKey": f"k-{uuid.uuid4()}"}))
    commands = round_trips(stop())

    assert response.status_code == 200
    assert ("x-mollifier" in response.headers) == (case in ("mollified", "keyed and mollified"))
    assert len(commands) == expected, commands
