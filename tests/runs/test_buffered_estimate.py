"""A buffered run says when it will be written (issue 17): its place in its environment's queue and
the drain's pace, in a key the SDK drops; in the admin's run page; per environment on the dashboard.
A run already in Postgres pays nothing for it."""

from datetime import datetime

import pytest
from django.contrib.auth.models import User
from django.test import Client

from mollifier import buffer, keys, priority, rate
from mollifier.client import get as redis_client
from mollifier.clock import now_ms
from runs.models import RuntimeEnvironment, TaskRun
from tests.buffering import fill_buffer
from tests.conftest import client_for
from tests.factories import EnvironmentFactory
from tests.helpers import trigger
from tests.mollifier.test_gate import watch_redis

pytestmark = pytest.mark.django_db

RATE = 1000  # rows/s: rounds of 50


@pytest.fixture
def fixed_rate(settings):
    settings.MOLLIFIER = {
        **settings.MOLLIFIER,
        "DRAIN_RATE_MODE": "fixed",
        "DRAIN_MAX_ROWS_PER_SEC": RATE,
        "DRAIN_BATCH_SIZE": 1000,
    }


@pytest.fixture
def admin_client():
    client = Client()
    client.force_login(User.objects.create_superuser("admin", "admin@example.com", "pw"))
    return client


def ms(iso: str) -> int:
    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000)


def lease_a_round(*environments: RuntimeEnvironment, rows: int = 50) -> None:
    """What a drainer does before it writes: lease a round (``rows`` of the first environment) and
    plan every queue (publish the drain curves, weighted by type)."""
    first = environments[0]
    buffer.pop(org_id=str(first.organization_id), env_id=str(first.pk), limit=rows, lease_ms=60_000, now_ms=now_ms())
    priority.publish_curves(
        envs={str(e.organization_id): [str(e.pk)] for e in environments},
        weights={(str(e.organization_id), str(e.pk)): priority.weight(e.type) for e in environments},
        now_ms=now_ms(),
    )


def test_a_buffered_run_says_its_place_in_the_queue_and_when_it_will_be_written(fixed_rate):
    environment = EnvironmentFactory()
    api = client_for(environment)
    run_ids = sorted(fill_buffer(environment, 300))  # one trigger time: the queue's order is the ids'
    lease_a_round(environment)  # the first 50 are being written
    before = now_ms()

    answers = {i: api.get(f"/api/v3/runs/{run_ids[i]}").json() for i in (0, 49, 50, 150, 299)}

    assert answers[0]["mollifier"]["position"] == 0 and answers[49]["mollifier"]["position"] == 0  # draining
    assert [answers[i]["mollifier"]["position"] for i in (50, 150, 299)] == [0, 100, 249]
    at = {i: ms(answers[i]["mollifier"]["estimatedWriteAt"]) for i in answers}
    # At 1,000 rows/s alone in the drain: the 250th run of the queue about 250 ms from now.
    assert before + 250 <= at[299] <= now_ms() + 250 + 1000
    assert at[50] <= at[150] <= at[299]
    assert answers[150]["status"] == "QUEUED"  # the SDK's fields are unchanged


def test_the_estimate_shares_the_drain_by_weight(fixed_rate):
    production = EnvironmentFactory(type=RuntimeEnvironment.Type.PRODUCTION)
    development = EnvironmentFactory(type=RuntimeEnvironment.Type.DEVELOPMENT)
    prod_ids, dev_ids = sorted(fill_buffer(production, 800)), sorted(fill_buffer(development, 800))
    lease_a_round(production, development, rows=0)

    prod = client_for(production).get(f"/api/v3/runs/{prod_ids[-1]}").json()["mollifier"]
    dev = client_for(development).get(f"/api/v3/runs/{dev_ids[400]}").json()["mollifier"]

    # production drains 8/9 of the rate until its queue is empty; then development has it all.
    assert ms(dev["estimatedWriteAt"]) > ms(prod["estimatedWriteAt"])
    assert ms(prod["estimatedWriteAt"]) - now_ms() < 1100  # ~ 800 / (1000 x 8/9) s


def test_without_a_drainer_planning_its_queue_a_run_says_its_place_only(fixed_rate):
    environment = EnvironmentFactory()
    run_ids = sorted(fill_buffer(environment, 5))

    estimate = client_for(environment).get(f"/api/v3/runs/{run_ids[3]}").json()["mollifier"]

    assert estimate == {"position": 3}


def test_the_retrieve_of_a_written_run_costs_the_buffer_nothing(api, enrolled):
    run_id = trigger(api, payload=1).json()["id"]  # under the trip threshold: written directly
    assert TaskRun.objects.filter(id=run_id.removeprefix("run_")).exists()

    stop = watch_redis()
    body = api.get(f"/api/v3/runs/{run_id}").json()
    commands = [event["command"] for event in stop()]

    assert "mollifier" not in body
    assert not [command for command in commands if "mollifier" in command or "EVALSHA" in command.upper()]


def test_the_admin_page_of_a_buffered_run_shows_its_estimate(admin_client, fixed_rate):
    environment = EnvironmentFactory()
    run_ids = sorted(fill_buffer(environment, 120))
    lease_a_round(environment)
    org = str(environment.organization_id)

    page = admin_client.get(f"/admin/runs/taskrun/buffered/{org}/{run_ids[100]}/").content.decode()

    assert "50 runs of its environment ahead" in page
    assert 'id="estimated-write"' in page and "1000 rows/s now" in page


def test_the_dashboard_shows_the_drain_rate_and_each_environments_eta(admin_client, fixed_rate, settings):
    settings.MOLLIFIER = {**settings.MOLLIFIER, "DRAIN_MAX_ROWS_PER_SEC": 100}
    production = EnvironmentFactory(type=RuntimeEnvironment.Type.PRODUCTION)
    development = EnvironmentFactory(type=RuntimeEnvironment.Type.DEVELOPMENT)
    fill_buffer(production, 80)
    fill_buffer(development, 100)
    rate.reserve(1, clock=now_ms)  # a drainer's grant: the rate line has a point this minute

    page = admin_client.get("/admin/mollifier/dashboard/").content.decode()

    assert 'id="drain-rate">100 rows/s<' in page
    assert "Allowed drain rate, last hour" in page and "<circle" in page
    assert "89% (production, 8)" in page and "11% (development, 1)" in page
    # production: ~80 rows at 8/9 of 100/s = 0.9 s; development: all 180 at 100/s = 1.8 s.
    assert '<td class="eta">0.9 s</td>' in page and '<td class="eta">1.8 s</td>' in page


def test_curves_are_published_once_a_second_however_many_drainers(fixed_rate):
    environment = EnvironmentFactory()
    fill_buffer(environment, 10)
    weights = {(str(environment.organization_id), str(environment.pk)): 1}
    envs = {str(environment.organization_id): [str(environment.pk)]}
    now = now_ms()

    assert priority.publish_curves(envs=envs, weights=weights, now_ms=now)
    assert not priority.publish_curves(envs=envs, weights=weights, now_ms=now + 500)
    assert priority.publish_curves(envs=envs, weights=weights, now_ms=now + 1000)


def test_the_estimate_follows_what_the_drainers_achieve_when_it_is_less_than_allowed(fixed_rate):
    environment = EnvironmentFactory()
    run_ids = sorted(fill_buffer(environment, 200))
    lease_a_round(environment, rows=0)
    api = client_for(environment)
    alone = ms(api.get(f"/api/v3/runs/{run_ids[99]}").json()["mollifier"]["estimatedWriteAt"]) - now_ms()
    # The drainers reported 100 rows/s over the last second (too few of them for 1,000 rows/s).
    redis_client().hset(keys.drain_limit(), mapping={"drained": "100", "drained_at": now_ms()})

    slower = ms(api.get(f"/api/v3/runs/{run_ids[99]}").json()["mollifier"]["estimatedWriteAt"]) - now_ms()

    assert alone < 500 and 900 <= slower <= 1500  # 100 rows: 0.1 s at the allowed rate, 1 s at the pace
