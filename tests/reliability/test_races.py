"""Races with real threads and processes."""

import random
import threading
import time

import pytest
from django.db import connection
from django.utils import timezone

from mollifier import buffer, keys
from mollifier.client import get as redis_client
from runs.api.serializers import trigger_options_from
from runs.models import RunStatus, TaskRun
from runs.services.trigger import task_run_trigger
from tests.concurrency import run_concurrently
from tests.conftest import client_for, enroll
from tests.factories import EnvironmentFactory, TaskRunFactory
from tests.helpers import trigger
from tests.server import start_manage

pytestmark = pytest.mark.django_db(transaction=True)


def test_two_hundred_same_key_triggers_while_the_gate_flips_make_one_run(mollifier_on, settings):
    settings.MOLLIFIER = {**settings.MOLLIFIER, "TRIP_THRESHOLD": 1_000_000}  # only the flipper trips it
    environment = enroll(EnvironmentFactory())
    options = trigger_options_from({"options": {"idempotencyKey": "the-key"}}, now=timezone.now())
    keyless = trigger_options_from({}, now=timezone.now())
    tripped = keys.tripped(str(environment.organization_id), str(environment.pk))
    redis = redis_client()
    stop = threading.Event()
    barrier = threading.Barrier(51)  # 50 threads x 4 triggers: 200 same-key triggers, without exhausting connections
    outcomes, errors, plain = [], [], []

    def flip():
        barrier.wait()
        while not stop.is_set():  # the gate's own trip marker, on and off: pass-through and mollify interleave
            if random.random() < 0.5:
                redis.set(tripped, "1", px=50)
            else:
                redis.delete(tripped)
            time.sleep(0.001)

    def fire(i):
        try:
            barrier.wait()
            for _ in range(4):
                if i % 5 == 0:
                    plain.append(
                        task_run_trigger(environment=environment, task_identifier="t", options=keyless).buffered
                    )
                outcomes.append(task_run_trigger(environment=environment, task_identifier="t", options=options))
        except Exception as error:  # collected, asserted below
            errors.append(error)
        finally:
            connection.close()

    threads = [threading.Thread(target=fire, args=(i,)) for i in range(50)] + [threading.Thread(target=flip)]
    for thread in threads:
        thread.start()
    for thread in threads[:50]:
        thread.join()
    stop.set()
    threads[50].join()

    assert errors == []
    assert len(outcomes) == 200
    assert set(plain) == {True, False}  # the gate really flipped: keyless triggers went both ways
    assert len({outcome.run.id for outcome in outcomes}) == 1
    holders = list(TaskRun.objects.filter(idempotency_key="the-key").values_list("id", flat=True))
    org, env = str(environment.organization_id), str(environment.pk)
    waiting = buffer.get_many(
        org_id=org, run_ids=buffer.leased_ids(org_id=org, env_id=env) | {o.run.friendly_id for o in outcomes}
    )
    holders += [e.run_id.removeprefix("run_") for e in waiting if e.idempotency_key == "the-key" and not e.materialised]
    assert holders == [outcomes[0].run.id]


def test_cancels_racing_the_drain_all_end_canceled(mollifier_on):
    environment = enroll(EnvironmentFactory())
    api = client_for(environment)
    [trigger(api, payload=i) for i in range(5)]
    run_ids = [trigger(api, payload=i).json()["id"] for i in range(60)]
    drainer = start_manage("mollifier_drain", MOLLIFIER_DRAIN_MAX_ROWS_PER_SEC="200", MOLLIFIER_DRAIN_BATCH_SIZE="5")
    try:
        cancelled = []
        for run_id in run_ids[::2]:
            for _ in range(10):  # the SDK retries a 503 the same way
                response = api.post(f"/api/v2/runs/{run_id}/cancel")
                if response.status_code == 200:
                    cancelled.append(run_id)
                    break
                assert response.status_code == 503, response.content
            time.sleep(0.005)
        deadline = time.monotonic() + 60
        while TaskRun.objects.filter(environment=environment).count() < 65 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        drainer.terminate()
        drainer.wait(30)

    assert len(cancelled) == 30
    statuses = dict(TaskRun.objects.filter(environment=environment).values_list("id", "status"))
    assert {statuses[run_id.removeprefix("run_")] for run_id in cancelled} == {RunStatus.CANCELED}
    assert {statuses[run_id.removeprefix("run_")] for run_id in run_ids[1::2]} == {RunStatus.QUEUED}


def test_same_key_triggers_on_a_bypass_path_and_through_the_buffer_make_one_run(mollifier_on, settings):
    """triggerAndWait children skip the buffer; they still take the claim, so a concurrent same-key
    trigger that is buffered cannot make a second run. Twenty rounds, a fresh key each: the race
    window is narrow, and one round alone would rarely show the bug."""
    environment = enroll(EnvironmentFactory())
    parent = TaskRunFactory(environment=environment)
    redis_client().set(keys.tripped(str(environment.organization_id), str(environment.pk)), "1", px=600_000)
    now = timezone.now()
    org = str(environment.organization_id)

    def fire(options):
        return task_run_trigger(environment=environment, task_identifier="t", options=options)

    for round_number in range(20):
        keyed = {"idempotencyKey": f"the-key-{round_number}"}
        waiting = trigger_options_from(
            {"options": {**keyed, "parentRunId": parent.friendly_id, "resumeParentOnCompletion": True}}, now=now
        )
        buffered = trigger_options_from({"options": keyed}, now=now)

        outcomes, errors = run_concurrently(fire, [(waiting,), (buffered,)] * 6)

        assert errors == []
        assert len({outcome.run.id for outcome in outcomes}) == 1, round_number
        assert sum(not outcome.is_cached for outcome in outcomes) == 1
        in_postgres = TaskRun.objects.filter(idempotency_key=keyed["idempotencyKey"]).count()
        winners = sorted({outcome.run.friendly_id for outcome in outcomes})
        in_buffer = sum(1 for entry in buffer.get_many(org_id=org, run_ids=winners) if entry.idempotency_key)
        assert in_postgres + in_buffer == 1


def test_same_key_triggers_racing_the_drain_of_their_key_s_run_make_one_run(mollifier_on):
    """A key's buffered run is written by a drainer while same-key triggers arrive: the drain commits
    the row, then releases the buffer's key. A trigger that searched the rows before that commit
    and the buffer after it found no holder in either, and made a second run (seen by an acceptance
    run: 2 rounds in 8). The buffer is searched first now. Rounds of a fresh key each, spread
    over a few milliseconds so that some meet the drain mid-write."""
    environment = enroll(EnvironmentFactory())
    redis_client().set(keys.tripped(str(environment.organization_id), str(environment.pk)), "1", px=600_000)
    drainer = start_manage("mollifier_drain", MOLLIFIER_DRAIN_BACKOFF_BASE_MS="5", MOLLIFIER_DRAIN_BACKOFF_MAX_MS="20")
    now = timezone.now()

    def fire(options, delay_s):
        time.sleep(delay_s)
        return task_run_trigger(environment=environment, task_identifier="t", options=options)

    try:
        answered = {}
        for round_number in range(16):
            options = trigger_options_from({"options": {"idempotencyKey": f"key-{round_number}"}}, now=now)
            outcomes, errors = run_concurrently(fire, [(options, i * 0.002) for i in range(24)])
            assert errors == []
            answered[f"key-{round_number}"] = {outcome.run.id for outcome in outcomes}
        deadline = time.monotonic() + 60
        while buffer.buffered_count(str(environment.organization_id)) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        drainer.terminate()
        drainer.wait(30)

    assert {key: len(ids) for key, ids in answered.items() if len(ids) != 1} == {}
    rows = TaskRun.objects.filter(environment=environment, task_identifier="t")
    assert rows.count() == 16 and not rows.filter(status=RunStatus.SYSTEM_FAILURE).exists()
