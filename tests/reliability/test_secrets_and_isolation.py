"""No secret in Redis, admin writes need CSRF, and another tenant's ids are refused everywhere."""

import pytest
from django.contrib.auth.models import User
from django.test import Client

from runs.models import RuntimeEnvironment, TaskRun
from tests.conftest import client_for
from tests.helpers import trigger

pytestmark = pytest.mark.django_db


def every_redis_value(redis_client):
    for key in redis_client.scan_iter("*"):
        kind = redis_client.type(key)
        yield key
        if kind == b"string":
            yield redis_client.get(key)
        elif kind == b"hash":
            yield from (part for pair in redis_client.hgetall(key).items() for part in pair)
        elif kind == b"zset":
            yield from redis_client.zrange(key, 0, -1)
        elif kind == b"set":
            yield from redis_client.smembers(key)


def test_after_a_burst_no_redis_key_or_value_holds_a_secret(enrolled, redis_client):
    api = client_for(enrolled)
    for i in range(20):
        trigger(
            api,
            payload={"i": i},
            idempotencyKey=f"k{i}",
            metadata={"m": i},
            headers={"x-trigger-request-idempotency-key": f"r{i}"},
        )
    batch = api.post("/api/v3/batches", {"runCount": 2}, format="json").json()["id"]
    api.generic(
        "POST",
        f"/api/v3/batches/{batch}/items",
        b'{"index":0,"task":"t","payload":"x"}\n{"index":1,"task":"t","payload":"y"}\n',
        content_type="application/x-ndjson",
    )
    secret = enrolled.secret_key.encode()
    hashed = RuntimeEnvironment.hash_api_key(enrolled.secret_key).encode()

    values = list(every_redis_value(redis_client))

    assert len(values) > 100  # the buffer, the gate and the request cache were all written
    assert not [v for v in values if secret in v or hashed in v or secret[7:] in v]


def test_admin_writes_need_a_csrf_token(enrolled):
    api = client_for(enrolled)
    run_id = [trigger(api, payload=i).json()["id"] for i in range(6)][-1]
    user = User.objects.create_superuser("csrf", "c@example.com", "pw")
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(user)

    response = browser.post(f"/admin/runs/taskrun/buffered/{enrolled.organization_id}/{run_id}/cancel/")

    assert response.status_code == 403
    assert api.get(f"/api/v3/runs/{run_id}").json()["status"] == "QUEUED"


def test_another_tenants_idempotency_key_is_neither_found_nor_reset(api, enrolled, other_api):
    theirs = [trigger(api, payload=i, idempotencyKey="shared") for i in range(1)][0].json()["id"]
    [trigger(api, payload=i) for i in range(6)]
    buffered_theirs = trigger(api, payload=1, idempotencyKey="buffered").json()["id"]

    mine = trigger(other_api, payload=1, idempotencyKey="shared").json()
    reset = other_api.post("/api/v1/idempotencyKeys/buffered/reset", {"taskIdentifier": "hello-world"}, format="json")

    assert mine["id"] != theirs and mine["isCached"] is False
    assert reset.status_code == 404
    assert api.get(f"/api/v3/runs/{buffered_theirs}").json()["idempotencyKey"] == "buffered"
    assert TaskRun.objects.filter(idempotency_key="shared").count() == 2
