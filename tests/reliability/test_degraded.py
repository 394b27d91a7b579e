"""Degrade, don't stall: Redis, then Postgres, paused (SIGSTOP: connections accepted, nothing
answered) and resumed under the real server (gunicorn), SDK-shaped triggers and reads, and
drainers. Each store is a process of the test's own, so the shared ones are never frozen.

Correctness only (timing is `make bench`'s "degraded modes" figure): every request is answered,
every answered run exists exactly once, nothing is lost, reads never answer a false 404, and the
circuit breaker closes again.
"""

import http.client
import json
import re
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import psycopg
import pytest

from mollifier import keys
from runs.models import TaskRun
from tests.conftest import enroll
from tests.factories import EnvironmentFactory
from tests.faults import PostgresProcess, RedisProcess
from tests.server import environment_in, finish, manage, running_server, start_manage, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

# The headers SDK 4.8.3 sends with every call (/work/shared/API.md §2), a fresh request key per call.
SDK_HEADERS = {
    "content-type": "application/json",
    "trigger-version": "4.8.3",
    "x-trigger-api-version": "2025-07-16",
    "x-trigger-realtime-streams-version": "v2",
    "x-trigger-source": "sdk",
    "accept": "*/*",
    "user-agent": "node",
}
# Shorter than gunicorn's 30 s worker timeout: a worker stuck until gunicorn kills it is a failure.
CLIENT_TIMEOUT = 20


@dataclass
class Answer:
    phase: str
    kind: str  # trigger | read
    status: int  # 0: no HTTP answer
    run_id: str = ""
    buffered: bool = False


@dataclass
class Load:
    """Threads that trigger (SDK-shaped) and read back what was answered, until stopped."""

    base_url: str
    key: str
    threads: int = 3
    phase: str = "before"
    answers: list[Answer] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    last_phase: dict[int, str] = field(default_factory=dict)  # thread → phase of its last answered trigger

    def start(self):
        self.workers = [threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(self.threads)]
        for worker in self.workers:
            worker.start()

    def finish(self):
        self.stop.set()
        for worker in self.workers:
            worker.join(CLIENT_TIMEOUT * 3)

    def _run(self, n: int):
        parts = urlsplit(self.base_url)
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=CLIENT_TIMEOUT)
        i = 0
        while not self.stop.is_set():
            i += 1
            body = {
                "payload": json.dumps({"json": {"n": n, "i": i}}),
                "options": {"payloadType": "application/super+json"},
            }
            phase = self.phase  # when the request starts
            status, data, headers = self._call(conn, "POST", "/api/v1/tasks/hello-world/trigger", body)
            run_id = json.loads(data)["id"] if status == 200 else ""
            self.answers.append(Answer(phase, "trigger", status, run_id, headers.get("x-mollifier") == "buffered"))
            self.last_phase[n] = phase
            if status == 0:
                conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=CLIENT_TIMEOUT)
            answered = [a.run_id for a in self.answers[-50:] if a.run_id]
            if answered:
                read_id, phase = answered[i % len(answered)], self.phase
                status, _, _ = self._call(conn, "GET", f"/api/v3/runs/{read_id}", None)
                self.answers.append(Answer(phase, "read", status, read_id))
                if status == 0:
                    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=CLIENT_TIMEOUT)
            time.sleep(0.02)

    def trigger_once(self) -> bool:
        """One trigger from the test's own thread, recorded like the others."""
        parts = urlsplit(self.base_url)
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=CLIENT_TIMEOUT)
        body = {"payload": "{}", "options": {"payloadType": "application/json"}}
        status, data, headers = self._call(conn, "POST", "/api/v1/tasks/hello-world/trigger", body)
        run_id = json.loads(data)["id"] if status == 200 else ""
        self.answers.append(Answer(self.phase, "trigger", status, run_id, headers.get("x-mollifier") == "buffered"))
        conn.close()
        return True

    def _call(self, conn, method, path, body):
        headers = {**SDK_HEADERS, "Authorization": f"Bearer {self.key}"}
        headers["x-trigger-request-idempotency-key"] = str(uuid.uuid4())
        try:
            conn.request(method, path, body=json.dumps(body).encode() if body is not None else None, headers=headers)
            response = conn.getresponse()
            return response.status, response.read(), {k.lower(): v for k, v in response.getheaders()}
        except (OSError, http.client.HTTPException):
            conn.close()
            return 0, b"", {}

    def of(self, kind: str, phase: str | None = None) -> list[Answer]:
        return [a for a in self.answers if a.kind == kind and (phase is None or a.phase == phase)]


def metric(base_url: str, name: str) -> float:
    with urllib_open(f"{base_url}/metrics") as response:
        text = response.read().decode()
    match = re.search(rf"^{name} ([0-9.e+-]+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else float("nan")


def urllib_open(url: str):
    import urllib.request

    return urllib.request.urlopen(url, timeout=10)


def test_redis_paused_under_triggers_reads_and_a_drainer(tmp_path):
    own_redis = RedisProcess()
    own_redis.start()
    environment = enroll(EnvironmentFactory())
    org = str(environment.organization_id)
    stores = {"REDIS_URL": own_redis.url}
    gate = {
        "MOLLIFIER_ENABLED": "1",
        "MOLLIFIER_TRIP_THRESHOLD": "10",
        "MOLLIFIER_TRIP_WINDOW_MS": "60000",
        "MOLLIFIER_HOLD_MS": "60000",
        "MOLLIFIER_REDIS_BREAKER_COOLDOWN_MS": "500",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path),
    }
    drainer = start_manage(
        "mollifier_drain", MOLLIFIER_DRAIN_LEASE_MS="3000", MOLLIFIER_DRAIN_BACKOFF_MAX_MS="1000", **stores
    )
    try:
        with running_server(**stores, **gate) as base_url:
            load = Load(base_url, environment.secret_key)
            load.start()
            wait_until(lambda: len([a for a in load.of("trigger") if a.buffered]) >= 10)
            with own_redis.paused():
                load.phase = "paused"  # requests that start from now on meet a Redis that does not answer
                wait_until(lambda: len(load.of("trigger", "paused")) >= 30, timeout=60)
                # Open (2), or half-open (1) while a background PING probes: Redis skipped.
                assert metric(base_url, "mollifier_redis_breaker_state") in (1, 2)
                # Triggers started while paused all end while it still is: one started then and
                # still waiting for a worker would otherwise meet the resumed Redis.
                load.phase = "resuming"
                wait_until(lambda: set(load.last_phase.values()) == {"resuming"}, timeout=60)
            load.phase = "after"
            wait_until(lambda: len([a for a in load.of("trigger", "after") if a.buffered]) >= 10, timeout=60)
            load.finish()
            # Every worker closes its breaker on its next call after the cooldown.
            wait_until(lambda: load.trigger_once() and breaker_closed(base_url), timeout=30)
            assert metric(base_url, "mollifier_redis_breaker_opens_total") >= 1
        wait_until(lambda: int(own_redis.client().hget(keys.stats(org), "buffered") or 0) == 0, timeout=120)
    finally:
        drainer.terminate()
        output = finish(drainer, timeout=60)
        own_redis.cleanup()

    triggers = load.of("trigger")
    assert {a.status for a in triggers} == {200}  # fail open: every trigger answered, none lost
    assert not [a for a in load.of("trigger", "paused") if a.buffered]  # straight to Postgres while paused
    answered = [a.run_id for a in triggers]
    assert len(answered) == len(set(answered))
    rows = list(TaskRun.objects.filter(environment=environment).values_list("id", flat=True))
    assert sorted(f"run_{row}" for row in rows) == sorted(answered)  # each answered run exactly once
    reads = load.of("read")
    assert {a.status for a in reads} <= {200, 503}  # never a false 404
    assert {a.status for a in load.of("read", "before")} == {200}
    assert "waiting for redis" in output


def breaker_closed(base_url: str) -> bool:
    return metric(base_url, "mollifier_redis_breaker_state") == 0


def test_postgres_paused_under_triggers_and_drainers(tmp_path):
    pg = PostgresProcess(tmp_path / "pg")
    try:
        _postgres_paused(pg)
    finally:
        pg.cleanup()


def _postgres_paused(pg: PostgresProcess):
    stores = pg.server_env()
    gate = {
        "MOLLIFIER_ENABLED": "1",
        "MOLLIFIER_TRIP_THRESHOLD": "5",
        "MOLLIFIER_TRIP_WINDOW_MS": "60000",
        "MOLLIFIER_HOLD_MS": "60000",
    }
    drain = {"MOLLIFIER_DRAIN_LEASE_MS": "1500", "MOLLIFIER_DRAIN_BACKOFF_MAX_MS": "1000", **stores}
    manage(stores, "migrate", "--noinput")
    key = environment_in(stores, "pgpause", enrolled=True)
    drainers = [start_manage("mollifier_drain", **drain) for _ in range(2)]
    try:
        with running_server(**stores, **gate) as base_url:
            load = Load(base_url, key)
            load.start()
            wait_until(lambda: len([a for a in load.of("trigger") if a.buffered]) >= 20)
            with pg.paused():
                paused_at = time.monotonic()
                load.phase = "paused"
                wait_until(lambda: len(load.of("trigger", "paused")) >= 15, timeout=90)
                # Past the drainers' leases while their writes hang, and past two of their waits (the
                # web tier's breaker answers the triggers at once, so they take no time of their own).
                time.sleep(max(2, 12 - (time.monotonic() - paused_at)))
            load.phase = "after"
            wait_until(lambda: len([a for a in load.of("trigger", "after") if a.status == 200]) >= 10, timeout=90)
            load.finish()
        wait_until(lambda: buffered_in_redis() == 0, timeout=120)
    finally:
        outputs = []
        for drainer in drainers:
            drainer.terminate()
            outputs.append(finish(drainer, timeout=60))

    triggers = load.of("trigger")
    assert 0 not in {a.status for a in triggers + load.of("read")}  # every request answered, no worker stuck
    assert {a.status for a in triggers} <= {200, 503}
    # Once a worker has met the pause, its breaker buffers the enrolled organisation's triggers.
    assert Counter(a.status for a in load.of("trigger", "paused") if a.buffered)[200] >= 10
    assert {a.status for a in load.of("read")} <= {200, 503}  # never a false 404
    answered = {a.run_id for a in triggers if a.status == 200}
    with psycopg.connect(pg.url) as conn:
        rows = [f"run_{row[0]}" for row in conn.execute("SELECT id FROM runs_taskrun")]
    assert len(rows) == len(set(rows))
    assert answered <= set(rows)  # nothing answered is lost
    # A 503 may still have committed (Postgres stopped between its commit and its answer): at most
    # one row per unanswered trigger, never a duplicate of an answered one.
    assert len(rows) <= len(answered) + len([a for a in triggers if a.status == 503])
    assert any("waiting for postgres" in output for output in outputs), outputs
    # Its backoff grew while Postgres was out (an empty round in between does not reset it).
    assert any("dependency=postgres failures=2" in output for output in outputs), outputs


def buffered_in_redis() -> int:
    """Runs waiting in the suite's Redis database (where the server and drainers of this test buffer)."""
    from mollifier import client as redis_client

    redis = redis_client.get()
    return sum(int(redis.hget(key, "buffered") or 0) for key in redis.scan_iter(match="mollifier:{o:*}:stats"))
