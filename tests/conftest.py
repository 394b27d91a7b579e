import pytest
from django_redis import get_redis_connection
from rest_framework.test import APIClient

from mollifier import breaker
from tests.factories import EnvironmentFactory


@pytest.fixture(autouse=True)
def redis_breakers():
    """Every test starts with closed circuit breakers (one test's dead Redis must not open the next's)."""
    breaker.enable()
    breaker.reset()
    yield
    breaker.enable()
    breaker.reset()


@pytest.fixture(autouse=True)
def redis_client():
    """The suite's own Redis database (settings_test refuses DB 0), emptied before every test."""
    client = get_redis_connection("default")
    client.flushdb()
    return client


@pytest.fixture(autouse=True)
def packets_root(settings, tmp_path):
    """Each test's packet store: a fresh folder (never the dev server's .dev/packets)."""
    root = tmp_path / "packets"
    settings.STORAGES = {
        **settings.STORAGES,
        "packets": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(root), "allow_overwrite": True},
        },
    }
    return root


@pytest.fixture
def environment(db):
    return EnvironmentFactory()


@pytest.fixture
def other_environment(db):
    """Another tenant: a different organisation, project and key."""
    return EnvironmentFactory()


def client_for(environment) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {environment.secret_key}")
    return client


@pytest.fixture
def api(environment):
    return client_for(environment)


@pytest.fixture
def other_api(other_environment):
    return client_for(other_environment)


@pytest.fixture
def dead_redis(settings):
    """Point the mollifier at a Redis that refuses connections (the request cache keeps working)."""
    settings.CACHES = {
        **settings.CACHES,
        "dead": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": "redis://127.0.0.1:1/0",
            "OPTIONS": {
                "SOCKET_CONNECT_TIMEOUT": 0.2,
                "SOCKET_TIMEOUT": 0.2,
                "REDIS_CLIENT_CLASS": "mollifier.client.BufferRedis",
            },
        },
    }
    settings.MOLLIFIER = {**settings.MOLLIFIER, "REDIS_ALIAS": "dead", "REDIS_CLUSTER_URL": ""}


@pytest.fixture
def mollifier_on(settings):
    """The master switch on, with a gate that trips after 5 triggers in a minute and holds a minute
    (so which triggers are buffered does not depend on timing)."""
    settings.MOLLIFIER = {
        **settings.MOLLIFIER,
        "ENABLED": True,
        "TRIP_THRESHOLD": 5,
        "TRIP_WINDOW_MS": 60_000,
        "HOLD_MS": 60_000,
    }
    return settings.MOLLIFIER


def enroll(environment, value=True):
    environment.organization.feature_flags = {**environment.organization.feature_flags, "mollifierEnabled": value}
    environment.organization.save(update_fields=["feature_flags"])
    return environment


@pytest.fixture
def enrolled(environment, mollifier_on):
    """The caller's organisation enrolled in the mollifier, with the master switch on."""
    return enroll(environment)
