"""Django's PostgreSQL backend, with a client-side deadline on every wait for Postgres.

Why: ``statement_timeout`` is enforced by the server. A Postgres that stops answering (a frozen
host, a network partition, a SIGSTOPped postmaster and backends) never enforces it, and a
connected socket then waits forever: the web worker holds its request until gunicorn kills it, the
drainer holds its round past its lease. TCP keepalives and ``tcp_user_timeout`` do not help when
the peer's kernel still acknowledges (a stopped process, a loaded host), and Postgres cannot cancel
a query while the postmaster itself does not answer.

So every wait of psycopg on an open connection — a statement, a fetch, COPY, commit, rollback, the
health check — gives up after ``DB_ANSWER_TIMEOUT_MS`` (by default the statement timeout plus two
seconds, so that a live server's own timeout fires first and leaves the connection usable). The
connection is then in an unknown state mid-protocol, so it is closed, and the caller gets an
``OperationalError``: the API answers 503 (the SDK retries), the drainer backs off. Opening a
connection is bounded by ``DB_CONNECT_TIMEOUT`` as before.

psycopg funnels all of these through ``Connection.wait``, whose ``timeout`` argument does the
waiting; Django builds connections with ``Database.connect``, so this backend hands it a psycopg
whose ``connect`` builds ``DeadlineConnection``s. Use it as ``ENGINE: "trigger_project.postgres"``
(settings.py does for a postgres URL). Not for ``OPTIONS["pool"]`` connections, which psycopg_pool
builds itself (the project uses persistent connections, DESIGN §10).

In the web processes a circuit breaker stands in front of all this (``breaker.py``): once Postgres
is known not to answer, requests stop paying these waits.
"""

import types

import psycopg
from django.db.backends.postgresql import base

from trigger_project.postgres import breaker
from trigger_project.postgres.breaker import PostgresBreaker


class DeadlineConnection(psycopg.Connection):
    answer_timeout: float | None = None  # seconds; None waits as long as it takes
    breaker: PostgresBreaker | None = None  # told when an answer does not come
    budget_setting = "DB_ANSWER_TIMEOUT_MS"  # what set the wait, for the error message

    def wait(self, gen, interval=None, timeout=None):
        budget = timeout if timeout is not None else self.answer_timeout
        options = {} if interval is None else {"interval": interval}
        try:
            answer = super().wait(gen, timeout=budget, **options)
        except psycopg.errors.OperationalError as error:
            if budget is None or type(error).__name__ != "_WaitTimeout":
                raise
            # Mid-protocol, in an unknown state: never reuse it (Django reconnects on next use).
            self.pgconn.finish()
            unanswered = psycopg.OperationalError(
                f"Postgres did not answer within {budget:g} s ({self.budget_setting}); connection closed"
            )
            if self.breaker is not None:
                self.breaker.failed(False, unanswered)
            raise unanswered from error
        if self.breaker is not None and self.breaker.failures:
            self.breaker.succeeded(False)  # answered: the failures before were not in a row
        return answer


class _Psycopg(types.ModuleType):
    """psycopg as Django's backend sees it, with ``connect`` building DeadlineConnections."""

    def __getattr__(self, name):
        return getattr(psycopg, name)


Database = _Psycopg("psycopg")
Database.connect = DeadlineConnection.connect  # type: ignore[attr-defined]


class DatabaseWrapper(base.DatabaseWrapper):
    Database = Database

    def get_new_connection(self, conn_params):
        gate = self._breaker(conn_params)
        try:
            connection = super().get_new_connection(conn_params)
        except psycopg.Error as error:
            if gate is not None:
                gate.failed(False, error)  # refused, no answer within DB_CONNECT_TIMEOUT, or turned away
            raise
        if isinstance(connection, DeadlineConnection):
            connection.answer_timeout = self._answer_timeout()
            connection.breaker = gate
        # A connection made is no success yet: a server that accepts and then never answers a
        # statement must still reach the threshold (only an answered statement resets the count).
        return connection

    def ensure_connection(self):
        if self.connection is None:
            self._admit()  # atomic() opens connections without a cursor
        super().ensure_connection()

    def _cursor(self, name=None):
        self._admit()  # before the health check, which would wait for a hung server too
        return super()._cursor(name)  # type: ignore[misc]  # Django's, not in its stubs

    def _admit(self) -> None:
        """Refuse at once (Django's OperationalError) while the breaker is open."""
        if (gate := breaker.known(self.alias)) is not None:
            with self.wrap_database_errors:
                gate.admit()

    def _breaker(self, conn_params: dict) -> PostgresBreaker | None:
        if not breaker.enabled_here():
            return None
        name = f"{self.settings_dict.get('HOST') or 'local'}:{self.settings_dict.get('PORT') or 5432}"
        connect = float(conn_params.get("connect_timeout") or 0)
        budget = connect + 2 * (self._answer_timeout() or 0) + 1  # connect, a statement, the commit
        return breaker.for_database(self.alias, name, prober=lambda: self._probe(conn_params), probe_budget_s=budget)

    def _probe(self, conn_params: dict) -> None:
        """Connect, and commit a transaction that wrote to the WAL, as a trigger's does, each bounded
        as a request's would be; raises when Postgres does not answer. On the breaker's own thread,
        with a connection of its own.

        What it writes is a transactional logical-decoding message (no table, nothing to clean up):
        a commit that wrote WAL waits for a synchronous standby and for the disk, as a trigger's
        insert does, where a read, or an xid alone, passes while those commits hang. A role that may
        not call it gets an answer, which is enough to know Postgres is up."""
        with DeadlineConnection.connect(**conn_params) as connection:
            connection.answer_timeout = self._answer_timeout()
            try:
                connection.execute("SELECT pg_logical_emit_message(true, 'mollifier', 'breaker probe')")
            except (psycopg.errors.InsufficientPrivilege, psycopg.errors.UndefinedFunction):
                connection.rollback()
                return
            connection.commit()

    def is_usable(self):
        """The health check (CONN_HEALTH_CHECKS) waits no longer than a new connection would: a
        hung server then costs a request one budget, not the answer budget plus a reconnect."""
        connection = self.connection
        if breaker.is_open(self.alias):
            return False  # no waiting on a server known not to answer: closed, and reopened once it does
        if not isinstance(connection, DeadlineConnection) or connection.answer_timeout is None:
            return super().is_usable()
        budget = connection.answer_timeout
        connection.answer_timeout = min(budget, float(self.settings_dict["OPTIONS"].get("connect_timeout") or budget))
        connection.budget_setting = "the health check's DB_CONNECT_TIMEOUT"
        try:
            return super().is_usable()
        finally:
            connection.answer_timeout = budget
            connection.budget_setting = DeadlineConnection.budget_setting

    def _answer_timeout(self) -> float | None:
        milliseconds = int(self.settings_dict.get("ANSWER_TIMEOUT_MS") or 0)
        return milliseconds / 1000 if milliseconds > 0 else None
