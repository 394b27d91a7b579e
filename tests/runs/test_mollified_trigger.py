"""The mollified trigger path through the API: same answers, runs in the buffer, reads find them."""

import threading

import pytest
from django.db import connection
from django.utils import timezone

from mollifier import buffer, keys
from mollifier.client import get as redis_client
from runs.api.serializers import trigger_options_from
from runs.models import BatchTaskRunItem, TaskRun
from runs.services.trigger import task_run_trigger
from tests.conftest import client_for, enroll
from tests.factories import EnvironmentFactory
from tests.helpers import trigger

pytestmark = pytest.mark.django_db


def burst(api, count, **options):
    return [trigger(api, payload={"i": i}, **options) for i in range(count)]


def buffered_ids(responses):
    return [r.json()["id"] for r in responses if r.headers.get("x-mollifier") == "buffered"]


def org_of(environment):
    return str(environment.organization_id)


def test_over_the_threshold_triggers_are_buffered_with_the_same_answer(api, enrolled):
    responses = burst(api, 8)

    assert all(r.status_code == 200 and r.json()["isCached"] is False for r in responses)
    assert all(r.json()["id"].startswith("run_") and "x-trigger-jwt" in r.headers for r in responses)
    mollified = buffered_ids(responses)
    assert len(mollified) == 3  # the first 5 pass, then the trip holds
    assert TaskRun.objects.count() == 5
    assert buffer.buffered_count(org_of(enrolled)) == 3
    entry = buffer.get(org_id=org_of(enrolled), run_id=mollified[0])
    assert entry.env_id == str(enrolled.pk) and entry.task == "hello-world"


def test_a_buffered_run_retrieves_at_once_as_queued_with_its_payload(api, enrolled):
    run_id = buffered_ids(burst(api, 6, tags=["t1"]))[0]

    body = api.get(f"/api/v3/runs/{run_id}").json()

    assert body["id"] == run_id and body["status"] == "QUEUED" and body["isQueued"] is True
    assert body["payload"] == {"i": 5}
    assert body["tags"] == ["t1"]
    assert None not in body.values()
    run = TaskRun.objects.get_with_fallback(environment=enrolled, run_id=run_id)
    assert run.is_buffered and run.created_at <= timezone.now()


def test_buffered_runs_show_delayed_then_cancelled(api, enrolled):
    burst(api, 5)
    run_id = trigger(api, payload=1, delay="1h").json()["id"]

    assert api.get(f"/api/v3/runs/{run_id}").json()["status"] == "DELAYED"
    assert api.post(f"/api/v2/runs/{run_id}/cancel").json() == {"id": run_id}
    body = api.get(f"/api/v3/runs/{run_id}").json()
    assert body["status"] == "CANCELED" and body["isCancelled"] is True and "finishedAt" in body


def test_the_snapshot_holds_ids_and_no_secret(api, enrolled, redis_client):
    burst(api, 6, metadata={"m": 1})

    for key in redis_client.scan_iter("mollifier:*"):
        if redis_client.type(key) == b"hash":
            for value in redis_client.hgetall(key).values():
                assert enrolled.secret_key.encode() not in value
                assert enrolled.api_key_hash.encode() not in value


def test_another_environments_buffered_run_is_404(api, enrolled, other_api):
    run_id = buffered_ids(burst(api, 6))[0]

    assert other_api.get(f"/api/v3/runs/{run_id}").status_code == 404
    assert other_api.post(f"/api/v2/runs/{run_id}/cancel").status_code == 404
    assert api.get(f"/api/v3/runs/{run_id}").status_code == 200


def test_same_key_dedupes_across_both_stores(api, enrolled):
    key = "k" * 64
    first = trigger(api, payload=1, idempotencyKey=key).json()  # passes through to Postgres
    burst(api, 5)  # trips the gate
    again = trigger(api, payload=2, idempotencyKey=key).json()

    buffered_key = "b" * 64
    buffered = trigger(api, payload=3, idempotencyKey=buffered_key)
    repeat = trigger(api, payload=4, idempotencyKey=buffered_key)

    assert again == {"id": first["id"], "isCached": True}
    assert buffered.headers["x-mollifier"] == "buffered"
    assert repeat.json() == {"id": buffered.json()["id"], "isCached": True}


def test_an_expired_key_is_cleared_from_the_buffer(enrolled):
    now = timezone.now()
    options = trigger_options_from({"options": {"idempotencyKey": "k", "idempotencyKeyTTL": "2s"}}, now=now)
    for _ in range(5):
        task_run_trigger(environment=enrolled, task_identifier="t", options=trigger_options_from({}, now=now), now=now)
    first = task_run_trigger(environment=enrolled, task_identifier="t", options=options, now=now)
    later = now + timezone.timedelta(seconds=4)

    second = task_run_trigger(environment=enrolled, task_identifier="t", options=options, now=later)

    assert first.buffered and second.buffered
    assert second.run.id != first.run.id and not second.is_cached
    old = buffer.get(org_id=org_of(enrolled), run_id=first.run.friendly_id)
    assert old.idempotency_key is None


def test_a_retried_request_gets_its_buffered_run(api, enrolled):
    burst(api, 5)
    headers = {"x-trigger-request-idempotency-key": "req-1"}

    first = trigger(api, payload=1, headers=headers)
    retry = trigger(api, payload=1, headers=headers)

    assert first.headers["x-mollifier"] == "buffered"
    assert retry.json() == {"id": first.json()["id"], "isCached": False}
    assert buffer.buffered_count(org_of(enrolled)) == 1


def test_a_request_key_never_returns_another_environments_run(enrolled, redis_client):
    api = client_for(enrolled)
    burst(api, 5)
    theirs = trigger(api, payload=1, headers={"x-trigger-request-idempotency-key": "same"}).json()["id"]
    other = enroll(EnvironmentFactory())
    other_api = client_for(other)
    burst(other_api, 5)

    mine = trigger(other_api, payload=1, headers={"x-trigger-request-idempotency-key": "same"}).json()["id"]
    again = trigger(other_api, payload=1, headers={"x-trigger-request-idempotency-key": "same"}).json()["id"]

    assert mine != theirs and again == mine


def test_the_org_cap_answers_429_with_reset_headers_and_writes_nothing(api, enrolled, settings):
    settings.MOLLIFIER = {**settings.MOLLIFIER, "ORG_BUFFER_CAP": 2}
    responses = burst(api, 8)

    refused = responses[-1]
    assert [r.status_code for r in responses] == [200] * 7 + [429]  # 5 pass through, 2 fill the buffer
    assert "error" in refused.json()
    assert int(refused.headers["x-ratelimit-reset"]) > timezone.now().timestamp() * 1000
    assert int(refused.headers["Retry-After"]) >= 1
    assert buffer.buffered_count(org_of(enrolled)) == 2
    assert TaskRun.objects.count() == 5


def test_the_429_asks_to_come_back_once_the_backlog_has_drained_at_the_drain_pace(api, enrolled, settings):
    # 20 runs waiting, drained at 4 rows/s: about 5 s (to 7.5 s, spread), where a flat second would
    # send the SDK's few retries back long before there is room.
    settings.MOLLIFIER = {
        **settings.MOLLIFIER,
        "ORG_BUFFER_CAP": 20,
        "DRAIN_MAX_ROWS_PER_SEC": 4,
        "DRAIN_MIN_ROWS_PER_SEC": 1,
        "DRAIN_RATE_MODE": "fixed",
    }
    responses = burst(api, 26)

    refused = responses[-1]
    assert refused.status_code == 429
    wait_ms = int(refused.headers["x-ratelimit-reset"]) - timezone.now().timestamp() * 1000
    assert 4_500 <= wait_ms <= 7_500
    assert int(refused.headers["Retry-After"]) in range(5, 9)


def test_the_org_byte_cap_answers_429_like_the_count_cap(api, enrolled, settings):
    burst(api, 6)  # 5 pass through, one is buffered
    one = buffer.buffered_bytes(org_of(enrolled))
    settings.MOLLIFIER = {**settings.MOLLIFIER, "ORG_BUFFER_MAX_BYTES": 2 * one + one // 2}

    responses = burst(api, 3)

    refused = responses[-1]
    assert [r.status_code for r in responses] == [200, 429, 429]
    assert "bytes" in refused.json()["error"]
    assert int(refused.headers["x-ratelimit-reset"]) > timezone.now().timestamp() * 1000
    assert int(refused.headers["Retry-After"]) >= 1
    assert buffer.buffered_count(org_of(enrolled)) == 2
    assert buffer.buffered_bytes(org_of(enrolled)) <= 2 * one + one // 2
    assert TaskRun.objects.count() == 5


def test_batch_items_are_buffered_with_their_batch_and_index(api, enrolled):
    burst(api, 5)
    batch = api.post("/api/v3/batches", {"runCount": 3}, format="json").json()["id"]
    body = b"".join(
        f'{{"index":{i},"task":"t","payload":"p{i}","options":{{"payloadType":"text/plain"}}}}\n'.encode()
        for i in range(3)
    )

    first = api.generic("POST", f"/api/v3/batches/{batch}/items", body, content_type="application/x-ndjson").json()
    resent = api.generic("POST", f"/api/v3/batches/{batch}/items", body, content_type="application/x-ndjson").json()

    assert first["itemsAccepted"] == 3 and first["sealed"] is True
    assert resent["itemsAccepted"] == 0 and resent["itemsDeduplicated"] == 3
    assert BatchTaskRunItem.objects.count() == 0  # the drainer makes them with the rows
    detail = api.get(f"/api/v2/batches/{batch}").json()
    assert detail["status"] == "PROCESSING" and len(detail["runs"]) == 3
    run = api.get(f"/api/v3/runs/{detail['runs'][1]}").json()
    assert run["batchId"] == batch and run["payload"] == "p1" and run["triggerFunction"] == "batchTrigger"


@pytest.mark.parametrize(
    "options, field",
    [
        ({"debounce": {"key": "d", "delay": "5s"}}, "options.debounce"),
        ({"oneTimeUseToken": "tok"}, "options.oneTimeUseToken"),
    ],
)
def test_no_caller_can_opt_out_of_the_gate_with_debounce_or_a_one_time_token(api, enrolled, options, field):
    """Both used to skip the buffer for any caller that sent them; neither is supported here, so
    both are refused rather than silently ignored."""
    burst(api, 6)
    before = TaskRun.objects.count()

    response = trigger(api, payload=1, **options)

    assert response.status_code == 422 and field in response.json()["error"]
    assert TaskRun.objects.count() == before


def test_trigger_and_wait_bypasses_the_gate(api, enrolled):
    parent = trigger(api, payload=0).json()["id"]
    burst(api, 6)

    child = trigger(api, payload=1, parentRunId=parent, resumeParentOnCompletion=True)

    assert "x-mollifier" not in child.headers
    assert TaskRun.objects.filter(id=child.json()["id"].removeprefix("run_")).exists()


@pytest.mark.django_db(transaction=True)
def test_fifty_concurrent_same_key_triggers_while_the_gate_trips_make_one_run(mollifier_on):
    environment = enroll(EnvironmentFactory())
    options = trigger_options_from({"options": {"idempotencyKey": "shared"}}, now=timezone.now())
    plain = trigger_options_from({}, now=timezone.now())
    barrier = threading.Barrier(60)
    outcomes, errors = [], []

    def fire(opts):
        try:
            barrier.wait()
            outcomes.append(
                (opts is options, task_run_trigger(environment=environment, task_identifier="t", options=opts))
            )
        except Exception as error:  # collected, asserted below
            errors.append(error)
        finally:
            connection.close()

    # 10 keyless triggers trip the gate (threshold 5) while the 50 same-key ones race.
    threads = [threading.Thread(target=fire, args=(options if i % 6 else plain,)) for i in range(60)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    keyed = [outcome for is_keyed, outcome in outcomes if is_keyed]
    assert len(keyed) == 50
    assert len({outcome.run.id for outcome in keyed}) == 1
    org, env = org_of(environment), str(environment.pk)
    waiting = buffer.get_many(
        org_id=org, run_ids=[r.decode() for r in redis_client().zrange(keys.listing(org, env), 0, -1)]
    )
    holders = [e.run_id for e in waiting if e.idempotency_key == "shared"]
    holders += [run.friendly_id for run in TaskRun.objects.filter(idempotency_key="shared")]
    assert holders == [keyed[0].run.friendly_id]


def test_a_burst_of_two_thousand_answers_every_trigger_and_buffers_a_known_share(api, enrolled, settings):
    settings.MOLLIFIER = {**settings.MOLLIFIER, "TRIP_THRESHOLD": 100}
    responses = burst(api, 2000)

    assert {r.status_code for r in responses} == {200}
    mollified = buffered_ids(responses)
    assert len(mollified) == 1900
    assert TaskRun.objects.count() == 100
    assert buffer.buffered_count(org_of(enrolled)) == 1900
    for run_id in mollified[::97]:
        assert api.get(f"/api/v3/runs/{run_id}").json()["status"] == "QUEUED"
    assert len({r.json()["id"] for r in responses}) == 2000
