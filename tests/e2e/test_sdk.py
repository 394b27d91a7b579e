"""The official trigger.dev SDK (pinned in tests/e2e/package.json) against the real server process."""

import shutil
import subprocess
from pathlib import Path

import pytest

from runs.models import TaskRun
from tests.factories import EnvironmentFactory
from tests.server import running_server

E2E_DIR = Path(__file__).resolve().parent

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def node():
    node = shutil.which("node")
    if node is None or not (E2E_DIR / "node_modules" / "@trigger.dev" / "sdk").exists():
        pytest.skip("Node.js or the SDK packages are missing: run `make test` (it runs npm ci in tests/e2e)")
    return node


def test_official_sdk_against_the_real_server(node):
    environment = EnvironmentFactory()
    with running_server() as base_url:
        result = subprocess.run(
            [node, "sdk_e2e.mjs"],
            cwd=E2E_DIR,
            env={"PATH": "/usr/bin:/bin", "TRIGGER_API_URL": base_url, "TRIGGER_SECRET_KEY": environment.secret_key},
            capture_output=True,
            text=True,
            timeout=120,
        )
    print(result.stdout, result.stderr)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "10 passed, 0 failed" in result.stdout
    assert TaskRun.objects.filter(environment=environment).count() >= 10


def test_official_sdk_sees_buffered_runs_everywhere(node):
    """runs.list shows buffered and materialised runs together while a drain runs; cancel, tags,
    metadata and reschedule on buffered runs survive materialisation."""
    import json

    from mollifier import buffer
    from tests.conftest import enroll
    from tests.server import start_manage

    environment = enroll(EnvironmentFactory())
    run_env = {"PATH": "/usr/bin:/bin", "TRIGGER_SECRET_KEY": environment.secret_key}
    gate = {
        "MOLLIFIER_ENABLED": "1",
        "MOLLIFIER_TRIP_THRESHOLD": "3",
        "MOLLIFIER_TRIP_WINDOW_MS": "60000",
        "MOLLIFIER_HOLD_MS": "60000",
        "TRIGGER_AUTH_CACHE_SECONDS": "0",
    }
    with running_server(**gate) as base_url:
        drainer = start_manage("mollifier_drain", MOLLIFIER_DRAIN_MAX_ROWS_PER_SEC="5")  # slow: the walk races it
        try:
            mutate = subprocess.run(
                [node, "sdk_buffered.mjs", "mutate"],
                cwd=E2E_DIR,
                env={**run_env, "TRIGGER_API_URL": base_url},
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert mutate.returncode == 0, mutate.stdout + mutate.stderr
            state = json.loads(mutate.stdout.strip().splitlines()[-1])
            assert buffer.buffered_count(str(environment.organization_id)) > 0  # the walk ran mid-drain
        finally:
            drainer.terminate()
            drainer.wait(30)
        finish = start_manage("mollifier_drain", "--once", MOLLIFIER_DRAIN_MAX_ROWS_PER_SEC="1000")
        assert finish.wait(120) == 0
        verify = subprocess.run(
            [node, "sdk_buffered.mjs", "verify", json.dumps(state)],
            cwd=E2E_DIR,
            env={**run_env, "TRIGGER_API_URL": base_url},
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert buffer.buffered_count(str(environment.organization_id)) == 0
    assert TaskRun.objects.filter(environment=environment).count() == 41
