import pytest
from django_redis import get_redis_connection
from rest_framework.test import APIClient

from tests.factories import EnvironmentFactory


@pytest.fixture(autouse=True)
def redis_client():
    """The suite's own Redis database (settings_test refuses DB 0), emptied before every test."""
    client = get_redis_connection("default")
    client.flushdb()
    return client


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
