import time

import pytest

from runs.api.authentication import environment_for_key, key_cache
from runs.services.environments import environment_rotate_key
from runs.services.flags import MOLLIFIER_ENABLED, organization_set_flag

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
