"""A per-process circuit breaker in front of each Redis server (DESIGN §12).

Every command, script and pipeline goes through ``mollifier/client.py``, which asks the breaker of
the server it talks to before touching the socket, and reports back how the call went:

- **closed**: calls go through. ``MOLLIFIER_REDIS_BREAKER_FAILURES`` consecutive failures open it.
- **open**: calls fail at once with ``BreakerOpen`` (a ``BufferUnavailable``), no socket touched,
  for ``MOLLIFIER_REDIS_BREAKER_COOLDOWN_MS``. The gate and request idempotency fail open on
  ``BufferUnavailable``, so triggers go straight to Postgres without paying a timeout; a keyed
  trigger whose key no row holds, and a read that needs the buffer, answer 503 (the SDK retries).
- **half-open**: after the cooldown the probe starts — a PING on a thread of its own, started by a
  timer set as the breaker opened, or by the next call if that comes first (which fails fast like
  the others): no request ever waits on a probe, and an idle process closes its breaker too. A
  probe that answers closes the breaker; one that fails opens it for another cooldown. (Without a prober, as for a
  cluster client still being built, that next call is itself the probe.)

A failure is Redis not answering: a timeout, a refused or reset connection, a server still
loading, busy with a script, or a cluster without a working primary. An error *reply* (a script
error, OOM under ``noeviction``) is an answer: it counts as a success here, and the caller still
gets its ``BufferUnavailable``.

Why hand-written rather than pybreaker: the breaker must sit inside ``execute_command`` (a check
before, a report after), count only "not answering" failures, probe in the background so that no
request pays a hung Redis's timeout once it is known to hang (measured: with the probe on a
request, every worker stalled for the socket timeout each cooldown, `make bench` P9), and publish
its state as a multi-process Prometheus gauge. That is the hundred lines below, with no new
dependency; pybreaker wraps callables, lets a half-open call through on the caller's thread, and
would still need the same glue. Neither times calls: the time budget is redis-py's socket timeouts
(``MOLLIFIER_REDIS_SOCKET_TIMEOUT_MS``), with no retries.

Per process, one breaker per Redis server (host:port, socket path, or cluster), shared by every
thread. The drainer is not on a request path and switches its breakers off (``disable()``): its own
backoff already spaces its calls when Redis is out, and says what it waits for. Drainers are
separate processes anyway, so they could never share a web worker's breaker.
"""

import enum
import logging
import threading
import time

from mollifier import conf
from mollifier.exceptions import BufferUnavailable

logger = logging.getLogger(__name__)


class State(enum.IntEnum):
    """Values of the ``mollifier_redis_breaker_state`` gauge."""

    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


class BreakerOpen(BufferUnavailable):
    """Refused without calling Redis: the breaker for that server is open."""


class Breaker:
    """One server's breaker. What differs between dependencies — the cooldown, the threshold, the
    refusal raised, the metrics, whether breakers are on in this process — is in the methods at the
    end (the Redis buffer's here; ``trigger_project/postgres/breaker.py`` has Postgres's)."""

    dependency = "redis"  # in log lines and the probe thread's name

    def __init__(self, name: str, *, clock=time.monotonic, prober=None):
        self.name = name
        self.clock = clock
        # Called on a thread of its own to probe: returns when the server answers, raises when not.
        self.prober = prober
        self.state = State.CLOSED
        self.failures = 0  # consecutive, while closed
        self.opened_at = 0.0
        self.probe_started_at: float | None = None
        self._lock = threading.Lock()

    def admit(self) -> bool:
        """Before a call. Raises BreakerOpen, or returns whether this call is the half-open probe."""
        if self.state is State.CLOSED or not self.enabled():
            return False
        with self._lock:
            if self.state is State.CLOSED:
                return False
            now = self.clock()
            cooldown = self.cooldown_s()
            if now - self.opened_at >= cooldown and not self._probe_running(now):
                self.probe_started_at = now
                self._become(State.HALF_OPEN)
                if self.prober is None:
                    return True  # this call is the probe
                threading.Thread(
                    target=self._probe, args=(now,), name=f"{self.dependency}-probe {self.name}", daemon=True
                ).start()
            left_ms = max(0, int((self.opened_at + cooldown - now) * 1000))
        self.count_rejected()
        raise self.refusal(f"circuit breaker open (next probe in {left_ms} ms)")

    def _schedule_probe(self) -> None:
        """As the breaker opens (lock held): probe once the cooldown has passed even if no call comes,
        so an idle process closes it too (its gauge would otherwise read open until its next request,
        and that request would skip the buffer)."""
        if self.prober is None:
            return
        timer = threading.Timer(self.cooldown_s(), self._probe_when_due)
        timer.daemon = True
        timer.start()

    def _probe_when_due(self) -> None:
        with self._lock:
            now = self.clock()
            # Opened again since (that opening scheduled its own), closed, or a call started the probe.
            if self.state is not State.OPEN or self._probe_running(now) or now - self.opened_at < self.cooldown_s():
                return
            self.probe_started_at = now
            self._become(State.HALF_OPEN)
        self._probe(now)

    def _probe_running(self, now: float) -> bool:
        """A probe started and not reported; one that never reports is replaced after its budget."""
        return self.probe_started_at is not None and now - self.probe_started_at < self.probe_budget_s()

    def _probe(self, started: float) -> None:
        try:
            self.prober()
        except BaseException as error:  # whatever ends the probe's thread must not leave it half-open
            outcome: Exception | None = error if isinstance(error, Exception) else RuntimeError(repr(error))
        else:
            outcome = None
        with self._lock:
            # A probe replaced after its budget reports too late: a newer one, or a closed breaker, decides.
            if self.probe_started_at != started:
                return
        if outcome is None:
            self.succeeded(True)
        else:
            self.failed(True, outcome)

    def check(self) -> None:
        """Raise BreakerOpen when a call now would be refused, without taking the probe's turn
        (for a caller about to do costly work, such as building a buffer entry, before its call)."""
        if self.state is State.CLOSED or not self.enabled():
            return
        now = self.clock()
        with self._lock:
            refused = self.state is State.OPEN and now - self.opened_at < self.cooldown_s() or self._probe_running(now)
        if refused:
            self.count_rejected()  # a call not made is a call refused
            raise self.refusal("circuit breaker open")

    def succeeded(self, probe: bool) -> None:
        if self.state is State.CLOSED and not self.failures:
            return
        with self._lock:
            if probe or self.state is not State.OPEN:
                if self.state is not State.CLOSED:
                    logger.warning(
                        "mollifier.%s.breaker_closed %s=%s after_ms=%d",
                        self.dependency,
                        self.dependency,
                        self.name,
                        int((self.clock() - self.opened_at) * 1000),
                    )
                self.failures = 0
                self.probe_started_at = None
                self._become(State.CLOSED)

    def failed(self, probe: bool, error: Exception) -> None:
        if not self.enabled():
            return
        with self._lock:
            if probe or self.state is State.HALF_OPEN:
                self.opened_at = self.clock()
                self.probe_started_at = None
                self._become(State.OPEN)
                self._schedule_probe()
                logger.info(
                    "mollifier.%s.breaker_probe_failed %s=%s error=%s",
                    self.dependency,
                    self.dependency,
                    self.name,
                    error,
                )
                return
            if self.state is State.OPEN:
                return  # a call admitted before it opened, failing late
            self.failures += 1
            threshold = self.threshold()
            if threshold and self.failures >= threshold:
                self.opened_at = self.clock()
                self._become(State.OPEN)
                self._schedule_probe()
                self.count_opened()
                logger.warning(
                    "mollifier.%s.breaker_open %s=%s failures=%d cooldown_ms=%d error=%s",
                    self.dependency,
                    self.dependency,
                    self.name,
                    self.failures,
                    round(self.cooldown_s() * 1000),
                    error,
                )

    def released(self, probe: bool) -> None:
        """The call ended without telling either way (an error before anything was sent)."""
        if probe:
            with self._lock:
                self.probe_started_at = None

    def _become(self, state: State) -> None:
        if state is not self.state:
            self.state = state
            self.publish()

    # What is the Redis buffer's own: overridden for another dependency.

    def enabled(self) -> bool:
        return _enabled

    def cooldown_s(self) -> float:
        return conf.redis_breaker_cooldown_ms() / 1000

    def probe_budget_s(self) -> float:
        """How long a probe may take before another replaces it (Redis's PING: its socket timeout,
        well under a cooldown)."""
        return self.cooldown_s()

    def threshold(self) -> int:
        """Consecutive failures that open the breaker (0: never)."""
        return conf.redis_breaker_failures()

    def refusal(self, why: str) -> Exception:
        return BreakerOpen(f"Redis at {self.name} is not answering: {why}")

    def count_rejected(self) -> None:
        _metrics().REDIS_BREAKER_REJECTED.inc()

    def count_opened(self) -> None:
        _metrics().REDIS_BREAKER_OPENS.inc()

    def publish(self) -> None:
        _publish()


_enabled = True
_breakers: dict[str, Breaker] = {}
_registry_lock = threading.Lock()


def for_server(name: str) -> Breaker:
    """The breaker of the Redis server ``name`` (its client gives it a prober)."""
    if (found := _breakers.get(name)) is not None:
        return found
    with _registry_lock:
        return _breakers.setdefault(name, Breaker(name))


def worst_state() -> State:
    """This process's worst breaker (what the gauge reports)."""
    return max((breaker.state for breaker in list(_breakers.values())), default=State.CLOSED)


def _metrics():
    from mollifier import metrics  # metrics → sink → buffer → client → here: imported at call time

    return metrics


def _publish() -> None:
    _metrics().REDIS_BREAKER_STATE.set(int(worst_state()))


def disable() -> None:
    """Turn breakers off in this process (the drainer: its backoff spaces its calls)."""
    global _enabled
    _enabled = False
    reset()


def enable() -> None:
    global _enabled
    _enabled = True


def reset() -> None:
    """Forget every breaker's state (tests; a process that switches them off)."""
    with _registry_lock:
        _breakers.clear()
    _publish()
