"""The web tier's Postgres breaker (trigger_project/postgres/breaker.py), on the real server
(gunicorn) against a Postgres of the test's own, hung (SIGSTOP) and then refused (stopped).

Once a worker has met a Postgres that does not answer, it stops waiting for it: an enrolled
organisation's triggers are buffered and answered 200, a buffered run is read from the buffer, and
what needs Postgres answers 503 at once. Keys the worker has seen still authenticate. When Postgres answers again, the breaker closes, triggers
pass through again, and the drainer writes every buffered run exactly once.
"""

import http.client
import json
import uuid
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import psycopg
import pytest

from tests.e2e.test_sdk import sdk_script
from tests.faults import PostgresProcess
from tests.reliability.test_degraded import SDK_HEADERS, metric
from tests.server import environment_in, finish, manage, running_server, start_manage, wait_until

pytestmark = pytest.mark.e2e

# One worker: each worker meets an outage once, and authenticates only keys it has seen, so with
# one the counts below are exact (which worker takes a request is up to the kernel).
WORKERS = 1


class Client:
    def __init__(self, base_url: str):
        parts = urlsplit(base_url)
        self.host, self.port = parts.hostname, parts.port

    def call(self, method: str, path: str, key: str, body=None) -> tuple[int, dict, dict]:
        # A new connection per call: gunicorn's sync workers close theirs after each answer.
        conn = http.client.HTTPConnection(self.host, self.port, timeout=20)
        headers = {**SDK_HEADERS, "Authorization": f"Bearer {key}"}
        headers["x-trigger-request-idempotency-key"] = str(uuid.uuid4())
        try:
            conn.request(method, path, body=json.dumps(body).encode() if body is not None else None, headers=headers)
            response = conn.getresponse()
            data = response.read()
            return response.status, json.loads(data) if data else {}, {k.lower(): v for k, v in response.getheaders()}
        finally:
            conn.close()

    def trigger(self, key: str) -> tuple[int, str, bool]:
        body = {"payload": json.dumps({"json": {"n": 1}}), "options": {"payloadType": "application/super+json"}}
        status, data, headers = self.call("POST", "/api/v1/tasks/hello-world/trigger", key, body)
        return status, data.get("id", ""), headers.get("x-mollifier") == "buffered"


def test_requests_stop_waiting_for_a_hung_or_refused_postgres(tmp_path):
    pg = PostgresProcess(tmp_path / "pg")
    try:
        _breaker_under_outages(pg, tmp_path)
    finally:
        pg.cleanup()


def _breaker_under_outages(pg: PostgresProcess, tmp_path):
    stores = pg.server_env()
    manage(stores, "migrate", "--noinput")
    enrolled = environment_in(stores, "brk", enrolled=True)
    plain = environment_in(stores, "plain", enrolled=False)
    server = {
        "MOLLIFIER_ENABLED": "1",
        "MOLLIFIER_TRIP_THRESHOLD": "100000",  # never tripped by rate: only the breaker buffers
        "DB_BREAKER_COOLDOWN_MS": "500",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path),
    }
    answered: list[str] = []
    refused = 0  # 503s of triggers: one may still have been written (sent before Postgres froze)
    with running_server(workers=WORKERS, **stores, **server) as base_url:
        client = Client(base_url)
        # Concurrent calls, so that every worker holds a connection and has seen both keys (a worker
        # authenticates a key it has seen while Postgres cannot be asked, not one it never has).
        with ThreadPoolExecutor(4 * WORKERS) as pool:
            warm = list(pool.map(client.trigger, [enrolled, plain] * 8 * WORKERS))
        assert {(status, buffered) for status, _, buffered in warm} == {(200, False)}
        answered += [run_id for _, run_id, _ in warm]
        assert metric(base_url, "mollifier_postgres_breaker_state") == 0

        for outage, phase in ((pg.paused, "hung"), (_stopped(pg), "refused")):
            with outage():
                triggers = [client.trigger(enrolled) for _ in range(12)]
                # At most one trigger per worker meets the outage itself (503, retried by the SDK);
                # every other is buffered at once.
                assert {status for status, _, _ in triggers} <= {200, 503}, phase
                assert sum(status == 503 for status, _, _ in triggers) <= WORKERS, (phase, triggers)
                buffered = [run_id for status, run_id, was_buffered in triggers if status == 200 and was_buffered]
                assert len(buffered) >= 12 - WORKERS, (phase, triggers)
                answered += [run_id for status, run_id, _ in triggers if status == 200]
                refused += sum(status == 503 for status, _, _ in triggers)
                # A buffered run is read from the buffer; a row cannot be, and answers 503 at once.
                status, data, _ = client.call("GET", f"/api/v3/runs/{buffered[0]}", enrolled)
                assert (status, data["id"]) == (200, buffered[0]), phase
                assert client.call("GET", f"/api/v3/runs/{answered[0]}", enrolled)[0] == 503, phase
                # Not enrolled: nothing to buffer into. 503, and the SDK retries.
                assert client.trigger(plain)[0] == 503, phase
                refused += 1
                assert client.call("GET", "/healthz", plain)[0] == 200
                assert metric(base_url, "mollifier_postgres_breaker_state") in (1, 2), phase
            # The probe closes each worker's breaker once Postgres answers: triggers pass through again.
            wait_until(lambda: metric(base_url, "mollifier_postgres_breaker_state") == 0, timeout=30)
            status, run_id, buffered = client.trigger(plain)
            assert (status, buffered) == (200, False), phase
            answered.append(run_id)

        assert metric(base_url, "mollifier_postgres_breaker_opens_total") >= 2
        assert metric(base_url, "mollifier_postgres_breaker_rejected_total") >= 1

    drainer = start_manage("mollifier_drain", "--once", **stores)
    finish(drainer, timeout=120)
    with psycopg.connect(pg.url) as conn:
        rows = [f"run_{row[0]}" for row in conn.execute("SELECT id FROM runs_taskrun")]
    assert len(rows) == len(set(rows))
    assert set(answered) <= set(rows)  # every answered run written, exactly once
    assert len(rows) <= len(answered) + refused


def _stopped(pg: PostgresProcess):
    from contextlib import contextmanager

    @contextmanager
    def stopped():
        pg.stop()
        try:
            yield
        finally:
            pg.start()

    return stopped


def test_the_official_sdk_triggers_and_reads_while_postgres_is_frozen(node, tmp_path):
    """SDK 4.8.3 (tests/e2e) against the real server while its Postgres is paused: every trigger
    resolves to a run (the SDK retries the one 503 a worker answers as it meets the outage), every run
    reads back; once Postgres runs again the drainer writes each exactly once."""
    pg = PostgresProcess(tmp_path / "pg")
    try:
        stores = pg.server_env()
        manage(stores, "migrate", "--noinput")
        key = environment_in(stores, "sdk", enrolled=True)
        server = {"MOLLIFIER_ENABLED": "1", "MOLLIFIER_TRIP_THRESHOLD": "100000"}
        # One worker, which has seen the key: a worker authenticates only keys it has seen while
        # Postgres cannot be asked, and which worker takes a call is up to the kernel.
        with running_server(workers=WORKERS, **stores, **server) as base_url:
            client = Client(base_url)
            warm = [client.trigger(key) for _ in range(4)]
            assert {status for status, _, _ in warm} == {200}
            with pg.paused():
                result = sdk_script(node, "sdk_postgres_out.mjs", base_url=base_url, key=key)
        assert result.returncode == 0, result.stdout + result.stderr
        ids = json.loads(result.stdout.strip().splitlines()[-1])["ids"]
        finish(start_manage("mollifier_drain", "--once", **stores), timeout=120)
        with psycopg.connect(pg.url) as conn:
            rows = {f"run_{row[0]}" for row in conn.execute("SELECT id FROM runs_taskrun")}
        answered = set(ids) | {run_id for _, run_id, _ in warm}
        assert answered <= rows and len(answered) == len(ids) + len(warm)  # each answered run written once
        # A trigger that met the freeze (503, retried by the SDK) may still have been written when
        # Postgres resumed: at most one per worker.
        assert len(rows) <= len(answered) + WORKERS
    finally:
        pg.cleanup()
