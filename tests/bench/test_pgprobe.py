"""The bench's database probe reads what Postgres did: its transactions and its processes' CPU."""

import os
import time

import psycopg
import pytest
from django.db import connection

from bench import pgprobe


def _url(database: str) -> str:
    params = connection.get_connection_params()  # the settings' server; no Django connection is made
    return psycopg.conninfo.make_conninfo(
        **{k: v for k, v in params.items() if k in ("host", "port", "user", "password")}, dbname=database
    )


@pytest.fixture
def admin():
    with pgprobe.connect(_url("postgres")) as conn:
        yield conn


@pytest.fixture
def database(admin):
    """A database of its own: no other backend commits in it while the test counts."""
    name = f"probe_test_{os.getpid()}"
    admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.execute(f'CREATE DATABASE "{name}"')
    yield name
    admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def test_xact_commit_grows_by_the_transactions_committed(admin, database):
    """As the bench closes a window: once the backend has exited, which flushes its statistics (a
    live one flushes them at most once a second, and not at all for a transaction that touched no
    table)."""
    postmaster = pgprobe.postmaster_pid(admin)
    start_up = _start_up_transactions(admin, database)
    before = pgprobe.read(admin, database=database, postmaster=postmaster)
    with pgprobe.connect(_url(database)) as conn:
        conn.execute("CREATE TABLE counted (n int)")
        for n in range(25):
            conn.execute("INSERT INTO counted VALUES (%s)", [n])
        with conn.transaction():
            conn.execute("SELECT count(*) FROM counted")
            conn.execute("DELETE FROM counted WHERE n < 10")
    pgprobe.wait_for_no_backends(admin, database=database, keep=set())
    after = pgprobe.read(admin, database=database, postmaster=postmaster)
    # The connection's start-up, the CREATE, 25 inserts and one explicit transaction; an autovacuum
    # worker's visit to the new database (one transaction) may fall inside the window too.
    expected = start_up + 1 + 25 + 1
    assert expected <= after.xact_commit - before.xact_commit <= expected + 1
    assert after.wal_bytes > before.wal_bytes


def _start_up_transactions(admin, database: str) -> int:
    postmaster = pgprobe.postmaster_pid(admin)
    before = pgprobe.read(admin, database=database, postmaster=postmaster)
    with pgprobe.connect(_url(database)):
        pass
    pgprobe.wait_for_no_backends(admin, database=database, keep=set())  # an exiting backend flushes
    return pgprobe.read(admin, database=database, postmaster=postmaster).xact_commit - before.xact_commit


def test_a_new_connection_commits_transactions(admin, database):
    """Why the bench opens its web workers' connections before a window opens: a backend's start-up
    commits transactions of its own (one on PostgreSQL 15)."""
    assert _start_up_transactions(admin, database) >= 1


def test_the_postgres_processes_and_their_cpu_are_found(admin):
    postmaster = pgprobe.postmaster_pid(admin)
    backend = admin.execute("SELECT pg_backend_pid()").fetchone()[0]
    before = pgprobe.ServerTicks.read(postmaster)
    assert backend in before.children
    assert os.getpid() not in before.children
    admin.execute("SELECT count(*) FROM generate_series(1, 3000000)")
    after = pgprobe.ServerTicks.read(postmaster)
    assert after.children[backend] > before.children[backend]
    assert after.ticks_since(before) >= after.children[backend] - before.children[backend]


def test_an_exited_backend_is_counted_once(admin):
    """A backend that exits inside the window is counted through the postmaster's reaped time,
    less what it had spent before the window."""
    postmaster = pgprobe.postmaster_pid(admin)
    other = pgprobe.connect(_url("postgres"))
    other.execute("SELECT count(*) FROM generate_series(1, 3000000)")
    before = pgprobe.ServerTicks.read(postmaster)
    pid = other.execute("SELECT pg_backend_pid()").fetchone()[0]
    spent_before = before.children[pid]
    other.close()
    # A backend leaves pg_stat_activity before its process has exited and been reaped: wait for
    # the process itself.
    deadline = time.monotonic() + 20
    while pid in (after := pgprobe.ServerTicks.read(postmaster)).children:
        assert time.monotonic() < deadline, f"backend {pid} did not exit"
        time.sleep(0.05)
    # Not the backend's whole life again: its time before the window is not in the difference.
    assert after.ticks_since(before) < spent_before


def test_wal_is_attributed_to_the_database_that_wrote_it(admin, database):
    """The bench's Postgres may be shared: WAL is counted per database from the records' relations."""
    other = f"{database}_other"
    admin.execute(f'DROP DATABASE IF EXISTS "{other}" WITH (FORCE)')
    admin.execute(f'CREATE DATABASE "{other}"')
    try:
        with pgprobe.connect(_url(database)) as ours, pgprobe.connect(_url(other)) as theirs:
            for conn in (ours, theirs):
                conn.execute("CREATE TABLE written (n int, note text)")
            start = admin.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]
            ours.execute("INSERT INTO written SELECT g, 'ours' FROM generate_series(1, 100) g")
            theirs.execute("INSERT INTO written SELECT g, repeat('theirs', 20) FROM generate_series(1, 5000) g")
            end = admin.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]
            our_wal = pgprobe.database_wal_bytes(ours, start_lsn=start, end_lsn=end)
            their_wal = pgprobe.database_wal_bytes(theirs, start_lsn=start, end_lsn=end)
    finally:
        admin.execute(f'DROP DATABASE "{other}" WITH (FORCE)')
    assert our_wal is not None and their_wal is not None
    assert 100 * 30 < our_wal < their_wal  # a heap insert record is over 30 bytes
