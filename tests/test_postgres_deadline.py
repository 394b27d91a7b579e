"""The Postgres backend's client-side deadline (trigger_project/postgres/base.py), against a private
Postgres that is paused (SIGSTOP: its statement_timeout can never fire) and resumed."""

import psycopg
import pytest
from django.db import connection

from tests.faults import PostgresProcess
from trigger_project.postgres.base import DatabaseWrapper, DeadlineConnection


@pytest.fixture
def own_postgres(tmp_path):
    pg = PostgresProcess(tmp_path / "pg")
    yield pg
    pg.cleanup()


def wrapper_for(pg: PostgresProcess, **overrides) -> DatabaseWrapper:
    """A Django connection to ``pg`` with this project's settings (engine, options, budgets)."""
    settings = {
        **connection.settings_dict,
        "NAME": "postgres",
        "USER": "postgres",
        "PASSWORD": "",
        "HOST": pg.url.split("host=", 1)[1],  # the unix socket's folder
        "PORT": "",
        "TEST": {},
        **overrides,
    }
    return DatabaseWrapper(settings)  # alias "default": django.contrib.postgres looks its type oids up there


@pytest.mark.django_db
def test_django_connections_carry_the_answer_budget():
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    assert isinstance(connection.connection, DeadlineConnection)
    assert connection.connection.answer_timeout == connection.settings_dict["ANSWER_TIMEOUT_MS"] / 1000


def test_a_hung_postgres_is_an_error_and_the_connection_is_closed(own_postgres):
    conn = DeadlineConnection.connect(own_postgres.url, autocommit=True)
    conn.answer_timeout = 0.5
    assert conn.execute("SELECT 1").fetchone() == (1,)
    with own_postgres.paused():
        with pytest.raises(psycopg.OperationalError, match="did not answer within 0.5 s"):
            conn.execute("SELECT 1")
        assert conn.closed  # mid-protocol: never reused
    fresh = DeadlineConnection.connect(own_postgres.url, autocommit=True)
    assert fresh.execute("SELECT 2").fetchone() == (2,)
    fresh.close()


def test_a_commit_that_gets_no_answer_fails_and_closes_the_connection(own_postgres):
    """Whether that transaction committed is the server's to say (the COMMIT may already sit in its
    socket buffer): the caller answers 503, the drainer settles its pin by the transaction's outcome."""
    conn = DeadlineConnection.connect(own_postgres.url)
    conn.answer_timeout = 0.5
    conn.execute("CREATE TABLE IF NOT EXISTS t (n int)")
    conn.commit()
    conn.execute("INSERT INTO t VALUES (1)")
    with own_postgres.paused():
        with pytest.raises(psycopg.OperationalError, match="did not answer"):
            conn.commit()
        assert conn.closed


@pytest.mark.django_db  # lifts pytest-django's block on database access (this wrapper is its own)
def test_the_django_wrapper_answers_operational_errors_and_reconnects_after(own_postgres):
    from django.db import OperationalError

    wrapper = wrapper_for(
        own_postgres, ANSWER_TIMEOUT_MS=500, OPTIONS={**connection.settings_dict["OPTIONS"], "connect_timeout": 1}
    )
    try:
        with wrapper.cursor() as cursor:
            cursor.execute("SELECT 1")
        with own_postgres.paused():
            with pytest.raises(OperationalError, match="did not answer"):
                with wrapper.cursor() as cursor:
                    cursor.execute("SELECT 1")
            assert not wrapper.is_usable()
            wrapper.close()
            with pytest.raises(OperationalError):
                wrapper.ensure_connection()  # a new connection: DB_CONNECT_TIMEOUT's budget
        wrapper.close()
        with wrapper.cursor() as cursor:
            cursor.execute("SELECT 3")
            assert cursor.fetchone() == (3,)
    finally:
        wrapper.close()


def test_the_breaker_probe_fails_while_commits_hang(own_postgres):
    """The web tier's breaker closes only when a commit that wrote to the WAL is answered: a
    synchronous standby that is gone holds every trigger's commit, and a read, or a transaction id
    alone, would still pass (the breaker would close and open again, each time a request waiting)."""
    wrapper = wrapper_for(own_postgres, ANSWER_TIMEOUT_MS=500)
    params = wrapper.get_connection_params()
    wrapper._probe(params)  # healthy: answered

    with psycopg.connect(own_postgres.url, autocommit=True) as admin:
        admin.execute("ALTER SYSTEM SET synchronous_standby_names = 'gone'")
        admin.execute("SELECT pg_reload_conf()")
    try:
        with pytest.raises(psycopg.OperationalError, match="did not answer within 0.5 s"):
            wrapper._probe(params)
    finally:
        with psycopg.connect(own_postgres.url, autocommit=True) as admin:
            admin.execute("ALTER SYSTEM RESET synchronous_standby_names")
            admin.execute("SELECT pg_reload_conf()")
            # The hung commit waits for the standby until its backend is ended.
            admin.execute("SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE wait_event = 'SyncRep'")
    wrapper._probe(params)
