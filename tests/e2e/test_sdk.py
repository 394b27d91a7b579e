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
