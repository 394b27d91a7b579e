"""The start-up warning about a Redis that evicts keys (mollifier/checks.py), against redis-servers
the tests start with the policy under test, and a Redis that is down, hung or refuses CONFIG."""

import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import redis
from django.core.checks import run_checks
from redis.cluster import RedisCluster

from mollifier.checks import maxmemory_policies
from tests.redis_cluster import server_binary
from tests.server import ROOT, free_port, server_env, start_manage


@contextmanager
def redis_server(*args: str) -> Iterator[str]:
    """A throwaway redis-server with extra arguments; yields its URL."""
    workdir = tempfile.mkdtemp(prefix="mollifier-policy-")
    port = free_port()
    process = subprocess.Popen(
        [server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--dir", workdir, "--save", "", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        probe = redis.Redis(port=port, socket_timeout=1)
        for _ in range(200):
            try:
                probe.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        else:
            raise RuntimeError("redis-server did not start")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)


def use_redis(settings, url: str) -> None:
    """Point the mollifier (only) at ``url``."""
    settings.CACHES = {**settings.CACHES, "probed": {**settings.CACHES["default"], "LOCATION": url}}
    settings.MOLLIFIER = {**settings.MOLLIFIER, "REDIS_ALIAS": "probed", "REDIS_CLUSTER_URL": ""}


def mollifier_check_ids() -> list[str]:
    return [message.id for message in run_checks(tags=["mollifier"])]


def test_an_evicting_redis_is_warned_about(settings):
    with redis_server("--maxmemory-policy", "allkeys-lru") as url:
        use_redis(settings, url)
        [message] = run_checks(tags=["mollifier"])
    assert message.id == "mollifier.W001"
    assert "allkeys-lru" in message.msg and "noeviction" in message.hint


def test_volatile_policies_are_warned_about_too(settings):
    """Entries have no TTL, but claims and idempotency keys do: evicting those breaks exactly-once."""
    with redis_server("--maxmemory-policy", "volatile-lru") as url:
        use_redis(settings, url)
        assert mollifier_check_ids() == ["mollifier.W001"]


def test_noeviction_passes_silently(settings):
    with redis_server("--maxmemory-policy", "noeviction") as url:
        use_redis(settings, url)
        assert mollifier_check_ids() == []


def test_a_redis_that_refuses_config_cannot_be_checked_and_says_so(settings):
    """Managed Redis services often rename or forbid CONFIG."""
    with redis_server("--maxmemory-policy", "allkeys-lru", "--rename-command", "CONFIG", "") as url:
        use_redis(settings, url)
        [message] = run_checks(tags=["mollifier"])
    assert message.id == "mollifier.I001"
    assert "Could not read" in message.msg


def test_a_redis_that_is_down_is_reported_not_raised(dead_redis):
    assert mollifier_check_ids() == ["mollifier.I001"]


def test_a_hung_redis_does_not_hang_the_check(settings):
    """Connections are accepted (the kernel's backlog) and nothing ever answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        use_redis(settings, f"redis://127.0.0.1:{listener.getsockname()[1]}/0")
        readings = []
        probe = threading.Thread(target=lambda: readings.extend(maxmemory_policies()), daemon=True)
        probe.start()
        probe.join(timeout=30)  # a bound so that a regression fails instead of hanging the suite
    assert not probe.is_alive(), "the check waited on a Redis that never answers"
    [reading] = readings
    assert reading.policy is None and "Timeout" in reading.error


def test_every_cluster_primary_is_checked(settings, cluster_url):
    settings.MOLLIFIER = {**settings.MOLLIFIER, "REDIS_CLUSTER_URL": cluster_url}
    assert mollifier_check_ids() == []
    node = RedisCluster.from_url(cluster_url).get_primaries()[1]
    evicting = redis.Redis(host=node.host, port=node.port)
    evicting.config_set("maxmemory-policy", "allkeys-lfu")
    try:
        [message] = run_checks(tags=["mollifier"])
    finally:
        evicting.config_set("maxmemory-policy", "noeviction")  # the cluster is shared by the session
    assert message.id == "mollifier.W001" and f":{node.port}" in message.msg


def test_a_web_worker_logs_the_warning_at_start():
    """gunicorn loads trigger_project.wsgi in each worker; loading it is what a worker does at start."""
    with redis_server("--maxmemory-policy", "allkeys-lru") as url:
        started = subprocess.run(
            [sys.executable, "-c", "import trigger_project.wsgi"],
            cwd=ROOT,
            env=server_env(REDIS_URL=url),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert started.returncode == 0, started.stderr
    assert "mollifier.redis.evicting" in started.stderr and "allkeys-lru" in started.stderr


@pytest.mark.django_db(transaction=True)
def test_the_drainer_warns_at_start_and_drains_anyway():
    with redis_server("--maxmemory-policy", "allkeys-lru") as url:
        drainer = start_manage("mollifier_drain", "--once", REDIS_URL=url)
        output, _ = drainer.communicate(timeout=60)
    assert drainer.returncode == 0, output
    assert "mollifier.W001" in output


@pytest.mark.django_db(transaction=True)
def test_the_drainer_is_quiet_on_noeviction():
    with redis_server("--maxmemory-policy", "noeviction") as url:
        drainer = start_manage("mollifier_drain", "--once", REDIS_URL=url)
        output, _ = drainer.communicate(timeout=60)
    assert drainer.returncode == 0, output
    assert "mollifier.W001" not in output and "mollifier.I001" not in output
