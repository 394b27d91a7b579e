"""The embedded development servers: who starts them and who stops them (issue 14).

Importing the settings starts nothing; `make run`, `make services` and the test suite start the
servers, and each stops only what it started. A manage.py command without its servers says how to
start them; beside a running `make run` it takes make run's settings from .dev/env. Each test points
its processes at a .dev/ of its own (MOLLIFIER_DEV_DIR), never at this clone's.
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.server import ROOT, database_url

# The variables a shell of the clone could carry that would hide what the test looks at.
_CLEARED_PREFIXES = ("MOLLIFIER_", "TRIGGER_", "PACKETS_")
_CLEARED = {"DATABASE_URL", "REDIS_URL", "DEBUG", "SECRET_KEY", "PROMETHEUS_MULTIPROC_DIR", "DJANGO_SETTINGS_MODULE"}


@pytest.fixture
def dev():
    """A .dev/ of the test's own, outside pytest's temporary root: that root is private to its user
    (0700), and the embedded Postgres runs as another user when the suite runs as root (pgserver)."""
    base = Path(tempfile.mkdtemp(prefix="mollifier-dev-"))
    yield base / "dev"
    shutil.rmtree(base, ignore_errors=True)


def clone_env(dev_dir, **overrides: str) -> dict[str, str]:
    """A shell of a clone on the embedded servers (no URLs) whose .dev/ is ``dev_dir``."""
    env = {k: v for k, v in os.environ.items() if k not in _CLEARED and not k.startswith(_CLEARED_PREFIXES)}
    env["MOLLIFIER_DEV_DIR"] = str(dev_dir)
    env.update(overrides)
    return env


def run(*args: str, env: dict[str, str], cwd=ROOT, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return run(sys.executable, "-c", code, env=env)


def manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return run(sys.executable, "manage.py", *args, env=env)


def embedded(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return run(sys.executable, "-m", "trigger_project.embedded", *args, env=env)


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_importing_the_settings_starts_no_server(dev):
    env = clone_env(dev, DJANGO_SETTINGS_MODULE="trigger_project.settings", DEBUG="1")

    shown = python(
        "import django; django.setup(); from django.conf import settings as s; "
        "print(s.DATABASES['default']['HOST']); print(s.REDIS_URL)",
        env,
    )
    check = manage("check", env=clone_env(dev))  # no DEBUG: manage.py on the embedded servers turns it on

    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.split() == [str(dev / "pgdata"), f"unix://{dev / 'redis.sock'}"]
    assert check.returncode == 0, check.stderr
    assert not (dev / "pgdata").exists() and not (dev / "redis.sock").exists()


def test_a_command_without_its_embedded_servers_says_how_to_start_them(dev):

    both = manage("mollifier_status", env=clone_env(dev))
    redis_only = manage("migrate", env=clone_env(dev, DATABASE_URL=database_url()))

    assert both.returncode == 1 and both.stdout == ""
    assert "embedded Postgres and Redis of this clone" in both.stderr
    assert "make run" in both.stderr and "make services" in both.stderr and "DATABASE_URL and REDIS_URL" in both.stderr
    assert redis_only.returncode == 1 and "embedded Redis of this clone" in redis_only.stderr
    assert "Postgres" not in redis_only.stderr and "set REDIS_URL" in redis_only.stderr
    assert not dev.exists()  # nothing was started


def test_commands_beside_make_run_take_its_settings_and_their_own_shell_wins(dev):
    secret = "a key with spaces, 'quotes' and $dollars"
    make_run_env = {
        "DEBUG": "0",
        "SECRET_KEY": secret,
        "MOLLIFIER_TRIP_THRESHOLD": "5",
        "MOLLIFIER_DRAIN_MAX_ROWS_PER_SEC": "1",
        "DATABASE_URL": "postgresql://not-shared/db",
        "PORT": "8123",
    }
    # Written as `make run` writes it, for a launcher that is alive (this test's process).
    written = python(
        f"from trigger_project import embedded; embedded.write_shared_env({make_run_env!r}, pid={os.getpid()})",
        clone_env(dev),
    )
    assert written.returncode == 0, written.stderr
    shared = (dev / "env").read_text()
    assert (dev / "env").stat().st_mode & 0o777 == 0o600
    assert "DATABASE_URL" not in shared and "PORT" not in shared

    shown = manage("diffsettings", env=clone_env(dev, MOLLIFIER_DRAIN_MAX_ROWS_PER_SEC="7"))

    assert shown.returncode == 0, shown.stderr
    assert "'TRIP_THRESHOLD': 5," in shown.stdout  # make run's
    assert "'DRAIN_MAX_ROWS_PER_SEC': 7," in shown.stdout  # the command's own shell wins
    assert f"SECRET_KEY = {secret!r}" in shown.stdout and not re.search(r"^DEBUG = True", shown.stdout, re.M)
    assert f"settings of the running `make run` (pid {os.getpid()})" in shown.stderr
    assert "MOLLIFIER_TRIP_THRESHOLD" in shown.stderr and "MOLLIFIER_DRAIN_MAX_ROWS_PER_SEC" not in shown.stderr


def test_the_settings_of_a_make_run_that_is_gone_are_not_taken(dev):
    written = python(
        "from trigger_project import embedded; "
        f"embedded.write_shared_env({{'MOLLIFIER_TRIP_THRESHOLD': '5'}}, pid={dead_pid()})",
        clone_env(dev),
    )
    assert written.returncode == 0, written.stderr

    shown = manage("diffsettings", env=clone_env(dev))

    assert shown.returncode == 0, shown.stderr
    assert "'TRIP_THRESHOLD': 100," in shown.stdout and "make run" not in shown.stderr


@pytest.mark.skipif(not shutil.which("make"), reason="make is not installed")
def test_make_stop_and_make_clean_on_a_fresh_clone(tmp_path):
    """No .venv yet: nothing can be running, and both say so instead of failing."""
    shutil.copy(ROOT / "Makefile", tmp_path / "Makefile")
    (tmp_path / ".dev").mkdir()

    stop = run("make", "--no-print-directory", "stop", env=clone_env(tmp_path / ".dev"), cwd=tmp_path)
    clean = run("make", "--no-print-directory", "clean", env=clone_env(tmp_path / ".dev"), cwd=tmp_path)

    assert stop.returncode == 0 and stop.stdout.strip() == "no .venv: no embedded server to stop", stop.stderr
    assert clean.returncode == 0, clean.stderr
    assert not (tmp_path / ".dev").exists()


def test_stop_says_what_it_stopped_and_leaves_the_servers_of_a_running_make_run(dev):
    env = clone_env(dev)
    started = python("from trigger_project import embedded; print(embedded.ensure_redis())", env)
    assert started.returncode == 0, started.stderr
    try:
        python(f"from trigger_project import embedded; embedded.write_shared_env({{}}, pid={os.getpid()})", env)
        refused = embedded("stop", env=env)
        assert refused.returncode == 1 and f"`make run` (pid {os.getpid()}) is using" in refused.stderr
        assert "embedded Redis: running" in embedded("status", env=env).stdout
        (dev / "env").unlink()

        stopped = embedded("stop", env=env)
        again = embedded("stop", env=env)
    finally:
        python("from trigger_project import embedded; embedded.stop_redis()", env)

    assert stopped.returncode == 0 and stopped.stdout.strip() == f"stopped the embedded Redis ({dev})"
    assert again.returncode == 0 and again.stdout.strip() == f"no embedded server was running ({dev})"


def test_the_test_suite_starts_the_embedded_servers_and_stops_only_those_it_started(dev):
    """A suite on the embedded servers (no URLs): Redis already running (as under `make run`) is
    used and left running; Postgres, started by the suite, is stopped when it ends."""
    env = clone_env(dev, REDIS_TEST_DB=os.environ.get("REDIS_TEST_DB", "9"))
    assert python("from trigger_project import embedded; embedded.ensure_redis()", env).returncode == 0
    try:
        suite = run(
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "tests/mollifier/test_sweep_and_status.py::test_status_shows_depth_per_environment",
            env=env,
            timeout=300,
        )
        status = embedded("status", env=env).stdout
    finally:
        python("from trigger_project import embedded; embedded.stop_redis(); embedded.stop_postgres()", env)

    assert suite.returncode == 0, suite.stdout + suite.stderr
    assert "embedded Postgres started for this session" in suite.stdout
    assert (dev / "pgdata" / "PG_VERSION").exists()
    assert "embedded Postgres: stopped" in status and "embedded Redis: running" in status
