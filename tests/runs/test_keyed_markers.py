"""Keyed triggers while Redis does not answer (runs/services/keyed_markers.py): a keyed trigger of
an enrolled organisation writes its row unless keyed runs may wait in its environment's buffer,
which Postgres's keyed marker records: the trigger path makes it before the buffer takes a keyed
run, and the drain deletes it once nothing waits there."""

import threading

import pytest
from django.db import connection, transaction
from django.utils import timezone

from mollifier import buffer, claims, keys
from mollifier.client import get as redis_client
from mollifier.clock import now_ms
from mollifier.drainer import Drainer
from mollifier.sweep import sweep
from runs.api.serializers import trigger_options_from
from runs.exceptions import ServiceUnavailable
from runs.models import KeyedBufferMarker, TaskRun
from runs.services.keyed_markers import keyed_buffer_may_hold, keyed_marker_make_sure, keyed_markers_clear
from runs.services.trigger import _claimed_holder, task_run_prepare
from tests.conftest import client_for
from tests.helpers import send_items, trigger

pytestmark = pytest.mark.django_db


def marker_of(environment) -> int | None:
    return KeyedBufferMarker.objects.filter(environment=environment).values_list("generation", flat=True).first()


def redis_marker(environment) -> dict:
    raw = redis_client().hgetall(keys.keyed(str(environment.organization_id), str(environment.pk)))
    return {k.decode(): int(v) for k, v in raw.items()}


@pytest.fixture
def keep_none(settings):
    """Markers may go as soon as their environment's buffer is empty (by default they are kept a
    minute: test_a_marker_is_kept_a_while_after_its_buffer_emptied)."""
    settings.TRIGGER = {**settings.TRIGGER, "KEYED_MARKER_KEEP_SECONDS": 0}


def trip(api) -> None:
    for i in range(5):  # the test gate trips after 5 triggers
        assert trigger(api, task="warm-up", payload=i).headers.get("x-mollifier") is None


def test_without_keyed_runs_in_the_buffer_a_keyed_trigger_is_written_while_redis_is_silent(api, enrolled, silent_redis):
    first = trigger(api, payload=1, idempotencyKey="k")
    again = trigger(api, payload=2, idempotencyKey="k")

    assert first.status_code == 200 and first.json()["isCached"] is False
    assert again.status_code == 200 and again.json() == {"id": first.json()["id"], "isCached": True}
    assert TaskRun.objects.get(id=first.json()["id"].removeprefix("run_")).idempotency_key == "k"
    assert marker_of(enrolled) is None


def test_with_keyed_runs_in_the_buffer_a_keyed_trigger_answers_503_while_redis_is_silent(api, enrolled, silent_redis):
    keyed_marker_make_sure(enrolled)

    response = trigger(api, payload=1, idempotencyKey="k")

    assert response.status_code == 503 and "idempotency key" in response.json()["error"]
    assert TaskRun.objects.count() == 0
    assert trigger(api, payload=2).status_code == 200  # a trigger without a key is written, as before


def test_the_first_keyed_run_buffered_makes_the_marker_and_the_drain_deletes_it(api, enrolled, keep_none):
    trip(api)
    first = trigger(api, payload=1, idempotencyKey="a")
    second = trigger(api, payload=2, idempotencyKey="b")

    assert first.headers.get("x-mollifier") == "buffered" and second.headers.get("x-mollifier") == "buffered"
    generation = marker_of(enrolled)
    assert generation is not None and redis_marker(enrolled) == {"marker": generation}

    Drainer().run(once=True)

    assert TaskRun.objects.filter(idempotency_key__in=["a", "b"]).count() == 2
    assert marker_of(enrolled) is None and redis_marker(enrolled) == {"cleared": generation}
    # Buffered again later: a new generation, which the buffer takes.
    assert trigger(api, payload=3, idempotencyKey="c").headers.get("x-mollifier") == "buffered"
    assert marker_of(enrolled) > generation


def test_a_marker_stays_while_runs_of_its_environment_wait(api, enrolled, keep_none):
    trip(api)
    trigger(api, payload=1, idempotencyKey="a")
    generation = marker_of(enrolled)
    org, env = str(enrolled.organization_id), str(enrolled.pk)
    popped = buffer.pop(org_id=org, env_id=env, limit=100, lease_ms=60_000, now_ms=now_ms())
    assert len(popped.entries) == 1  # leased (being written): still there

    assert keyed_markers_clear() == 0
    assert marker_of(enrolled) == generation


def test_a_batch_s_keyed_items_make_the_marker_outside_its_transaction_and_none_is_triggered_twice(api, enrolled):
    trip(api)
    batch = api.post("/api/v3/batches", {"runCount": 3}, format="json").json()["id"]
    # Item 0 has no key: it is buffered before item 1 asks for the marker, and is kept when the
    # batch's transaction rolls back (its batch slot), not triggered again.
    items = [
        {"index": i, "task": "t", "payload": f'{{"json":{i}}}', "options": {"idempotencyKey": f"k{i}"} if i else {}}
        for i in range(3)
    ]

    response = send_items(api, batch, *items)

    assert response.status_code == 200 and response.json()["itemsAccepted"] == 3
    assert marker_of(enrolled) is not None
    org = str(enrolled.organization_id)
    assert buffer.buffered_count(org) == 3
    runs = api.get(f"/api/v2/batches/{batch}").json()["runs"]
    assert len(set(runs)) == 3
    Drainer().run(once=True)
    keys_written = TaskRun.objects.filter(task_identifier="t").values_list("idempotency_key", flat=True)
    assert sorted(map(str, keys_written)) == ["None", "k1", "k2"]  # three runs, each once


@pytest.mark.django_db(transaction=True)
def test_a_row_written_without_the_buffer_s_word_is_found_by_the_trigger_that_makes_the_marker(enrolled):
    """A keyed trigger that could not reach Redis checks the marker and writes its row in one
    transaction (keyed_buffer_may_hold holds a lock till its end); a same-key trigger about to be
    buffered, whose first look at the rows came before that commit, makes the marker only after it,
    looks again, and answers that row."""
    api = client_for(enrolled)
    trip(api)
    checked, go = threading.Event(), threading.Event()
    answers = []

    def write_without_the_buffer():
        try:
            with transaction.atomic():
                assert not keyed_buffer_may_hold(enrolled)
                answers.append(
                    TaskRun.objects.create(
                        id="c0mxkeyedmarkerrace000000001",
                        environment=enrolled,
                        organization_id=enrolled.organization_id,
                        project_id=enrolled.project_id,
                        task_identifier="hello-world",
                        idempotency_key="k",
                    )
                )
                checked.set()
                go.wait(30)
        finally:
            connection.close()

    def buffered_trigger():
        try:
            answers.append(trigger(client_for(enrolled), payload="buffered", idempotencyKey="k"))
        finally:
            connection.close()

    writer = threading.Thread(target=write_without_the_buffer)
    writer.start()
    assert checked.wait(30)
    racing = threading.Thread(target=buffered_trigger)
    racing.start()
    racing.join(timeout=1)
    assert racing.is_alive()  # making the marker waits for the row's transaction
    go.set()
    writer.join(timeout=30)
    racing.join(timeout=30)

    row, answer = answers
    assert answer.status_code == 200 and answer.json() == {"id": row.friendly_id, "isCached": True}
    assert buffer.buffered_count(str(enrolled.organization_id)) == 0


def test_the_sweep_deletes_a_marker_no_run_was_buffered_under(enrolled, keep_none):
    """Made, and then the buffer did not take the run (it was full, say): nothing drains, so the
    drain never goes idle for it; the sweep lets it go."""
    keyed_marker_make_sure(enrolled)

    sweep(now_ms=now_ms())

    assert marker_of(enrolled) is None


def test_a_retried_request_whose_first_run_was_never_written_is_buffered_for_real(api, enrolled):
    """The request key names a run that is nowhere (its first attempt failed after the gate): the
    retry makes its run, and when that run is keyed and the buffer first asks for the marker, it
    is buffered once the marker is made (it was answered as buffered without being written)."""
    trip(api)
    buffer.remember_request(
        org_id=str(enrolled.organization_id),
        env_id=str(enrolled.pk),
        task="hello-world",
        request_key="req-1",
        run_id="run_neverwritten00000000000",
        ttl_ms=60_000,
    )

    response = trigger(api, payload=1, idempotencyKey="k", headers={"x-trigger-request-idempotency-key": "req-1"})

    assert response.status_code == 200 and response.headers.get("x-mollifier") == "buffered"
    run_id = response.json()["id"]
    assert buffer.get(org_id=str(enrolled.organization_id), run_id=run_id) is not None
    assert api.get(f"/api/v3/runs/{run_id}").json()["idempotencyKey"] == "k"
    again = trigger(api, payload=1, idempotencyKey="k", headers={"x-trigger-request-idempotency-key": "req-1"})
    assert again.json() == {"id": run_id, "isCached": False}  # the retry gets its run, as first answered


def test_a_marker_is_kept_a_while_after_its_buffer_emptied(api, enrolled):
    """An environment that stays tripped while the drain keeps up keeps its marker: each keyed run
    buffered meanwhile is taken at once, without a Postgres write or a second round trip."""
    trip(api)
    trigger(api, payload=1, idempotencyKey="a")
    generation = marker_of(enrolled)

    Drainer().run(once=True)
    sweep(now_ms=now_ms())
    later = trigger(api, payload=2, idempotencyKey="b")

    assert marker_of(enrolled) == generation  # kept (TRIGGER_KEYED_MARKER_KEEP_SECONDS, a minute)
    assert later.headers.get("x-mollifier") == "buffered" and redis_marker(enrolled) == {"marker": generation}


@pytest.mark.parametrize("kind", [claims.ClaimKind.BUFFERED, claims.ClaimKind.RESOLVED])
def test_a_holder_the_claim_names_that_redis_will_not_show_is_a_503_not_a_second_run(enrolled, silent_redis, kind):
    """The claim answered (a buffered run holds the key, or another trigger published its run), and
    then Redis stopped answering: the holder cannot be read, and a row written now could be a
    second run for the key (an acceptance run saw it: the buffered holder later failed its drain).
    Answered 503 (the SDK retries); it was taken for a winner that was gone."""
    now = timezone.now()
    options = trigger_options_from({"options": {"idempotencyKey": "k"}}, now=now)
    run = task_run_prepare(environment=enrolled, task_identifier="hello-world", options=options, now=now)
    outcome = claims.ClaimOutcome(kind, run_id="run_c0mxheldbyabufferedrun0001")

    with pytest.raises(ServiceUnavailable, match="idempotency key cannot be checked"):
        _claimed_holder(run=run, key="k", now=now, outcome=outcome)
