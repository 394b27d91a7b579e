"""One state machine per run, whichever store holds it: each operation applied to a run written
directly and to a buffered run answers the same, field by field; and the drain writes what the API
showed."""

import time
from datetime import UTC, datetime, timedelta

import pytest

from mollifier import keys
from mollifier.drainer import Drainer
from tests.helpers import trigger

pytestmark = pytest.mark.django_db

TIMES = {"createdAt", "updatedAt", "finishedAt", "delayedUntil"}  # differ by when each call ran
BUFFER_ONLY = {"mollifier"}  # a buffered run's write estimate (the SDK drops it)


def shape(run: dict) -> dict:
    """Everything but the id, the times and the buffer's estimate; for the times, only whether
    each is there."""
    return {
        **{key: value for key, value in run.items() if key not in TIMES | BUFFER_ONLY and key != "id"},
        **{f"has {key}": key in run for key in TIMES},
    }


@pytest.fixture
def pair(api, enrolled, redis_client):
    """trigger(**options) → (direct run id, buffered run id), the same options each."""
    tripped = keys.tripped(str(enrolled.organization_id), str(enrolled.pk))

    def make(**options):
        redis_client.delete(tripped)
        direct = trigger(api, payload={"p": 1}, **options)
        redis_client.set(tripped, "1", px=60_000)
        buffered = trigger(api, payload={"p": 1}, **options)
        assert "x-mollifier" not in direct.headers and buffered.headers.get("x-mollifier") == "buffered"
        return direct.json()["id"], buffered.json()["id"]

    return make


def both(api, method: str, path: str, ids, body=None) -> tuple[dict, dict]:
    answers = []
    for run_id in ids:
        response = (
            getattr(api, method)(path.format(run_id), body, format="json")
            if body is not None
            else getattr(api, method)(path.format(run_id))
        )
        answers.append((response.status_code, response.json()))
    assert answers[0][0] == answers[1][0], answers
    return answers[0][1], answers[1][1]


def retrieve(api, ids) -> tuple[dict, dict]:
    return tuple(api.get(f"/api/v3/runs/{run_id}").json() for run_id in ids)


def assert_same(api, ids, *, after_drain: bool = True) -> None:
    direct, buffered = retrieve(api, ids)
    assert shape(direct) == shape(buffered)
    if after_drain:
        Drainer().run(once=True)
        drained = retrieve(api, ids)[1]
        assert shape(drained) == shape(buffered)  # the drain wrote what the API showed
        assert {key: buffered.get(key) for key in TIMES} == {key: drained.get(key) for key in TIMES}


def test_a_plain_run(api, pair):
    assert_same(api, pair(tags=["a"], metadata={"m": 1}))


def test_a_delay_that_passes_reads_queued_in_both_keeping_delayed_until(api, pair):
    soon = (datetime.now(UTC) + timedelta(milliseconds=400)).isoformat()
    ids = pair(delay=soon)
    assert {run["status"] for run in retrieve(api, ids)} == {"DELAYED"}

    time.sleep(0.5)

    direct, buffered = retrieve(api, ids)
    assert direct["status"] == buffered["status"] == "QUEUED"
    assert "delayedUntil" in direct and "delayedUntil" in buffered
    assert_same(api, ids)


def test_reschedule_to_zero_seconds(api, pair):
    ids = pair(delay="1h")

    first = both(api, "post", "/api/v1/runs/{}/reschedule", ids, {"delay": "0s"})
    later = both(api, "post", "/api/v1/runs/{}/reschedule", ids, {"delay": "1h"})

    assert shape(first[0]) == shape(first[1]) and first[0]["status"] == "QUEUED"
    assert later[0] == later[1] and "not delayed" in later[0]["error"]  # both refuse now
    assert_same(api, ids)


def test_reschedule_then_cancel_keeps_delayed_until(api, pair):
    ids = pair(delay="1h")
    both(api, "post", "/api/v1/runs/{}/reschedule", ids, {"delay": "2h"})

    both(api, "post", "/api/v2/runs/{}/cancel", ids)

    direct, buffered = retrieve(api, ids)
    assert direct["status"] == buffered["status"] == "CANCELED"
    assert "delayedUntil" in direct and "delayedUntil" in buffered
    assert_same(api, ids)


def test_tags_and_metadata_operations(api, pair):
    ids = pair(tags=["a"], metadata={"n": 1, "l": [1]})

    both(api, "post", "/api/v1/runs/{}/tags", ids, {"tags": ["b", "a"]})
    answers = both(
        api,
        "put",
        "/api/v1/runs/{}/metadata",
        ids,
        {"operations": [{"type": "increment", "key": "n", "value": 2}, {"type": "append", "key": "l", "value": 2}]},
    )

    assert answers[0] == answers[1] == {"metadata": {"n": 3, "l": [1, 2]}}
    assert_same(api, ids)


def test_metadata_over_the_limit_is_refused_the_same_way(api, pair, settings):
    ids = pair(metadata={"m": 1})
    settings.TRIGGER = {**settings.TRIGGER, "MAX_METADATA_BYTES": 50}

    answers = both(api, "put", "/api/v1/runs/{}/metadata", ids, {"metadata": {"big": "x" * 100}})

    assert answers[0] == answers[1] and "larger than 50 bytes" in answers[0]["error"]
    assert_same(api, ids)


@pytest.mark.parametrize(
    "operation, field",
    [
        ({"type": "increment", "key": "m", "value": "x"}, "value"),
        ({"type": "increment", "key": "m", "value": True}, "value"),
        ({"type": "update", "value": [1]}, "value"),
        ({"type": "set", "value": 1}, "key"),
    ],
)
def test_a_metadata_operation_that_cannot_apply_is_refused_the_same_way(api, pair, operation, field):
    """As the SDK's own schema says: an increment takes a number, an update an object, the rest a key."""
    ids = pair(metadata={"m": 1})

    answers = both(api, "put", "/api/v1/runs/{}/metadata", ids, {"operations": [operation]})

    assert answers[0] == answers[1] and field in answers[0]["error"]
    assert retrieve(api, ids)[0]["metadata"] == retrieve(api, ids)[1]["metadata"] == {"m": 1}


def test_cancel_of_a_cancelled_run_and_tags_past_the_cap(api, pair):
    ids = pair(tags=[f"t{i}" for i in range(9)])
    both(api, "post", "/api/v2/runs/{}/cancel", ids)
    both(api, "post", "/api/v2/runs/{}/cancel", ids)

    answers = both(api, "post", "/api/v1/runs/{}/tags", ids, {"tags": ["x", "y"]})

    assert answers[0] == answers[1] and "10 tags" in answers[0]["error"]
    assert_same(api, ids)
