"""The buffer on a Redis that speaks TLS only (``rediss://``), as managed Redis services with
in-transit encryption do: one node through ``REDIS_URL``, and a 3-master cluster through
``MOLLIFIER_REDIS_CLUSTER_URL``. The real server and a real drainer, each verifying the server's
certificate by the CA named in the URL."""

import http.client
import json
import subprocess
import uuid
from contextlib import contextmanager
from urllib.parse import urlsplit

import pytest
import redis
from redis.cluster import RedisCluster

from mollifier import client as redis_client
from mollifier import keys
from mollifier.packer import ArgumentPacker, PackedSSLConnection
from runs.models import TaskRun
from tests.conftest import enroll
from tests.factories import EnvironmentFactory
from tests.faults import free_port
from tests.redis_cluster import TLSFiles, redis_cluster, server_binary
from tests.reliability.test_degraded import SDK_HEADERS
from tests.server import finish, running_server, start_manage, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@contextmanager
def tls_redis(tls: TLSFiles):
    """One redis-server that accepts TLS connections only; yields its ``rediss://`` URL."""
    port = free_port()
    process = subprocess.Popen(
        [server_binary(), "--port", "0", *tls.server_args(port), "--bind", "127.0.0.1", "--save", ""],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        client = redis.Redis(port=port, **tls.client_kwargs())
        wait_until(lambda: _answers(client), timeout=10)
        yield tls.url(port, "/0")
    finally:
        process.terminate()
        process.wait(timeout=10)


def _answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


def call(base_url: str, key: str, method: str, path: str, body: dict | None = None, request_key: str | None = None):
    parts = urlsplit(base_url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=20)
    headers = {
        **SDK_HEADERS,
        "Authorization": f"Bearer {key}",
        "x-trigger-request-idempotency-key": request_key or str(uuid.uuid4()),
    }
    conn.request(method, path, body=json.dumps(body).encode() if body is not None else None, headers=headers)
    response = conn.getresponse()
    answer = (response.status, json.loads(response.read() or b"null"), response.getheader("x-mollifier"))
    conn.close()
    return answer


@pytest.mark.parametrize("topology", ["single", "cluster"])
def test_triggers_are_buffered_read_and_drained_over_tls(tmp_path, topology):
    tls = TLSFiles.make(tmp_path)
    environment = enroll(EnvironmentFactory())
    org = str(environment.organization_id)
    with tls_redis(tls) if topology == "single" else redis_cluster(tls=tls) as url:
        stores = {"REDIS_URL": url} if topology == "single" else {"MOLLIFIER_REDIS_CLUSTER_URL": url}
        gate = dict(MOLLIFIER_ENABLED="1", MOLLIFIER_TRIP_THRESHOLD="2", MOLLIFIER_TRIP_WINDOW_MS="60000")
        buffer_client = redis.Redis.from_url(url) if topology == "single" else RedisCluster.from_url(url)
        with running_server(**stores, **gate) as base_url:
            answers = []
            for i in range(8):
                body = {"payload": json.dumps({"json": {"i": i}}), "options": {"payloadType": "application/super+json"}}
                request_key = str(uuid.uuid4())
                status, data, mollifier = call(
                    base_url, environment.secret_key, "POST", "/api/v1/tasks/t/trigger", body, request_key
                )
                assert status == 200, data
                answers.append((data["id"], mollifier == "buffered", body, request_key))
            buffered = [answer for answer in answers if answer[1]]
            assert len(buffered) >= 5  # the gate tripped after 2: the rest went to the TLS buffer
            run_id, _, body, request_key = buffered[-1]
            assert int(buffer_client.hget(keys.stats(org), "buffered")) == len(buffered)

            status, read, _ = call(base_url, environment.secret_key, "GET", f"/api/v3/runs/{run_id}")
            assert (status, read["id"], read["status"]) == (200, run_id, "QUEUED")
            # The SDK's retry of the same call (the same request key) gets the run it made.
            status, again, _ = call(
                base_url, environment.secret_key, "POST", "/api/v1/tasks/t/trigger", body, request_key
            )
            assert (status, again["id"]) == (200, run_id)

        output = finish(start_manage("mollifier_drain", "--once", **stores), timeout=60)

        assert int(buffer_client.hget(keys.stats(org), "buffered") or 0) == 0, output
        buffer_client.close()
    rows = TaskRun.objects.filter(environment=environment).values_list("id", flat=True)
    assert sorted(f"run_{row}" for row in rows) == sorted(answer[0] for answer in answers)


def test_the_buffers_tls_cluster_client_packs_commands_in_c(tmp_path, settings):
    """``rediss://`` keeps the client's own connection class: redis-py, given the URL, would put
    plain SSLConnection over it and drop the packer (mollifier/packer.py)."""
    with redis_cluster(tls=TLSFiles.make(tmp_path)) as url:
        settings.MOLLIFIER = {**settings.MOLLIFIER, "REDIS_CLUSTER_URL": url}
        client = redis_client.get()
        pool = client.get_default_node().redis_connection.connection_pool
        connection = pool.get_connection()
        try:
            assert isinstance(connection, PackedSSLConnection)
            assert isinstance(connection._command_packer, ArgumentPacker)
        finally:
            pool.release(connection)
        assert client.ping()
        client.close()
