"""Stores failing under a real server: Redis stopped mid-burst (and restarted from its AOF), and
Postgres stopped under load. Each store here is a server the test starts and stops itself."""

import json
import subprocess
import time
import urllib.error
import urllib.request

import pytest
import redis

from mollifier import keys
from runs.models import KeyedBufferMarker, TaskRun
from tests.conftest import enroll
from tests.factories import EnvironmentFactory
from tests.faults import RedisProcess
from tests.server import running_server, start_manage

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def call(method: str, url: str, key: str, body: dict | None = None, timeout: float = 30):
    request = urllib.request.Request(
        url,
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.load(response), dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error), dict(error.headers)


def trigger(base_url: str, key: str, i, **options):
    return call(
        "POST",
        f"{base_url}/api/v1/tasks/hello-world/trigger",
        key,
        {"payload": json.dumps({"json": i}), "options": {"payloadType": "application/super+json", **options}},
    )


@pytest.fixture
def own_redis():
    store = RedisProcess()
    store.start()
    yield store
    store.cleanup()


def test_redis_down_mid_burst_fails_open_and_buffered_runs_survive_a_restart(own_redis):
    environment = enroll(EnvironmentFactory())
    key = environment.secret_key
    gate = {
        "REDIS_URL": own_redis.url,
        "MOLLIFIER_ENABLED": "1",
        "MOLLIFIER_TRIP_THRESHOLD": "5",
        "MOLLIFIER_TRIP_WINDOW_MS": "60000",
        "MOLLIFIER_HOLD_MS": "60000",
        # Redis refused, without the circuit breaker: each call tries it (the breaker's own
        # behaviour, which skips Redis for a cooldown, is test_degraded.py's).
        "MOLLIFIER_REDIS_BREAKER_FAILURES": "0",
    }
    with running_server(**gate) as base_url:
        first = [trigger(base_url, key, i) for i in range(9)] + [trigger(base_url, key, 9, idempotencyKey="b")]
        buffered = [body["id"] for status, body, headers in first if headers.get("x-mollifier") == "buffered"]
        direct = [body["id"] for status, body, headers in first if "x-mollifier" not in headers]
        assert len(buffered) == 5 and first[-1][1]["id"] in buffered
        assert KeyedBufferMarker.objects.filter(environment=environment).exists()  # made before the keyed one

        own_redis.kill()
        during = [trigger(base_url, key, i) for i in range(10)]
        assert {status for status, _, _ in during} == {200}  # fail open: straight to Postgres
        assert not [h for _, _, h in during if "x-mollifier" in h]
        # A key no row holds may be held by a buffered run (keyed runs wait there: the marker says
        # so), which cannot be asked now: 503 (retried).
        assert trigger(base_url, key, "keyed", idempotencyKey="k")[0] == 503
        assert call("GET", f"{base_url}/api/v3/runs/{direct[0]}", key)[0] == 200
        assert call("GET", f"{base_url}/api/v3/runs/{buffered[0]}", key)[0] == 503  # cannot be read now; retried

        own_redis.start()  # same folder: the AOF brings the buffer back
        assert (
            redis.Redis(port=own_redis.port).zcard(keys.listing(str(environment.organization_id), str(environment.pk)))
            == 5
        )
        after = trigger(base_url, key, "back")
        assert after[0] == 200 and after[2].get("x-mollifier") == "buffered"  # the gate resumed by itself
        assert call("GET", f"{base_url}/api/v3/runs/{buffered[0]}", key)[1]["status"] == "QUEUED"

        drainer = start_manage(
            "mollifier_drain", "--once", REDIS_URL=own_redis.url, TRIGGER_KEYED_MARKER_KEEP_SECONDS="0"
        )
        assert drainer.wait(60) == 0
        # Nothing waits in the buffer now: the drain deleted the marker, and with Redis down again
        # a keyed trigger can only collide with rows, which Postgres checks. It is written.
        assert not KeyedBufferMarker.objects.filter(environment=environment).exists()
        own_redis.kill()
        keyed = trigger(base_url, key, "keyed", idempotencyKey="k")
        again = trigger(base_url, key, "keyed again", idempotencyKey="k")
        assert keyed[0] == 200 and keyed[1]["isCached"] is False
        assert again[0] == 200 and again[1] == {"id": keyed[1]["id"], "isCached": True}
    ids = {run.friendly_id for run in TaskRun.objects.filter(environment=environment)}
    assert set(buffered) | set(direct) | {after[1]["id"], keyed[1]["id"]} <= ids
    assert len(ids) == 10 + 10 + 1 + 1
    assert TaskRun.objects.get(id=keyed[1]["id"].removeprefix("run_")).idempotency_key == "k"


def test_postgres_down_answers_503_fast_and_the_drain_catches_up(tmp_path):
    """A Postgres of the test's own (pgserver): stopped under a running server, then started again."""
    from tests.server import ROOT
    from trigger_project.embedded import import_pgserver

    pgserver = import_pgserver()  # quiet: no XDG warning, no INFO log at exit

    server = pgserver.get_server(tmp_path / "pg", cleanup_mode="stop")
    url = server.get_uri()
    env = {
        "DATABASE_URL": url,
        "DB_CONNECT_TIMEOUT": "1",
        "DB_BREAKER_COOLDOWN_MS": "500",
        "TRIGGER_AUTH_CACHE_SECONDS": "0",
        "MOLLIFIER_ENABLED": "1",
        "MOLLIFIER_TRIP_THRESHOLD": "3",
        "MOLLIFIER_TRIP_WINDOW_MS": "60000",
        "MOLLIFIER_HOLD_MS": "60000",
    }

    def manage(*args):
        return subprocess.run(
            [".venv/bin/python", "manage.py", *args],
            cwd=ROOT,
            env={**_env(), **env},
            capture_output=True,
            text=True,
            check=True,
        )

    manage("migrate", "--noinput")
    key = (
        manage("create_environment", "--org", "pgdown", "--project", "p", "--env", "prod")
        .stdout.strip()
        .splitlines()[-1]
    )
    manage(
        "shell",
        "-c",
        "from runs.models import Organization as O; o=O.objects.get(slug='pgdown'); o.feature_flags={'mollifierEnabled': True}; o.save()",
    )
    with running_server(**env) as base_url:
        assert trigger(base_url, key, 0)[0] == 200
        pgserver.pg_ctl(["-w", "-m", "immediate", "stop"], pgdata=server.pgdata, user=server.system_user)

        started = time.monotonic()
        status, body, _ = trigger(base_url, key, 1, timeout=30)
        assert status == 503 and "retry" in body["error"].lower()
        assert time.monotonic() - started < 15  # a clear answer, not a hang

        server.ensure_postgres_running()
        answers = [_as_the_sdk_retries(lambda i=i: trigger(base_url, key, i)) for i in range(2, 8)]
        assert {status for status, _, _ in answers} == {200}
        drainer = subprocess.run(
            [".venv/bin/python", "manage.py", "mollifier_drain", "--once", "--quiet"],
            cwd=ROOT,
            env={**_env(), **env},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert drainer.returncode == 0, drainer.stdout + drainer.stderr
        count = (
            manage("shell", "-c", "from runs.models import TaskRun; print(TaskRun.objects.count())")
            .stdout.strip()
            .splitlines()[-1]
        )
    assert int(count) == 7
    server.cleanup()


def _as_the_sdk_retries(call, within: float = 15):
    """``call()`` again while it answers 503 (as the SDK does): a web process skips Postgres until its
    breaker's probe finds it answering again, a cooldown at most."""
    deadline = time.monotonic() + within
    while (answer := call())[0] == 503 and time.monotonic() < deadline:
        time.sleep(0.2)
    return answer


def _env() -> dict:
    from tests.server import server_env

    return server_env()


def test_a_slow_postgres_answers_503_not_a_hang():
    """Postgres is up but the runs table is locked (a stand-in for a slow database)."""
    import psycopg

    from tests.server import database_url

    environment = EnvironmentFactory()
    key = environment.secret_key
    with running_server(DB_STATEMENT_TIMEOUT_MS="500") as base_url:
        assert trigger(base_url, key, 0)[0] == 200
        with psycopg.connect(database_url()) as locker:
            locker.execute("LOCK TABLE runs_taskrun IN ACCESS EXCLUSIVE MODE")
            status, body, _ = trigger(base_url, key, 1, timeout=30)
            assert status == 503 and "retry" in body["error"].lower()
        assert trigger(base_url, key, 2)[0] == 200  # the lock is gone: back to normal
    assert TaskRun.objects.filter(environment=environment).count() == 2
