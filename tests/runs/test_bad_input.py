"""Bad input gets a clear 4xx ``{"error": …}`` and nothing is written."""

import json

import pytest
from rest_framework.test import APIClient

from runs.models import BatchTaskRun, BatchTaskRunItem, TaskRun
from tests.helpers import trigger

pytestmark = pytest.mark.django_db

URL = "/api/v1/tasks/hello-world/trigger"


def assert_error(response, status: int, contains: str = ""):
    assert response.status_code == status, response.content
    body = response.json()
    assert isinstance(body["error"], str) and body["error"]
    assert contains in body["error"]


@pytest.fixture(autouse=True)
def nothing_written():
    yield
    assert TaskRun.objects.count() == 0
    assert BatchTaskRunItem.objects.count() == 0


@pytest.mark.parametrize(
    "raw, message",
    [
        (b"{not json", "Invalid JSON"),
        (b'{"payload": NaN}', "Invalid JSON"),
        (b"\xff\xfe{}", "Invalid JSON"),
        (b"[" * 100000 + b"]" * 100000, "Invalid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'"a string"', "must be a JSON object"),
    ],
)
def test_malformed_bodies_are_400(api, raw, message):
    assert_error(api.generic("POST", URL, raw, content_type="application/json"), 400, message)


def test_empty_body_is_400(api):
    assert_error(api.generic("POST", URL, b"", content_type="application/json"), 400, "Request body is empty")


def test_other_content_types_are_415(api):
    assert_error(api.generic("POST", URL, b"a=b", content_type="application/x-www-form-urlencoded"), 415)


@pytest.mark.parametrize(
    "options, field",
    [
        ({"tags": 5}, "options.tags"),
        ({"tags": ["x" * 129]}, "options.tags"),
        ({"idempotencyKey": 12345}, "options.idempotencyKey: Not a valid string"),
        ({"idempotencyKeyTTL": 60}, "options.idempotencyKeyTTL: Not a valid string"),
        ({"delay": "9999-12-31T23:59:59Z"}, "at most 3650 days ahead"),
        ({"idempotencyKeyTTL": "1h30m"}, "options.idempotencyKeyTTL"),
        ({"idempotencyKeyTTL": "99999999d"}, "options.idempotencyKeyTTL"),
        ({"idempotencyKey": "k" * 2049}, "options.idempotencyKey"),
        ({"delay": "not a date"}, "options.delay"),
        ({"delay": "2026-13-45T99:00:00Z"}, "options.delay"),
        ({"ttl": "soon"}, "options.ttl"),
        ({"ttl": -1}, "options.ttl"),
        ({"maxAttempts": "many"}, "options.maxAttempts"),
        ({"machine": "huge-99x"}, "options.machine"),
        ({"queue": "just-a-string"}, "options.queue"),
        ({"metadata": [1, 2]}, "options.metadata"),
        ({"concurrencyKey": {"a": 1}}, "options.concurrencyKey"),
    ],
)
def test_invalid_options_are_400_naming_the_field(api, options, field):
    assert_error(trigger(api, payload=1, **options), 400, field)


@pytest.mark.parametrize("tags, count", [([f"t{i}" for i in range(11)], 11), (["t"] * 10_000, 10_000)])
def test_more_than_10_tags_at_trigger_are_422_counted_as_sent(api, tags, count):
    """As upstream: counted before duplicates are dropped, and 422 (what the SDK's tags.add logs
    rather than throws; at trigger it throws either way)."""
    assert_error(trigger(api, payload=1, tags=tags), 422, f"Runs can only have 10 tags, you're trying to set {count}.")


def test_unused_option_fields_are_accepted_and_ignored(api):
    TaskRun.objects.all().delete()
    response = trigger(api, payload=1, payloadSize=12, someFutureOption={"x": 1})
    assert response.status_code == 200
    TaskRun.objects.all().delete()  # this one test writes, on purpose


def test_oversize_body_is_413(api, settings):
    settings.TRIGGER = {**settings.TRIGGER, "MAX_BODY_BYTES": 1000}
    assert_error(trigger(api, payload="x" * 2000), 413, "larger than 1000 bytes")


def test_unknown_parent_run_is_400(api):
    assert_error(trigger(api, payload=1, parentRunId="run_doesnotexist"), 400, "Parent run not found")


def test_task_id_over_128_characters_is_400(api):
    assert_error(api.post(f"/api/v1/tasks/{'t' * 129}/trigger", {"payload": "x"}, format="json"), 400, "taskId")


def test_task_id_with_a_null_character_is_400_saying_so(api):
    response = api.post("/api/v1/tasks/a%00b/trigger", {"payload": "x"}, format="json")
    assert_error(response, 400, "taskId: Null characters are not allowed.")


@pytest.mark.parametrize("value", ["bad key with spaces", "x" * 200, "new\tline"])
def test_request_idempotency_header_must_be_printable(api, value):
    assert_error(trigger(api, payload=1, headers={"x-trigger-request-idempotency-key": value}), 400)


@pytest.mark.parametrize("header", [None, "Bearer", "Token abc", "Bearer tr_dev_wrong", "Basic dXNlcjpwYXNz"])
def test_missing_or_wrong_key_is_401(header):
    client = APIClient()
    if header:
        client.credentials(HTTP_AUTHORIZATION=header)
    response = client.post(URL, {"payload": "x"}, format="json")
    assert_error(response, 401)
    assert response.json()["error"] in {"Invalid API Key", "Invalid or Missing API key"}


@pytest.mark.parametrize(
    "query, message",
    [
        ("page%5Bsize%5D=0", "Query Error"),
        ("page%5Bsize%5D=101", "Query Error"),
        ("page%5Bsize%5D=ten", "Query Error"),
        ("filter%5Bstatus%5D=RUNNING", "Query Error"),
        ("filter%5BisTest%5D=maybe", "Query Error"),
        ("filter%5BcreatedAt%5D%5Bfrom%5D=yesterday", "Query Error"),
        ("filter%5BcreatedAt%5D%5Bperiod%5D=forever", "Query Error"),
        ("page%5Bafter%5D=%%%garbage", "Invalid page cursor"),
    ],
)
def test_bad_list_queries_are_400(api, query, message):
    response = api.get(f"/api/v1/runs?{query}")
    assert_error(response, 400, message)


def test_batch_items_with_an_invalid_line_write_nothing(api):
    batch = api.post("/api/v3/batches", {"runCount": 2}, format="json").json()["id"]
    body = b'{"index":0,"task":"t","payload":"x"}\n{"index":1,"task":"t","options":{"tags":7}}\n'

    response = api.generic("POST", f"/api/v3/batches/{batch}/items", body, content_type="application/x-ndjson")

    assert_error(response, 400, "line 2")
    assert BatchTaskRun.objects.get().sealed is False


def test_batch_items_out_of_range_write_nothing(api):
    batch = api.post("/api/v3/batches", {"runCount": 1}, format="json").json()["id"]
    body = b'{"index":0,"task":"t","payload":"x"}\n{"index":5,"task":"t","payload":"x"}\n'

    response = api.generic("POST", f"/api/v3/batches/{batch}/items", body, content_type="application/x-ndjson")

    assert_error(response, 400, "out of range")


def test_batch_items_with_broken_json_write_nothing(api):
    batch = api.post("/api/v3/batches", {"runCount": 2}, format="json").json()["id"]
    body = b'{"index":0,"task":"t","payload":"x"}\n{"index":1,\n'

    response = api.generic("POST", f"/api/v3/batches/{batch}/items", body, content_type="application/x-ndjson")

    assert_error(response, 400, "Invalid JSON on line 2")


def test_batch_items_need_the_ndjson_content_type(api):
    batch = api.post("/api/v3/batches", {"runCount": 1}, format="json").json()["id"]
    response = api.post(f"/api/v3/batches/{batch}/items", {"index": 0, "task": "t"}, format="json")
    assert_error(response, 415)


@pytest.mark.parametrize("body", [{"runCount": 0}, {"runCount": 1001}, {"runCount": "lots"}, {}])
def test_bad_batch_create_is_400(api, body):
    assert_error(api.post("/api/v3/batches", body, format="json"), 400)
    assert BatchTaskRun.objects.count() == 0


def test_unknown_api_paths_answer_json_404(api):
    response = api.get("/api/v9/nothing/here")
    assert response.status_code == 404 and response.json() == {"error": "Not found"}


def test_a_host_django_refuses_answers_json_400_and_writes_nothing(api):
    response = api.post("/api/v1/tasks/t/trigger", {"payload": "x"}, format="json", HTTP_HOST="evil.example")
    assert response.status_code == 400 and response.json() == {"error": "Bad request"}
    assert TaskRun.objects.count() == 0


def test_an_unexpected_error_answers_json_500_to_api_clients(rf):
    from trigger_project.urls import server_error

    api, page = server_error(rf.get("/api/v3/runs/run_x")), server_error(rf.get("/admin/"))
    assert api.status_code == 500 and api["content-type"] == "application/json"
    assert json.loads(api.content) == {"error": "Internal server error"}
    assert page.status_code == 500 and "json" not in page["content-type"]


def test_task_ids_with_control_characters_are_refused_not_html(api):
    response = api.post("/api/v1/tasks/a%0Ab/trigger", {"payload": "x"}, format="json")
    assert response.status_code == 200 or response.status_code == 400
    assert response["Content-Type"] == "application/json"
    TaskRun.objects.all().delete()  # a newline is a legal task id character; what matters is JSON


def test_null_characters_are_refused(api):
    assert_error(api.post("/api/v1/tasks/t%00x/trigger", {"payload": "x"}, format="json"), 400)
    assert_error(api.post("/api/v1/tasks/t/trigger", {"payload": "a\u0000b"}, format="json"), 400, "null characters")
    assert_error(trigger(api, payload=1, tags=["a\u0000"]), 400, "options.tags")
    assert_error(trigger(api, payload=1, metadata={"k": "\u0000"}), 400, "options.metadata")


@pytest.mark.parametrize(
    "delay", ["+275760-09-13T00:00:00Z", "99999-01-01", "2026-01-01T25:00:00Z", "1" * 64, "9999-12-31T23:59:59Z"]
)
def test_absurd_delays_are_400(api, delay):
    assert_error(trigger(api, payload=1, delay=delay), 400, "options.delay")
