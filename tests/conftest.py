import os
import shutil
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from django.conf import settings
from django_redis import get_redis_connection
from rest_framework.test import APIClient

from mollifier import breaker, lost_answers
from tests.factories import EnvironmentFactory
from tests.faults import silent_port
from trigger_project import embedded

# The embedded servers this session started, as (name, stop) pairs: stopped when it ends.
_STARTED: list[tuple[str, object]] = []


def pytest_configure(config):
    """Start the embedded Postgres and Redis when the suite runs on them (DATABASE_URL / REDIS_URL
    unset): the settings only read where they are. Servers already running (`make run`, `make
    services`) are used as they are and left running."""
    if hasattr(config, "workerinput") or config.getoption("help", False):
        return  # an xdist worker (the controller owns the servers), or `pytest --help`
    if not os.environ.get("DATABASE_URL"):
        if not embedded.postgres_running():
            _STARTED.append(("Postgres", embedded.stop_postgres))
        url = embedded.ensure_postgres()
        # The settings guessed the socket folder before the server recorded it (pgserver moves it out
        # of a data folder whose path is too long for a socket): take the recorded one.
        settings.DATABASES["default"]["HOST"] = parse_qs(urlsplit(url).query)["host"][0]
    if not os.environ.get("REDIS_URL"):
        if not embedded.redis_running():
            _STARTED.append(("Redis", embedded.stop_redis))
        embedded.ensure_redis()


def pytest_report_header(config):
    if _STARTED:
        names = " and ".join(name for name, _ in _STARTED)
        return f"embedded {names} started for this session (in {embedded.DEV_DIR}); stopped when it ends"
    return None


def pytest_unconfigure(config):
    """Stop the embedded servers this session started, unless a `make run` began using them since."""
    if (pid := embedded.launcher_pid()) is not None:
        _STARTED.clear()
        print(f"\nembedded servers left running: `make run` (pid {pid}) uses them")
    while _STARTED:
        _, stop = _STARTED.pop()
        stop()


@pytest.fixture(autouse=True)
def redis_breakers():
    """Every test starts with closed circuit breakers (one test's dead Redis must not open the next's)."""
    breaker.enable()
    breaker.reset()
    yield
    breaker.enable()
    breaker.reset()


@pytest.fixture(autouse=True)
def lost_answers_forgotten():
    """One test's lost answers (mollifier/lost_answers.py) must not act in the next test's Redis."""
    lost_answers.clear()
    yield
    lost_answers.clear()


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


def mollifier_redis_at(settings, location: str) -> None:
    """Point the mollifier at another Redis, with short timeouts (the request cache keeps working)."""
    settings.CACHES = {
        **settings.CACHES,
        "dead": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": location,
            "OPTIONS": {
                "SOCKET_CONNECT_TIMEOUT": 0.2,
                "SOCKET_TIMEOUT": 0.2,
                "REDIS_CLIENT_CLASS": "mollifier.client.BufferRedis",
            },
        },
    }
    settings.MOLLIFIER = {**settings.MOLLIFIER, "REDIS_ALIAS": "dead", "REDIS_CLUSTER_URL": ""}


@pytest.fixture
def dead_redis(settings):
    """Point the mollifier at a Redis that refuses connections (the request cache keeps working)."""
    mollifier_redis_at(settings, "redis://127.0.0.1:1/0")


@pytest.fixture(params=["refused", "hung"])
def silent_redis(request, settings):
    """Point the mollifier at a Redis that refuses connections, or accepts them and never answers."""
    with silent_port(request.param) as port:
        mollifier_redis_at(settings, f"redis://127.0.0.1:{port}/0")
        yield request.param


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


@pytest.fixture
def node():
    """Node.js, with the official SDK installed in tests/e2e (`make test` runs npm ci there)."""
    node = shutil.which("node")
    if node is None or not (Path(__file__).parent / "e2e" / "node_modules" / "@trigger.dev" / "sdk").exists():
        pytest.skip("Node.js or the SDK packages are missing: run `make test` (it runs npm ci in tests/e2e)")
    return node
