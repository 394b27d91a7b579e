"""The hostile inputs of issue 12, each a named regression: refused with a clear 4xx in both stores,
never a 5xx, never stored where it would break a later read, a listing or the drain."""

import pytest

from mollifier import buffer
from mollifier.drainer import Drainer
from runs.models import TaskRun
from tests.buffering import fill_buffer
from tests.helpers import trigger

pytestmark = pytest.mark.django_db

HUGE = "99999999999999999999d"


def assert_4xx(response, status: int = 400, contains: str = ""):
    assert response.status_code == status, response.content
    message = response.json()["error"]
    assert isinstance(message, str) and contains in message, message


@pytest.fixture(params=["direct", "buffered"])
def store(request, api, environment, settings):
    """Each test runs with the run going to Postgres directly, and with the gate tripped."""
    if request.param == "buffered":
        request.getfixturevalue("enrolled")
        for i in range(6):  # the test gate trips after 5
            assert trigger(api, task="warm-up", payload=i).status_code == 200
    return request.param


def trigger_count(environment) -> int:
    return TaskRun.objects.exclude(task_identifier="warm-up").count()


# -- poison in the buffer --------------------------------------------------------------------------


def test_a_ttl_longer_than_its_column_is_400_in_both_stores(api, environment, store):
    response = trigger(api, payload=1, ttl="0" * 71 + "1s")  # a valid 1 s, 73 characters

    assert_4xx(response, 400, "options.ttl")
    assert trigger_count(environment) == 0


def test_an_idempotency_key_too_wide_for_its_index_is_400_not_a_retryable_503(api, environment, store):
    response = trigger(api, payload=1, idempotencyKey="漢" * 2000)  # 2,000 characters, 6,000 bytes

    assert_4xx(response, 400, "bytes")
    assert trigger_count(environment) == 0


# -- one write must not break a whole listing -------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b'{"metadata": {"x": 1e309}}',
        b'{"metadata": {"x": -1e309}}',
        b'{"operations": [{"type": "set", "key": "x", "value": 1e400}]}',
    ],
)
def test_metadata_that_is_not_finite_is_400_and_the_listing_still_answers(api, environment, store, body):
    run_id = trigger(api, payload=1, metadata={"ok": 1}).json()["id"]

    response = api.generic("PUT", f"/api/v1/runs/{run_id}/metadata", body, content_type="application/json")

    assert_4xx(response, 400, "finite")
    assert api.get(f"/api/v3/runs/{run_id}").json()["metadata"] == {"ok": 1}
    assert api.get("/api/v1/runs").status_code == 200


def test_an_increment_that_overflows_is_400(api, environment, store):
    run_id = trigger(api, payload=1, metadata={"n": 1.7e308}).json()["id"]

    response = api.put(
        f"/api/v1/runs/{run_id}/metadata",
        {"operations": [{"type": "increment", "key": "n", "value": 1.7e308}]},
        format="json",
    )

    assert_4xx(response, 400, "would not be valid JSON")
    assert api.get(f"/api/v3/runs/{run_id}").json()["metadata"] == {"n": 1.7e308}


def test_an_increment_past_the_integer_digit_limit_is_400(api, environment, store):
    big = int("9" * 4300)
    run_id = trigger(api, payload=1).json()["id"]
    api.generic(
        "PUT",
        f"/api/v1/runs/{run_id}/metadata",
        b'{"metadata": {"n": ' + str(big).encode() + b"}}",
        content_type="application/json",
    )

    response = api.put(
        f"/api/v1/runs/{run_id}/metadata",
        {"operations": [{"type": "increment", "key": "n", "value": 1}]},
        format="json",
    )

    assert_4xx(response, 400)
    assert api.get("/api/v1/runs").status_code == 200


@pytest.mark.parametrize("payload", ['{"json":{"a":1e309}}', '{"json":NaN}', '{"json":{"a":-Infinity}}'])
def test_a_json_payload_that_is_not_finite_is_400(api, environment, store, payload):
    body = {"payload": payload, "options": {"payloadType": "application/super+json"}}

    response = api.post("/api/v1/tasks/hello-world/trigger", body, format="json")

    assert_4xx(response, 400, "payload")
    assert trigger_count(environment) == 0


def test_integers_past_the_digit_limit_are_400(api, environment, store):
    body = b'{"payload": "1", "options": {"metadata": {"n": ' + b"9" * 5000 + b"}}}"

    response = api.generic("POST", "/api/v1/tasks/hello-world/trigger", body, content_type="application/json")

    assert_4xx(response, 400, "Invalid JSON")


# -- 500s that are 4xx now --------------------------------------------------------------------------


@pytest.mark.parametrize("option", ["delay", "ttl", "idempotencyKeyTTL"])
def test_durations_too_large_are_400(api, environment, store, option):
    assert_4xx(trigger(api, payload=1, **{option: HUGE}), 400, f"options.{option}")
    assert_4xx(trigger(api, payload=1, **{option: "9" * 5000 + "s"}), 400, f"options.{option}")


def test_reschedule_and_replay_with_huge_durations_are_400(api, environment, store):
    run_id = trigger(api, payload=1, delay="1h").json()["id"]

    assert_4xx(api.post(f"/api/v1/runs/{run_id}/reschedule", {"delay": HUGE}, format="json"), 400, "delay")
    assert_4xx(api.post(f"/api/v1/runs/{run_id}/replay", {"delay": HUGE}, format="json"), 400, "delay")
    assert_4xx(api.post(f"/api/v1/runs/{run_id}/replay", {"ttl": HUGE}, format="json"), 400, "ttl")


def test_a_huge_created_at_period_is_400(api):
    assert_4xx(api.get(f"/api/v1/runs?filter%5BcreatedAt%5D%5Bperiod%5D={HUGE}"), 400, "Query Error")


@pytest.mark.parametrize(
    "body",
    [
        b'{"payload": "{\\"json\\":\\"\\ud800\\"}", "options": {"payloadType": "application/super+json"}}',
        b'{"payload": "\\ud800"}',
        b'{"payload": "1", "options": {"tags": ["\\ud800"]}}',
        b'{"payload": "1", "options": {"metadata": {"\\udfff": 1}}}',
        b'{"payload": "1", "options": {"metadata": {"k": "\\ud800"}}}',
        b'{"payload": "1", "options": {"concurrencyKey": "\\ud800"}}',
    ],
)
def test_lone_surrogates_are_400(api, environment, store, body):
    response = api.generic("POST", "/api/v1/tasks/hello-world/trigger", body, content_type="application/json")

    assert_4xx(response, 400, "surrogate")
    assert trigger_count(environment) == 0


def test_a_surrogate_tag_on_a_buffered_run_is_400_not_a_retryable_503(api, enrolled):
    (run_id,) = fill_buffer(enrolled, 1)

    response = api.generic(
        "POST", f"/api/v1/runs/{run_id}/tags", b'{"tags": ["\\ud800"]}', content_type="application/json"
    )

    assert_4xx(response, 400, "surrogate")
    assert buffer.get(org_id=str(enrolled.organization_id), run_id=run_id).tags == []


@pytest.mark.parametrize("depth", [65, 5000])
def test_deep_nesting_is_400(api, environment, store, depth):
    nested = b"[" * depth + b"]" * depth
    in_body = b'{"payload": "1", "options": {"metadata": {"a": ' + nested + b"}}}"
    in_payload = b'{"payload": "{\\"json\\":' + nested + b'}", "options": {"payloadType": "application/super+json"}}'

    for body in (in_body, in_payload):
        response = api.generic("POST", "/api/v1/tasks/hello-world/trigger", body, content_type="application/json")
        assert_4xx(response, 400)
    assert trigger_count(environment) == 0


@pytest.mark.parametrize(
    "cursor",
    [
        "W1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1td",  # deeply nested JSON
        "WyIyMDI2LTAxLTAxVDAwOjAwOjAwIiwiYWJjIl0",  # ["2026-01-01T00:00:00","abc"]: a naive time
        "A" * 5000,
    ],
)
def test_a_forged_cursor_is_400_also_while_runs_are_buffered(api, enrolled, cursor):
    fill_buffer(enrolled, 3)

    assert_4xx(api.get(f"/api/v1/runs?page%5Bafter%5D={cursor}"), 400, "Invalid page cursor")
    assert_4xx(api.get(f"/api/v1/runs?page%5Bbefore%5D={cursor}"), 400, "Invalid page cursor")


# -- the same run whatever the store -----------------------------------------------------------------


def test_metadata_over_the_limit_is_413_at_trigger_as_on_put(api, environment, store, settings):
    settings.TRIGGER = {**settings.TRIGGER, "MAX_METADATA_BYTES": 100}

    response = trigger(api, payload=1, metadata={"big": "x" * 200})

    assert_4xx(response, 413, "Metadata is larger than 100 bytes")
    assert trigger_count(environment) == 0


def test_bypassed_triggers_are_counted_with_their_reason(api, enrolled):
    from mollifier.metrics import GATE_DECISIONS

    parent = trigger(api, payload=0).json()["id"]
    counter = GATE_DECISIONS.labels(decision="pass_through", reason="bypass:trigger_and_wait")
    before = counter._value.get()

    child = trigger(api, payload=1, parentRunId=parent, resumeParentOnCompletion=True)

    assert child.status_code == 200 and counter._value.get() == before + 1


def test_drained_runs_come_back_as_they_went_in(api, enrolled):
    """A buffered run with every option set reads the same before and after its drain."""
    for i in range(6):
        trigger(api, task="warm-up", payload=i)
    run_id = trigger(
        api,
        payload={"s": "zaĺ ✓ 𝄞", "n": 2**60, "f": 0.1, "e": [], "o": {}},
        tags=["b", "a"],
        metadata={"m": [1, {"k": None}]},
        ttl="10m",
        concurrencyKey=42,
        maxAttempts=3,
        priority=7,
        machine="small-1x",
        region="eu",
        queue={"name": "q"},
        lockToVersion="v1",
        delay="1h",
        idempotencyKey="key-1",
        idempotencyKeyTTL="2h",
    ).json()["id"]
    before = api.get(f"/api/v3/runs/{run_id}").json()

    Drainer().run(once=True)

    after = api.get(f"/api/v3/runs/{run_id}").json()
    assert TaskRun.objects.filter(id=run_id.removeprefix("run_")).exists()
    assert "position" in before.pop("mollifier")  # the write estimate, only while buffered
    assert before == after
