"""A call whose answer Redis never gave may still run once Redis reads again (mollifier/lost_answers.py):
a claim held by nobody, an organisation made active but never indexed. Against a redis-server of the
test's own, paused (SIGSTOP) while the call waits and resumed after it gave up."""

import logging

import pytest

from mollifier import buffer, claims, keys, lost_answers
from mollifier import client as redis_client
from mollifier.claims import ClaimKind
from mollifier.drainer import Drainer
from runs import ids
from runs.models import TaskRun
from tests.conftest import client_for, enroll
from tests.factories import EnvironmentFactory
from tests.faults import RedisProcess
from tests.helpers import trigger
from tests.server import wait_until

pytestmark = pytest.mark.django_db


@pytest.fixture
def own_redis(settings):
    store = RedisProcess()
    store.start()
    # One lost answer must not open the breaker (its follow-up would then wait for the cooldown).
    store.serve(settings, REDIS_BREAKER_FAILURES=3, REDIS_MEMORY_LIMIT_PERCENT=0)
    yield store
    store.cleanup()


def acquire(key: str) -> claims.ClaimOutcome:
    return claims.acquire(org_id="1", env_id="2", task="task", key=key, key_expires_ms=None, now_ms=0)


def test_a_claim_whose_answer_was_lost_is_released_once_redis_answers(own_redis, caplog):
    caplog.set_level(logging.WARNING, logger="mollifier.lost_answers")
    claims.release(acquire("warm").claim)  # the script is loaded, and a connection waits in the pool

    with own_redis.paused():
        # Sent on the pooled connection, it waits in Redis's socket while the client gives up.
        assert acquire("k").kind == ClaimKind.UNAVAILABLE

    # Redis runs the queued claim for nobody; without the follow-up every trigger with this key
    # would wait on it, then answer 503, for the claim's whole TTL.
    wait_until(lambda: lost_answers.pending() == 0, timeout=20)
    assert "mollifier.lost_answer.repaired claim" in caplog.text  # it did appear, and was released
    assert redis_client.get().get(keys.claim("1", "2", "task", "k")) is None
    assert acquire("k").kind == ClaimKind.CLAIMED


def test_a_claim_that_never_appears_is_forgotten_once_redis_has_answered_a_while(own_redis, caplog):
    caplog.set_level(logging.WARNING, logger="mollifier.lost_answers")
    lost_answers.release_claim(redis_key=keys.claim("1", "2", "task", "never"), marker="pending:nobody")
    assert lost_answers.pending() == 1
    wait_until(lambda: lost_answers.pending() == 0, timeout=lost_answers.SETTLED_S + 5)
    assert "repaired" not in caplog.text


def test_an_accept_whose_answer_was_lost_still_gets_its_runs_drained(own_redis, mollifier_on, caplog):
    caplog.set_level(logging.WARNING, logger="mollifier.lost_answers")
    environment = enroll(EnvironmentFactory())
    org = str(environment.organization_id)
    api = client_for(environment)
    redis_client.get().set(keys.tripped(org, str(environment.pk)), "1", px=600_000)  # every trigger buffered
    assert trigger(api, payload="warm").headers.get("x-mollifier") == "buffered"  # the scripts are loaded
    Drainer().run(once=True)
    assert org not in buffer.active_orgs()  # drained: the organisation is idle again

    with own_redis.paused():
        lost = trigger(api, payload="lost")
    assert lost.status_code == 200 and "x-mollifier" not in lost.headers  # failed open: written to Postgres

    # Redis ran the accept it had queued: the run is buffered too, and its organisation active. The
    # answer that would have indexed it is lost; later accepts do not index it (already active).
    wait_until(lambda: org in buffer.active_orgs(), timeout=20)
    assert "mollifier.lost_answer.repaired org" in caplog.text
    later = trigger(api, payload="later")
    assert later.headers.get("x-mollifier") == "buffered"

    Drainer().run(once=True)
    assert buffer.buffered_count(org) == 0
    rows = TaskRun.objects.filter(environment=environment)
    assert rows.count() == 3  # warm, lost (once: its late entry found its row), later
    written = {ids.to_friendly(ids.RUN, internal) for internal in rows.values_list("id", flat=True)}
    assert {lost.json()["id"], later.json()["id"]} <= written
