"""Walking ``GET /api/v1/runs`` page by page sees every run exactly once: while drainers move runs
from the buffer to Postgres, across bursts that share one millisecond, and through filters that
reject long stretches of the buffer."""

import random
import signal
import time
from datetime import datetime

import pytest

from runs.models import TaskRun
from tests.buffering import fill_buffer
from tests.conftest import client_for, enroll
from tests.factories import EnvironmentFactory, TaskRunFactory
from tests.server import finish, start_manage, wait_until

pytestmark = pytest.mark.django_db(transaction=True)


def walk(api, query: str = "", page_size: int = 25, sizes=None) -> tuple[list[str], list[int]]:
    """Every page of a listing: the ids in order and the page lengths."""
    seen, lengths, after = [], [], None
    while True:
        size = random.choice(sizes) if sizes else page_size
        url = f"/api/v1/runs?page%5Bsize%5D={size}{query}" + (f"&page%5Bafter%5D={after}" if after else "")
        body = api.get(url).json()
        seen += [run["id"] for run in body["data"]]
        lengths.append(len(body["data"]))
        after = body["pagination"].get("next")
        if not after:
            return seen, lengths


def test_a_walk_while_a_drainer_runs_sees_each_run_once():
    environment = enroll(EnvironmentFactory())
    written = [run.friendly_id for run in TaskRunFactory.create_batch(40, environment=environment)]
    buffered = fill_buffer(environment, 1500) + fill_buffer(environment, 700, task="other")  # two bursts
    api = client_for(environment)
    drainer = start_manage("mollifier_drain", MOLLIFIER_DRAIN_MAX_ROWS_PER_SEC="400", MOLLIFIER_DRAIN_BATCH_SIZE="50")
    try:
        wait_until(lambda: TaskRun.objects.count() > 100)
        walks = [walk(api, sizes=[1, 7, 25, 100]) for _ in range(3)]
        filtered = walk(api, query="&filter%5BtaskIdentifier%5D=other", sizes=[3, 50])
    finally:
        drainer.send_signal(signal.SIGTERM)
        finish(drainer)

    everything = sorted(written + buffered)
    for seen, lengths in walks:
        assert sorted(seen) == everything  # each run once: none missed, none twice
        assert 0 not in lengths[:-1]  # no empty page while more follow
    assert sorted(filtered[0]) == sorted(buffered[1500:])


def test_a_burst_larger_than_a_scan_in_one_millisecond_pages_through_once(enrolled):
    run_ids = fill_buffer(enrolled, 1300)  # one trigger time: ties broken by run id
    api = client_for(enrolled)

    seen, lengths = walk(api, page_size=100)

    assert seen == sorted(run_ids, reverse=True)
    assert lengths == [100] * 13


def test_a_filter_that_rejects_a_long_stretch_of_the_buffer_still_fills_the_first_page(enrolled):
    wanted = fill_buffer(enrolled, 3, task="wanted")
    fill_buffer(enrolled, 1200, task="noise")  # newer than the wanted ones
    api = client_for(enrolled)

    seen, lengths = walk(api, query="&filter%5BtaskIdentifier%5D=wanted", page_size=10)

    assert sorted(seen) == sorted(wanted) and lengths == [3]


def test_a_created_at_window_starts_at_its_edge(enrolled):
    older = fill_buffer(enrolled, 5)
    time.sleep(0.005)  # the next burst is at least a millisecond later
    newer = fill_buffer(enrolled, 600)
    api = client_for(enrolled)
    edge = datetime.fromisoformat(api.get(f"/api/v3/runs/{older[0]}").json()["createdAt"].replace("Z", "+00:00"))

    seen, lengths = walk(api, query=f"&filter%5BcreatedAt%5D%5Bto%5D={int(edge.timestamp() * 1000)}", page_size=50)

    assert sorted(seen) == sorted(older) and lengths == [5]
    assert not set(seen) & set(newer)
