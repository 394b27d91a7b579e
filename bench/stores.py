"""The benchmark's own Postgres database and Redis database, on the stores `make run` would use.

Postgres: DATABASE_URL's server, else this machine's (127.0.0.1:5432), else the embedded one — always
the database ``mollifier_bench``, recreated empty each run. Redis: REDIS_URL, else 127.0.0.1:6379,
else the embedded one — always DB 8, flushed. The dev and test data are never touched.
"""

import os
import socket
from urllib.parse import urlsplit, urlunsplit

# BENCH_DB / BENCH_REDIS_DB (and BENCH_PORT) let two benches share a machine's servers.
BENCH_DB = os.environ.get("BENCH_DB", "mollifier_bench")
BENCH_REDIS_DB = int(os.environ.get("BENCH_REDIS_DB", "8"))


def _answers(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def _with_redis_db(url: str, db: int) -> str:
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return f"unix://{parts.path}?db={db}"
    return urlunsplit(parts._replace(path=f"/{db}"))


def configure() -> dict:
    """Point this process's environment (and so Django and child processes) at the bench stores."""
    from trigger_project import embedded

    base_db = os.environ.get("DATABASE_URL") or (
        "postgresql://postgres@127.0.0.1:5432/postgres" if _answers(5432) else embedded.ensure_postgres()
    )
    base_redis = os.environ.get("REDIS_URL") or (
        "redis://127.0.0.1:6379/0" if _answers(6379) else embedded.ensure_redis()
    )
    _recreate_database(base_db)
    env = {
        "DATABASE_URL": _with_database(base_db, BENCH_DB),
        "REDIS_URL": _with_redis_db(base_redis, BENCH_REDIS_DB),
        "DJANGO_SETTINGS_MODULE": "trigger_project.settings",
        "DEBUG": "0",  # production-like; DEBUG would also keep every query in memory
        "SECRET_KEY": "bench-secret-key",
        # Plain HTTP on loopback, no TLS proxy: /bench/noop is not under /api/, which the redirect spares.
        "SECURE_SSL_REDIRECT": "0",
        "LOG_LEVEL": "WARNING",
    }
    os.environ.update(env)
    return {"postgres": base_db.split("@")[-1], "redis": base_redis.split("@")[-1]}


def _recreate_database(base_url: str) -> None:
    import psycopg

    admin = _with_database(base_url, "postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{BENCH_DB}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{BENCH_DB}"')
