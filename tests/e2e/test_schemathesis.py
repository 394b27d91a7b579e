"""Property-based fuzzing of the whole API (Schemathesis, from the OpenAPI schema drf-spectacular
serves, with hostile values mixed into the bodies by tests/e2e/schemathesis_hooks.py) against the
live server: no 5xx, and every response matches the schema."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mollifier import buffer, keys
from mollifier.client import get as redis_client
from runs.models import RunStatus, TaskRun
from tests.conftest import enroll
from tests.factories import EnvironmentFactory
from tests.server import ROOT, running_server

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@pytest.mark.parametrize("store", ["direct", "buffered"])
def test_fuzzing_the_live_api_finds_no_server_error_and_no_schema_violation(tmp_path, store):
    """Twice: every run written directly (the mollifier off), and every trigger buffered (the
    environment's gate held tripped for the whole run)."""
    environment = enroll(EnvironmentFactory())
    schemathesis = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    assert schemathesis, "schemathesis is a dev dependency"
    gate = {
        "MOLLIFIER_ENABLED": "1" if store == "buffered" else "0",
        "MOLLIFIER_TRIP_THRESHOLD": "1",
        "MOLLIFIER_TRIP_WINDOW_MS": "60000",
        "MOLLIFIER_HOLD_MS": "600000",
    }
    if store == "buffered":
        tripped = keys.tripped(str(environment.organization_id), str(environment.pk))
        redis_client().set(tripped, "1", px=600_000)
    with running_server(**gate) as base_url:
        result = subprocess.run(
            [
                schemathesis,
                "run",
                f"{base_url}/api/schema",
                "--header",
                f"Authorization: Bearer {environment.secret_key}",
                "--checks",
                "not_a_server_error,response_schema_conformance,content_type_conformance",
                "--max-examples",
                "25",
                "--seed",
                "20261127",
                # One worker: CPython 3.11.7's ast.parse is not thread-safe ("AST constructor recursion
                # depth mismatch"), and Hypothesis parses lambdas' source while generating cases.
                "--workers",
                "1",
                "--phases",
                "examples,coverage,fuzzing",
                # A time budget per store keeps `make test` well under its ten minutes on a slow CI
                # machine; `SCHEMATHESIS_MAX_TIME=300 make test` fuzzes longer.
                "--max-time",
                os.environ.get("SCHEMATHESIS_MAX_TIME", "20"),
                "--generation-allow-x00",
                "true",
                # Schemathesis cannot write NDJSON bodies; that endpoint is covered by test_bad_input and the SDK tests.
                "--exclude-path",
                "/api/v3/batches/{batch_id}/items",
                "--report",
                "junit",
                "--report-dir",
                str(tmp_path),
                "--no-color",
            ],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=tmp_path,  # its example cache lands there, not in the repository
            # Hostile values mixed into the generated bodies (tests/e2e/schemathesis_hooks.py).
            env={
                **os.environ,
                "SCHEMATHESIS_HOOKS": "tests.e2e.schemathesis_hooks",
                "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            },
        )
    print(result.stdout[-6000:], result.stderr[-2000:])
    assert result.returncode == 0, result.stdout[-6000:]
    assert not TaskRun.objects.filter(environment=environment, status=RunStatus.SYSTEM_FAILURE).exists()
    if store == "buffered":
        assert buffer.buffered_count(str(environment.organization_id)) > 0  # the fuzzed triggers were buffered
