"""Test settings: the real settings, pointed at a dedicated Redis database.

The suite flushes its Redis database before every test, so it must never be DB 0 (where a dev
server keeps its data). ``REDIS_TEST_DB`` picks it; the e2e tests hand the same URL to the
server process they start.
"""

import os
from urllib.parse import urlsplit, urlunsplit

# `make test` runs with DEBUG on, as `make run` does (the settings default to off). The server
# processes the e2e tests start set DEBUG=0 themselves (tests/server.py).
os.environ.setdefault("DEBUG", "1")

from trigger_project.env import env_int  # noqa: E402
from trigger_project.settings import *  # noqa: E402, F403
from trigger_project.settings import CACHES, REDIS_URL, TRIGGER  # noqa: E402


def _with_db(url: str, db: int) -> str:
    parts = urlsplit(url)
    if parts.scheme == "unix":  # unix:///path?db=N (urlunsplit would drop the empty authority)
        query = "&".join([p for p in parts.query.split("&") if p and not p.startswith("db=")] + [f"db={db}"])
        return f"unix://{parts.path}?{query}"
    return urlunsplit(parts._replace(path=f"/{db}"))


REDIS_TEST_DB = env_int("REDIS_TEST_DB", 9)
if REDIS_TEST_DB == 0:
    raise RuntimeError("Refusing to run the test suite on Redis DB 0: set REDIS_TEST_DB to another number.")
REDIS_URL = _with_db(REDIS_URL, REDIS_TEST_DB)
CACHES["default"]["LOCATION"] = REDIS_URL
# Fast user fixtures (MD5); PBKDF2 stays available for users a real server process must log in.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher", "django.contrib.auth.hashers.PBKDF2PasswordHasher"]
# Tests change keys and flags between requests; test_auth_cache covers the cache itself.
TRIGGER = {**TRIGGER, "AUTH_CACHE_SECONDS": 0}
