"""The official trigger.dev SDK (pinned in tests/e2e/package.json) against the real server process."""

import json
import subprocess
from pathlib import Path

import pytest

from runs.models import TaskRun
from tests.factories import EnvironmentFactory
from tests.server import running_server

E2E_DIR = Path(__file__).resolve().parent

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def sdk_script(node: str, script: str, *args: str, base_url: str, key: str, timeout: int = 120):
    """Run ``tests/e2e/<script>`` with the SDK pointed at ``base_url`` and ``key``; its process."""
    return subprocess.run(
        [node, script, *args],
        cwd=E2E_DIR,
        env={"PATH": "/usr/bin:/bin", "TRIGGER_API_URL": base_url, "TRIGGER_SECRET_KEY": key},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_official_sdk_against_the_real_server(node):
    environment = EnvironmentFactory()
    with running_server() as base_url:
        result = sdk_script(node, "sdk_e2e.mjs", base_url=base_url, key=environment.secret_key)
    print(result.stdout, result.stderr)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "11 passed, 0 failed" in result.stdout
    assert TaskRun.objects.filter(environment=environment).count() >= 10


@pytest.mark.parametrize("store_rows", ["0", "1"])
def test_official_sdk_sees_buffered_runs_everywhere(node, store_rows):
    """runs.list shows buffered and materialised runs together while a drain runs; cancel, tags,
    metadata and reschedule on buffered runs survive materialisation. Also with each run's row and
    payload stored for the drain (MOLLIFIER_STORE_ROWS): changed runs' rows are built again."""
    import json

    from mollifier import buffer, keys
    from mollifier.client import get as redis_client
    from tests.conftest import enroll
    from tests.server import start_manage

    environment = enroll(EnvironmentFactory())
    gate = {
        "MOLLIFIER_ENABLED": "1",
        "MOLLIFIER_TRIP_THRESHOLD": "3",
        "MOLLIFIER_TRIP_WINDOW_MS": "60000",
        "MOLLIFIER_HOLD_MS": "60000",
        "TRIGGER_AUTH_CACHE_SECONDS": "0",
        "MOLLIFIER_STORE_ROWS": store_rows,
    }
    with running_server(**gate) as base_url:
        drainer = start_manage("mollifier_drain", MOLLIFIER_DRAIN_MAX_ROWS_PER_SEC="5")  # slow: the walk races it
        try:
            mutate = sdk_script(node, "sdk_buffered.mjs", "mutate", base_url=base_url, key=environment.secret_key)
            assert mutate.returncode == 0, mutate.stdout + mutate.stderr
            state = json.loads(mutate.stdout.strip().splitlines()[-1])
            assert buffer.buffered_count(str(environment.organization_id)) > 0  # the walk ran mid-drain
            stored = list(redis_client().scan_iter(match=keys.row(str(environment.organization_id), "*")))
            assert bool(stored) == (store_rows == "1")
        finally:
            drainer.terminate()
            drainer.wait(30)
        finish = start_manage("mollifier_drain", "--once", MOLLIFIER_DRAIN_MAX_ROWS_PER_SEC="1000")
        assert finish.wait(120) == 0
        verify = sdk_script(
            node, "sdk_buffered.mjs", "verify", json.dumps(state), base_url=base_url, key=environment.secret_key
        )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert buffer.buffered_count(str(environment.organization_id)) == 0
    assert TaskRun.objects.filter(environment=environment).count() == 41


def _packets_script(node, base_url: str, key: str, *args: str) -> dict:
    result = sdk_script(node, "sdk_packets.mjs", *args, base_url=base_url, key=key, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def _assert_packet_rows(environment, count: int) -> None:
    from runs.models import Packet

    rows = TaskRun.objects.filter(environment=environment, task_identifier="big")
    assert rows.count() == count
    assert set(rows.values_list("payload_type", flat=True)) == {"application/store"}
    paths = set(rows.values_list("payload", flat=True))
    assert all(path.startswith(f"env_{environment.pk}/trigger/packet_") for path in paths)
    assert set(Packet.objects.filter(environment=environment, path__in=paths).values_list("path", flat=True)) == paths


def test_official_sdk_offloads_large_payloads_directly(node, packets_root):
    """300 KiB payloads (object and text) by trigger, tasks.batchTrigger and batch.trigger, written
    straight to Postgres: each retrieved intact, then again."""
    environment = EnvironmentFactory()
    with running_server() as base_url:
        state = _packets_script(node, base_url, environment.secret_key, "trigger")
        _packets_script(node, base_url, environment.secret_key, "verify", json.dumps(state))
    _assert_packet_rows(environment, 7)
    assert len(list(packets_root.glob(f"env_{environment.pk}/**/payload.*"))) == 8  # and the SDK's own export


def test_official_sdk_offloads_large_payloads_while_buffered(node):
    """The same with a gate that trips after one trigger: every later run, batch items too, waits in
    the buffer holding only its packet's path, retrieves intact there, and again once drained."""
    from mollifier import buffer
    from tests.conftest import enroll
    from tests.server import start_manage

    environment = enroll(EnvironmentFactory())
    org = str(environment.organization_id)
    gate = {
        "MOLLIFIER_ENABLED": "1",
        "MOLLIFIER_TRIP_THRESHOLD": "1",
        "MOLLIFIER_TRIP_WINDOW_MS": "60000",
        "MOLLIFIER_HOLD_MS": "60000",
        "TRIGGER_AUTH_CACHE_SECONDS": "0",
    }
    with running_server(**gate) as base_url:
        state = _packets_script(node, base_url, environment.secret_key, "trigger")
        scan = buffer.listing(org_id=org, env_id=str(environment.pk), newest_first=True, limit=100)
        waiting = scan.entries
        assert len(waiting) == 6 and scan.exhausted  # all but the first trigger
        for entry in waiting:
            assert entry.snapshot["payload_type"] == "application/store"
            assert len(entry.raw_snapshot or json.dumps(entry.snapshot)) < 2_000  # the path, not 300 KiB
        drainer = start_manage("mollifier_drain", "--once", MOLLIFIER_DRAIN_MAX_ROWS_PER_SEC="1000")
        assert drainer.wait(120) == 0
        assert buffer.buffered_count(org) == 0
        _packets_script(node, base_url, environment.secret_key, "verify", json.dumps(state))
    _assert_packet_rows(environment, 7)


def test_official_sdk_offloads_large_payloads_to_s3(node):
    """The same SDK calls with the packet store on S3 (moto's S3 server on loopback)."""
    from tests import s3

    environment = EnvironmentFactory()
    with s3.s3_server() as endpoint:
        bucket = s3.new_bucket(endpoint)
        with running_server(**s3.server_env(endpoint, bucket, prefix="packets")) as base_url:
            _packets_script(node, base_url, environment.secret_key, "trigger")
        stored = s3.keys(endpoint, bucket)
    _assert_packet_rows(environment, 7)
    assert len(stored) == 8 and all(key.startswith(f"packets/env_{environment.pk}/") for key in stored)
