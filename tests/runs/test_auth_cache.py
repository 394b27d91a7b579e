import time

import pytest
from django.db import OperationalError

from runs.api.authentication import environment_for_key, key_cache
from runs.services.environments import environment_rotate_key
from runs.services.flags import MOLLIFIER_ENABLED, organization_set_flag
from trigger_project.postgres import breaker as postgres_breaker

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def empty_cache(settings):
    settings.TRIGGER = {**settings.TRIGGER, "AUTH_CACHE_SECONDS": 0.3}
    key_cache.clear()
    yield
    key_cache.clear()


def test_a_cached_key_sees_flag_changes_after_the_ttl(environment):
    first = environment_for_key(environment.secret_key)
    organization_set_flag(organization=environment.organization, name=MOLLIFIER_ENABLED, enabled=True)

    assert environment_for_key(environment.secret_key) is first  # served from the cache
    assert first.organization.feature_flags == {}
    time.sleep(0.35)
    assert environment_for_key(environment.secret_key).organization.feature_flags == {MOLLIFIER_ENABLED: True}


def test_a_rotated_key_stops_working_after_the_ttl(environment):
    old = environment.secret_key
    environment_for_key(old)
    environment_rotate_key(environment=environment)

    time.sleep(0.35)
    assert environment_for_key(old) is None


def test_unknown_keys_are_not_cached():
    assert environment_for_key("tr_dev_nope") is None
    assert key_cache == {}


@pytest.fixture
def skip_postgres(settings):
    """Opens this process's Postgres breaker when called: from then on every new cursor is refused
    at once, as in a web process that has met a Postgres that does not answer."""
    settings.DB_BREAKER_COOLDOWN_MS = 60_000

    def skip():
        postgres_breaker.enable()
        gate = postgres_breaker.for_database("default", "test", prober=lambda: None, probe_budget_s=60)
        gate.failed(False, OSError("no answer"))  # one failure opens it
        assert postgres_breaker.is_open()

    yield skip
    postgres_breaker.disable()


def test_a_seen_key_still_authenticates_while_postgres_is_skipped(environment, skip_postgres):
    environment_for_key(environment.secret_key)
    time.sleep(0.35)  # expired
    skip_postgres()

    assert environment_for_key(environment.secret_key).pk == environment.pk  # served stale
    with pytest.raises(OperationalError):
        environment_for_key("tr_dev_never_seen")  # nothing to serve: the breaker's refusal


def test_a_key_postgres_said_is_gone_is_never_served_stale(environment, skip_postgres):
    old = environment.secret_key
    environment_for_key(old)
    environment_rotate_key(environment=environment)
    time.sleep(0.35)
    assert environment_for_key(old) is None  # asked Postgres: rotated
    skip_postgres()

    with pytest.raises(OperationalError):
        environment_for_key(old)
