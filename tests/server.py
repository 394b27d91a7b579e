"""Starting the real server process (gunicorn, as `make run` serves) against the test stores."""

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

from django.conf import settings
from django.db import connection

ROOT = Path(__file__).resolve().parent.parent


def database_url() -> str:
    """A URL to the database the tests use right now (pytest-django's test database)."""
    db = connection.settings_dict
    auth = quote(db["USER"] or "postgres") + (":" + quote(db["PASSWORD"]) if db["PASSWORD"] else "")
    host = db["HOST"] or ""
    if host.startswith("/"):
        return f"postgresql://{auth}@/{db['NAME']}?host={quote(host)}"
    return f"postgresql://{auth}@{host}:{db['PORT'] or 5432}/{db['NAME']}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_env(**overrides: str) -> dict:
    env = os.environ.copy()
    env.update(
        DJANGO_SETTINGS_MODULE="trigger_project.settings",
        DATABASE_URL=database_url(),
        REDIS_URL=settings.REDIS_URL,
        DEBUG="0",
        SECRET_KEY="test-secret-key-for-the-e2e-server",
        DB_CONN_MAX_AGE="0",  # the test database is dropped at the end; hold no connection open
    )
    if location := settings.STORAGES["packets"].get("OPTIONS", {}).get("location"):
        env["PACKETS_ROOT"] = str(location)  # the test's own packet store (tests/conftest.py)
    env.update(overrides)
    return env


@contextmanager
def running_server(workers: int = 2, **env_overrides: str):
    """Serve on a free loopback port; yields the base URL and stops the server afterwards."""
    port = free_port()
    # Output goes to a file, never a pipe nobody reads: a full pipe would block the workers.
    log = tempfile.NamedTemporaryFile(prefix="mollifier-server-", suffix=".log", delete=False)
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "trigger_project.wsgi",
            "--workers",
            str(workers),
            "--bind",
            f"127.0.0.1:{port}",
            "--graceful-timeout",
            "5",
        ],
        cwd=ROOT,
        env=server_env(**env_overrides),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"server exited:\n{Path(log.name).read_text(errors='replace')}")
            try:
                urllib.request.urlopen(f"{base_url}/healthz", timeout=1)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("server did not answer /healthz within 30 s") from None
                time.sleep(0.1)
        yield base_url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()


def manage(env: dict, *args: str) -> str:
    """Run ``manage.py <args>`` against the test stores, ``env`` on top; its output."""
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=server_env(**env),
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def environment_in(stores: dict, org: str, *, enrolled: bool) -> str:
    """Create ``org``'s production environment in the database ``stores`` names (migrated before),
    enrolled in the mollifier or not, through the real commands; its secret key."""
    key = manage(stores, "create_environment", "--org", org, "--project", "p", "--env", "prod").split()[-1]
    if enrolled:
        manage(
            stores,
            "shell",
            "-c",
            f"from runs.models import Organization as O; o=O.objects.get(slug={org!r}); "
            "o.feature_flags={'mollifierEnabled': True}; o.save()",
        )
    return key


def start_manage(*args: str, **env_overrides: str) -> subprocess.Popen:
    """Start ``manage.py <args>`` against the test stores (output captured)."""
    return subprocess.Popen(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=server_env(**env_overrides),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_until(check, timeout: float = 60, interval: float = 0.1) -> None:
    """Poll ``check`` until it is true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(interval)


def finish(process: subprocess.Popen, timeout: float = 120) -> str:
    """Wait for a ``start_manage`` process to exit 0; returns its output."""
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output
    return output
