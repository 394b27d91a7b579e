"""A per-process circuit breaker in front of Postgres, for the web processes (DESIGN §12).

Why: a Postgres that does not answer costs each request that needs it the whole wait
(``DB_CONNECT_TIMEOUT`` to connect, ``DB_ANSWER_TIMEOUT_MS`` per statement). A sync web worker
holds every other request while it waits, so health checks, reads of buffered runs and mollified
triggers, which need only Redis, queued behind requests that would fail anyway: 28–40 s seen with
two workers.

So once a connection attempt fails (refused, timed out, or answered with an error) or a statement
gets no answer within its budget, this process's breaker opens:

- requests that need Postgres answer 503 at once for ``DB_BREAKER_COOLDOWN_MS`` (the API's
  "Database unavailable, retry later", which the SDK retries; the admin's "Postgres did not answer"
  page), instead of each paying the wait;
- an enrolled organisation's triggers go to the buffer, as if its environment were tripped: the
  caller gets its run id as usual and the drainer writes the run once Postgres answers again
  (runs/services/trigger.py asks ``is_open``);
- after the cooldown a thread of its own connects and commits a transaction that wrote to the
  WAL, as a trigger's would (a read, or a transaction id alone, passes while commits hang on a lost
  synchronous standby or a stalled disk); no request waits on the probe. It closes the breaker when
  Postgres answers, or opens it for another cooldown.

At connect, any failure counts (refused, no answer within ``DB_CONNECT_TIMEOUT``, too many clients,
a wrong password). On an open connection only a statement that gets no answer counts: an error that
Postgres answers (a statement timeout under a lock, a constraint) does not, nor does a connection
found broken mid-query (a restarted server: the next connection attempt tells). An answered
statement resets the count. The machinery is the Redis buffer's breaker (``mollifier/breaker.py``);
what differs is below.

On only where ``enable()`` is called: the WSGI and ASGI applications. The drainer waits for Postgres
in its own loop (a probe every second, so that the drain starts again at once), and management
commands and tests call the database directly.
"""

import threading
from collections.abc import Callable

import psycopg
from django.conf import settings

from mollifier import breaker as base
from mollifier.breaker import State

_enabled = False
_breakers: dict[str, "PostgresBreaker"] = {}
_lock = threading.Lock()


class PostgresBreakerOpen(psycopg.OperationalError):
    """Refused without asking Postgres: the breaker is open. Django wraps it as its OperationalError."""


class PostgresBreaker(base.Breaker):
    dependency = "postgres"
    probe_budget = 0.0  # seconds: a connection attempt and a statement's answer (set by for_database)

    def enabled(self) -> bool:
        return _enabled

    def cooldown_s(self) -> float:
        # A floor: against a refused server, a zero cooldown would be a connection attempt per call.
        return max(100, int(settings.DB_BREAKER_COOLDOWN_MS)) / 1000

    def probe_budget_s(self) -> float:
        return max(self.probe_budget, self.cooldown_s())

    def threshold(self) -> int:
        return max(0, int(settings.DB_BREAKER_FAILURES))

    def refusal(self, why: str) -> Exception:
        return PostgresBreakerOpen(f"Postgres at {self.name} is not answering: {why}")

    def count_rejected(self) -> None:
        base._metrics().POSTGRES_BREAKER_REJECTED.inc()

    def count_opened(self) -> None:
        base._metrics().POSTGRES_BREAKER_OPENS.inc()

    def publish(self) -> None:
        worst = max((found.state for found in list(_breakers.values())), default=State.CLOSED)
        base._metrics().POSTGRES_BREAKER_STATE.set(int(worst))


def for_database(alias: str, name: str, prober: Callable[[], None], probe_budget_s: float) -> PostgresBreaker:
    """The breaker of the database ``alias`` (at ``name``, for the logs); ``prober`` raises when
    Postgres does not answer, within ``probe_budget_s``."""
    if (found := _breakers.get(alias)) is not None:
        return found
    with _lock:
        if (found := _breakers.get(alias)) is None:
            found = _breakers[alias] = PostgresBreaker(name, prober=prober)
            found.probe_budget = probe_budget_s
        return found


def known(alias: str) -> PostgresBreaker | None:
    """The breaker of ``alias`` when breakers are on here and it has one (none before its first
    connection)."""
    return _breakers.get(alias) if _enabled else None


def enabled_here() -> bool:
    return _enabled


def is_open(alias: str = "default") -> bool:
    """Is Postgres known not to answer right now (the breaker open, or probing)?"""
    found = _breakers.get(alias)
    return _enabled and found is not None and found.state is not State.CLOSED


def enable() -> None:
    global _enabled
    _enabled = True


def disable() -> None:
    global _enabled
    _enabled = False
    reset()


def reset() -> None:
    with _lock:
        _breakers.clear()
    base._metrics().POSTGRES_BREAKER_STATE.set(0)
