"""Who drains first under contention (issue 17): environments share the drain by the weight of
their type, organisations by their heaviest environment, nobody starves, and a delayed run whose
time has come goes before a young backlog."""

from datetime import timedelta

import pytest
from django.utils import timezone

from mollifier import buffer, keys, priority
from mollifier.client import get as redis_client
from mollifier.clock import now_ms
from mollifier.drainer import Drainer
from runs.models import RunStatus, RuntimeEnvironment, TaskRun
from tests.buffering import fill_buffer
from tests.conftest import client_for
from tests.factories import EnvironmentFactory
from tests.helpers import trigger

pytestmark = pytest.mark.django_db

Type = RuntimeEnvironment.Type
ROUND = 60  # rows per round: 1,200 rows/s for a twentieth of a second
BATCH = 10  # an environment's quantum: up to 10 x its weight per round


@pytest.fixture
def contended(settings):
    """Rounds of 60 rows, quanta of 10: four backlogged environments could give 120 a round."""
    settings.MOLLIFIER = {
        **settings.MOLLIFIER,
        "DRAIN_RATE_MODE": "fixed",  # the shares, not the rate, are under test
        "DRAIN_MAX_ROWS_PER_SEC": ROUND * 20,
        "DRAIN_BATCH_SIZE": BATCH,
        "DRAIN_WEIGHTS": "production:8,staging:2,preview:1,development:1",
    }


def written(environment) -> int:
    return TaskRun.objects.filter(environment=environment).count()


def drain_rounds(count: int, drainer: Drainer | None = None) -> Drainer:
    drainer = drainer or Drainer()
    for _ in range(count):
        drainer.drain_round()
    return drainer


def four_environments(*, same_org: bool) -> dict[str, RuntimeEnvironment]:
    first = EnvironmentFactory(type=Type.PRODUCTION, slug="prod")
    extra = {"project": first.project} if same_org else {}
    return {
        "production": first,
        "staging": EnvironmentFactory(type=Type.STAGING, slug="staging", **extra),
        "preview": EnvironmentFactory(type=Type.PREVIEW, slug="preview", **extra),
        "development": EnvironmentFactory(type=Type.DEVELOPMENT, slug="dev", **extra),
    }


@pytest.mark.parametrize("same_org", [False, True], ids=["four organisations", "one organisation"])
def test_each_environment_drains_its_weights_share_and_none_starves(contended, same_org):
    environments = four_environments(same_org=same_org)
    for environment in environments.values():
        fill_buffer(environment, 2000)

    drain_rounds(40)  # 2,400 rows

    shares = {name: written(environment) / (40 * ROUND) for name, environment in environments.items()}
    assert sum(written(e) for e in environments.values()) == 40 * ROUND
    assert 0.60 <= shares["production"] <= 0.72  # 8/12 = 0.67
    assert 0.13 <= shares["staging"] <= 0.20  # 2/12 = 0.17
    assert 0.07 <= shares["preview"] <= 0.11 and 0.07 <= shares["development"] <= 0.11  # 1/12 = 0.08


def test_an_organisation_weighs_as_its_heaviest_environment_not_as_their_number(contended, settings):
    settings.MOLLIFIER = {**settings.MOLLIFIER, "DRAIN_BATCH_SIZE": 50}  # quanta that never bind here
    many = EnvironmentFactory(slug="dev-0")
    for i in range(1, 4):
        fill_buffer(EnvironmentFactory(project=many.project, slug=f"dev-{i}"), 500)
    fill_buffer(many, 500)
    alone = EnvironmentFactory()
    fill_buffer(alone, 500)

    drain_rounds(10)

    assert 0.45 <= written(alone) / (10 * ROUND) <= 0.55  # half: one organisation of two


def test_a_light_environment_keeps_a_share_beside_many_heavy_ones(contended):
    heavy = [EnvironmentFactory(type=Type.PRODUCTION) for _ in range(5)]
    for environment in heavy:
        fill_buffer(environment, 1000)
    light = EnvironmentFactory(type=Type.DEVELOPMENT)
    fill_buffer(light, 100)

    drain_rounds(20)  # 1,200 rows; the light one's share: 1 / (5 x 8 + 1) of them

    assert BATCH <= written(light) <= 4 * BATCH  # about 29 rows: served, not starved, not more
    assert all(written(environment) >= 180 for environment in heavy)


def test_without_contention_every_environment_gives_its_weight_in_quanta_per_round(contended, settings):
    settings.MOLLIFIER = {**settings.MOLLIFIER, "DRAIN_MAX_ROWS_PER_SEC": 100_000}  # rounds of 5,000
    environments = four_environments(same_org=False)
    for environment in environments.values():
        fill_buffer(environment, 500)

    drain_rounds(2)

    assert {name: written(environment) for name, environment in environments.items()} == {
        "production": 2 * 8 * BATCH,
        "staging": 2 * 2 * BATCH,
        "preview": 2 * BATCH,
        "development": 2 * BATCH,
    }


def buffer_delayed_behind_backlog(*, delay: str, backlog: int = 300):
    """A development environment with ``backlog`` runs, then one delayed run triggered after them;
    beside it, a production environment with a young backlog of 2,000."""
    production = EnvironmentFactory(type=Type.PRODUCTION)
    fill_buffer(production, 2000)
    development = EnvironmentFactory(type=Type.DEVELOPMENT)
    fill_buffer(development, backlog)
    (delayed,) = fill_buffer(development, 1, delay=delay)
    return development, delayed


def test_a_delayed_run_whose_time_has_come_is_not_stuck_behind_a_young_backlog(contended):
    development, delayed = buffer_delayed_behind_backlog(delay="1s")  # due within the lead

    result = Drainer().drain_round()

    run = TaskRun.objects.get(id=delayed.removeprefix("run_"))
    assert result.due == 1 and run.status == RunStatus.DELAYED and run.delay_until is not None
    assert written(development) <= BATCH + 1  # its environment's older backlog still waits


def test_a_delayed_run_that_is_not_due_waits_its_turn(contended):
    _, delayed = buffer_delayed_behind_backlog(delay="1h")

    results = [Drainer().drain_round() for _ in range(3)]

    assert sum(r.due for r in results) == 0
    assert not TaskRun.objects.filter(id=delayed.removeprefix("run_")).exists()


def test_due_runs_take_at_most_half_a_round(contended):
    fill_buffer(EnvironmentFactory(type=Type.PRODUCTION), 500)
    for _ in range(4):  # each could give a quantum of due runs: 40 in all
        fill_buffer(EnvironmentFactory(type=Type.DEVELOPMENT), 100, delay="1s")

    first = Drainer().drain_round()

    assert first.due == ROUND // 2 and first.popped == ROUND


def test_a_rescheduled_run_moves_in_the_due_index(contended, enrolled):
    api = client_for(enrolled)
    for i in range(6):
        trigger(api, payload={"warm": i})
    response = trigger(api, payload={"late": 1}, delay="1h")
    run_id = response.json()["id"]
    assert response.headers["x-mollifier"] == "buffered"
    org = str(enrolled.organization_id)
    member = keys.delayed_member(str(enrolled.pk), run_id)
    hour = buffer_index_score(org, member)
    assert hour is not None and hour > now_ms() + 3_000_000

    assert api.post(f"/api/v1/runs/{run_id}/reschedule", {"delay": "1s"}, format="json").status_code == 200

    assert buffer_index_score(org, member) <= now_ms() + 1_000
    assert Drainer().drain_round().due == 1


def buffer_index_score(org: str, member: str) -> float | None:
    return redis_client().zscore(keys.delayed(org), member)


def test_a_delayed_run_written_in_its_turn_leaves_the_due_index(contended, settings):
    settings.MOLLIFIER = {**settings.MOLLIFIER, "DRAIN_MAX_ROWS_PER_SEC": 100_000}
    environment = EnvironmentFactory()
    fill_buffer(environment, 3, delay="1h")
    org = str(environment.organization_id)
    assert len(buffer.active(due_by_ms=now_ms() + 7_200_000, due_limit=10).due) == 3

    Drainer().run(once=True)  # written in the queue's order, an hour early: harmless (DELAYED rows)
    Drainer().drain_round()  # a round finds the members of runs that are gone, and drops them
    assert buffer.active(due_by_ms=now_ms() + 7_200_000, due_limit=10).due == []
    assert TaskRun.objects.filter(environment=environment, status=RunStatus.DELAYED).count() == 3
    assert timezone.now() + timedelta(minutes=50) < TaskRun.objects.first().delay_until
    assert not list(buffer_keys(org))


def buffer_keys(org: str):
    return redis_client().scan_iter(keys.delayed(org))


# -- the drain curves (pure) --------------------------------------------------------------------


def test_curves_give_the_heavier_queue_its_share_then_the_rest_to_the_others():
    heavy, light = ("a", "prod"), ("b", "dev")
    drawn = priority.curves({heavy: 30, light: 30}, {heavy: 3, light: 1})

    # At one row per second in all: the heavy queue drains at 0.75/s and is done at 40 s; the light
    # one has 10 rows written by then, and the whole drain for its last 20.
    assert priority.seconds_until(drawn[heavy], 30) == pytest.approx(40)
    assert priority.seconds_until(drawn[light], 10) == pytest.approx(40)
    assert priority.seconds_until(drawn[light], 30) == pytest.approx(60)
    assert priority.seconds_until(drawn[light], 1) == pytest.approx(4)


def test_shares_are_by_organisation_then_by_environment():
    weights = {("a", "prod"): 8, ("a", "dev"): 1, ("b", "dev"): 1}

    shares = priority.shares(weights, weights)

    assert shares[("b", "dev")] == pytest.approx(1 / 9)  # organisation a weighs 8, b 1
    assert shares[("a", "prod")] == pytest.approx(8 / 9 * 8 / 9)
    assert sum(shares.values()) == pytest.approx(1)


def test_a_member_left_behind_by_a_run_written_elsewhere_is_dropped_by_the_next_round(contended):
    environment = EnvironmentFactory()
    (delayed,) = fill_buffer(environment, 1, delay="1s")
    org, env = str(environment.organization_id), str(environment.pk)
    popped = buffer.pop(org_id=org, env_id=env, limit=1, lease_ms=60_000, now_ms=now_ms())
    buffer.ack(popped.entries, now_ms=now_ms())  # as a settle of another drainer's pin acks: no unindexing
    fill_buffer(EnvironmentFactory(project=environment.project, slug="other"), 5)  # the organisation stays active
    assert buffer_index_score(org, keys.delayed_member(env, delayed)) is not None

    assert Drainer().drain_round().due == 0

    assert not list(buffer_keys(org))
