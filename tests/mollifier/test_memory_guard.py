"""The global memory guard (mollifier/memory.py) against a redis-server of the test's own with a
small maxmemory and noeviction: near the limit new entries are refused and triggers pass through;
buffered entries are never evicted; once memory is freed the gate buffers again."""

import pytest

from mollifier import client as redis_client
from mollifier import memory, metrics
from mollifier.drainer import Drainer
from runs.models import TaskRun
from tests.conftest import client_for, enroll
from tests.factories import EnvironmentFactory
from tests.faults import RedisProcess
from tests.helpers import trigger

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def fresh_reading():
    memory.reset()
    yield
    memory.reset()


def use_redis(settings, url: str) -> None:
    settings.CACHES = {**settings.CACHES, "default": {**settings.CACHES["default"], "LOCATION": url}}
    settings.MOLLIFIER = {
        **settings.MOLLIFIER,
        "REDIS_CLUSTER_URL": "",
        "REDIS_MEMORY_CHECK_MS": 0,  # read before every accept: no waiting in the test
        "REDIS_MEMORY_LIMIT_PERCENT": 80,
    }


@pytest.fixture
def small_redis(settings):
    store = RedisProcess("--maxmemory", "4mb", "--maxmemory-policy", "noeviction")
    store.start()
    use_redis(settings, store.url)
    yield store
    store.cleanup()


def fill_to(store: RedisProcess, percent: int) -> int:
    """Write filler keys until Redis uses ``percent`` of its maxmemory; returns how many."""
    raw = store.client()
    count = 0
    while True:
        info = raw.info("memory")
        if info["used_memory"] * 100 >= info["maxmemory"] * percent:
            return count
        raw.set(f"filler:{count}", b"x" * 50_000)
        count += 1


def decisions(reason: str) -> float:
    return metrics.GATE_DECISIONS.labels(decision="pass_through", reason=reason)._value.get()


def test_near_maxmemory_new_entries_pass_through_and_buffered_ones_stay(small_redis, mollifier_on):
    environment = enroll(EnvironmentFactory())
    api = client_for(environment)
    first = [trigger(api, payload=i) for i in range(7)]
    buffered = [r.json()["id"] for r in first if r.headers.get("x-mollifier") == "buffered"]
    assert len(buffered) == 2

    fillers = fill_to(small_redis, 85)
    refused_before = decisions("redis_memory")
    near = [trigger(api, payload=i) for i in range(5)]

    assert {r.status_code for r in near} == {200}
    assert not [r for r in near if "x-mollifier" in r.headers]  # straight to Postgres
    assert decisions("redis_memory") == refused_before + 5
    assert memory.near_full(redis_client.get())
    for run_id in buffered:  # never evicted, still readable
        assert api.get(f"/api/v3/runs/{run_id}").json()["status"] == "QUEUED"

    small_redis.client().delete(*[f"filler:{i}" for i in range(fillers)])
    again = trigger(api, payload="again")
    assert again.headers.get("x-mollifier") == "buffered"  # the gate buffers again by itself

    Drainer().run(once=True)
    ids = list(TaskRun.objects.filter(environment=environment).values_list("id", flat=True))
    assert len(ids) == len(set(ids)) == 7 + 5 + 1


def test_without_maxmemory_the_guard_stays_off(settings):
    store = RedisProcess()
    store.start()
    try:
        use_redis(settings, store.url)
        reading = memory.read(redis_client.get())
        assert reading.used_bytes > 0 and reading.max_bytes == 0
        assert not memory.near_full(redis_client.get())
    finally:
        store.cleanup()


def test_a_redis_that_refuses_info_leaves_the_guard_off(settings):
    store = RedisProcess("--maxmemory", "4mb", "--maxmemory-policy", "noeviction")
    store.start()
    try:
        store.client().execute_command("ACL", "SETUSER", "app", "on", ">secret", "~*", "+@all", "-info")
        use_redis(settings, f"redis://app:secret@127.0.0.1:{store.port}/0")
        fill_to(store, 90)
        assert not memory.near_full(redis_client.get())  # unknown: logged, guard off
    finally:
        store.cleanup()


def test_the_reading_covers_single_node_and_cluster(store):
    reading = memory.read(store)
    assert reading.used_bytes > 0 and reading.ratio >= 0
