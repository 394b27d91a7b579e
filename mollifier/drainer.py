"""The drainer: buffered runs into Postgres, by priority, at a rate that follows Postgres (DESIGN §7).

One round: reserve its rows with the shared rate limiter (mollifier/rate.py: at most a twentieth of a
second of the allowed rate), lease them (delayed runs that are due first, then environments by
weight, mollifier/priority.py), hand the whole round to the sink (one transaction), ack it in one
Redis round trip, then report how long the write took: the allowed rate rises while rounds are
faster than the target and is cut when they are slower or fail.

At least once, and idempotent: entries are leased, written, then acked. A drainer that dies
mid-round leaves leases that expire and are re-driven; the sink treats a row that already exists
with the same id as written. Nothing is acked without its row.
"""

import logging
import random
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace

from mollifier import buffer, conf, metrics, priority, rate
from mollifier import client as redis_client
from mollifier.clock import now_ms
from mollifier.codec import Entry
from mollifier.exceptions import BufferUnavailable, RateWaitTooLong, SinkUnavailable
from mollifier.sink import OUTCOMES, Settled, Sink, SinkReport, get_sink

logger = logging.getLogger(__name__)


def backoff_ms(attempts: int) -> int:
    """Exponential backoff with jitter, capped: retries spread out instead of retrying each tick."""
    base = min(conf.drain_backoff_max_ms(), conf.drain_backoff_base_ms() * 2 ** max(0, attempts - 1))
    return int(base * random.uniform(0.8, 1.2))


@dataclass
class DrainedNow:
    """What the dashboard's "drain now" did: its rounds, and what of the environment is still ready."""

    rounds: int = 0
    acked: int = 0
    inserted: int = 0
    still_ready: int | None = 0  # None: Redis stopped answering after the rounds that went through
    database_error: str = ""
    rate_held: bool = False  # the rate granted no further round within the time allowed


@dataclass
class RoundResult:
    popped: int = 0
    reclaimed: int = 0  # expired, unpinned leases taken back to ready before popping
    report: SinkReport = field(default_factory=SinkReport)
    acked: int = 0
    retried: int = 0  # given back with a backoff (database unavailable, or an entry failed)
    failed: int = 0  # marked terminal: a later round writes their SYSTEM_FAILURE rows
    parked: int = 0  # not even a failure row could be written: left for an operator
    settled: int = 0  # expired pins of other drainers settled (acked or given back)
    due: int = 0  # delayed runs leased first because their delay was due
    rate_limit: float = 0.0  # the allowed drain rate (rows/s) after this round
    write_ms: float | None = None  # the round's write, from its transaction's start to its commit
    sink_unavailable: bool = False  # the database refused the round (unreachable, statement timeout)
    envs: int = 0
    written: list[int] = field(default_factory=list)  # trigger times (ms) of the runs written, for dwell
    database_error: str = ""  # set when the sink could not reach Postgres: the loop backs off
    database_answered: bool = False  # ... with an error a trivial query would not meet (SinkUnavailable.answered)


@dataclass
class Waiting:
    """The drain loop waits for a dependency that failed or did not answer."""

    dependency: str  # redis | postgres
    failures: int  # consecutive, this one included
    error: str
    retry_in_ms: int = 0
    until_answered: bool = False  # the dependency refused or did not answer: the wait ends early once it does


@dataclass
class StartedRound:
    result: RoundResult
    entries: list[Entry]
    missing: list[buffer.Missing]
    pins: list[buffer.Pin]  # other drainers' expired pins, found while leasing
    grant: rate.Grant | None = None  # the rows the rate limiter granted this round


def settle(
    sink: Sink, pins: list[buffer.Pin], *, now_ms: int, keep_lease: bool = False, lapsed: bool = False
) -> dict[str, Settled]:
    """Settle pins by their transaction's outcome (asked of the sink): committed rows are acked,
    transactions that did not commit give their runs back unchanged (or, with ``keep_lease``, leave
    them leased, unpinned, to the drainer that pinned them), running ones are left alone. Returns
    each run's outcome. Anyone may settle a pin: the acks and give-backs only apply while the exact
    pin still holds. ``lapsed``: the pins' leases have lapsed (see Sink.settle)."""
    outcome = sink.settle(pins, lapsed=lapsed)
    committed = [item for item in pins if outcome.get(item.run_id) == Settled.COMMITTED]
    rolled_back = [item for item in pins if outcome.get(item.run_id) == Settled.NOT_COMMITTED]
    if committed:
        holders: dict[str, dict[str, str]] = defaultdict(dict)
        for item in committed:
            holders[item.org_id][item.run_id] = item.holder
        entries = []
        for org_id, by_run in holders.items():
            for entry in buffer.get_many(org_id=org_id, run_ids=list(by_run)):
                entry.lease = by_run[entry.run_id]  # the exact pin: ack only what is still pinned so
                entries.append(entry)
        acked = buffer.ack(entries, now_ms=now_ms)
    else:
        acked = 0
    unpinned = buffer.unpin(rolled_back, now_ms=now_ms, keep_lease=keep_lease) if rolled_back else 0
    # What this call changed: pins another drainer (or the sweep) settled first are left out.
    if acked or unpinned:
        logger.info("mollifier.drain.pins_settled committed=%d not_committed=%d", acked, unpinned)
    return outcome


PROBE_EVERY_S = 1.0  # while the drainer waits for a store that refused or did not answer (Drainer._wait)
DRAIN_NOW_SECONDS = 5.0  # the dashboard's "drain now" drains this long at most: a web request's budget
ROUND_ROWS_MAX = 1_000_000  # a round is bounded by the rate (rate.ROUND_MS of it), not by this
PREFETCH_THREAD = "mollifier-lease"
ACK_THREAD = "mollifier-ack"


def _group_due(due: list[buffer.Due]) -> dict[priority.Pair, list[tuple[str, str]]]:
    """Due delayed runs by environment, earliest first, as (member, run id) pairs."""
    grouped: dict[priority.Pair, list[tuple[str, str]]] = {}
    for item in due:
        grouped.setdefault((item.org_id, item.env_id), []).append((item.member, item.run_id))
    return grouped


class Drainer:
    """Drains rounds until stopped. Any number may run at once, in any number of processes."""

    def __init__(
        self, *, sink: Sink | None = None, stop: threading.Event | None = None, clock: Callable[[], int] = now_ms
    ):
        self.sink = sink or get_sink()
        self.stop = stop or threading.Event()
        self.clock = clock
        self.scheduler = priority.Scheduler()
        self.types = priority.EnvironmentTypes()
        self._curves_at = 0  # when this drainer last offered to publish the drain curves (ms)
        self._wrote = False  # rows written since the sink was last told the drain went idle
        self._acker: ThreadPoolExecutor | None = None  # set while ``run`` drains: committed rounds are acked there
        self._acking: tuple[Future, RoundResult] | None = None  # the round whose ack is in flight

    # -- one round --------------------------------------------------------------------------

    def drain_round(self) -> RoundResult:
        return self._finish_round(self._start_round())

    def _start_round(self) -> StartedRound:
        """Reserve a round's rows with the rate limiter, then lease the round (Redis only: safe on
        the prefetch thread). Reserving first means a lease never waits on the limiter: a slow cap
        cannot outlast a lease and get the round taken back before it is written."""
        grant = rate.reserve(ROUND_ROWS_MAX, clock=self.clock)
        started = StartedRound(RoundResult(rate_limit=grant.rate), [], [], [], grant)
        try:
            self._pop_round(started, grant.rows)
        finally:
            rate.give_back(grant.rows - len(started.entries), grant, now_ms=self.clock())
        started.result.popped = len(started.entries)
        metrics.LEASES_RECLAIMED.inc(started.result.reclaimed)
        return started

    def _finish_round(self, started: StartedRound) -> RoundResult:
        """Settle expired pins, write the round, ack it, and report its write to the shared rate."""
        result = started.result
        if started.pins:
            try:
                self._settle(started.pins, result)
            except SinkUnavailable:
                logger.warning("mollifier.drain.pins_unsettled count=%d (database unavailable)", len(started.pins))
        self.types.resolve()  # environment types met while leasing (the directory reads Postgres)
        if started.entries or started.missing:
            began = time.monotonic()
            self._write(started.entries, started.missing, result)
            metrics.DRAIN_ROUND_SECONDS.observe(time.monotonic() - began)
            self._adapt(started)
            for outcome, count in zip(OUTCOMES, result.report.astuple(), strict=True):
                metrics.DRAINED_ROWS.labels(outcome=outcome).inc(count)
            written_at = self.clock()
            for accepted_at_ms in result.written:
                metrics.DWELL_SECONDS.observe(max(0, written_at - accepted_at_ms) / 1000)
        return result

    def _pop_round(self, started: StartedRound, budget: int) -> None:
        """Lease up to ``budget`` entries: due delayed runs first (at most half the round), then
        the environments' shares by weight (mollifier/priority.py)."""
        now = self.clock()
        batch = conf.drain_batch_size()
        active = buffer.active(due_by_ms=now + priority.DUE_LEAD_MS, due_limit=batch)
        if not active.envs:
            return
        if not threading.current_thread().name.startswith(PREFETCH_THREAD):  # the lease thread reads Redis only
            self.types.learn(env for envs in active.envs.values() for env in envs)
        weighed = priority.weigh(active.envs, self.types.weight)
        self.scheduler.begin(weighed.envs)
        orgs = priority.org_weights(weighed.envs, weighed.weights)
        taken: dict[priority.Pair, int] = {}
        due_budget = (budget + 1) // 2
        for (org, env), due in _group_due(active.due).items():
            pair = (org, env)
            # An environment without work (or without budget left) still has its members looked at:
            # pop_due drops those whose run is gone (acked by a settle, parked), which would otherwise
            # stay at the head of the index.
            ask = min(due_budget, batch * weighed.weights[pair] - taken.get(pair, 0)) if pair in weighed.weights else 0
            popped = buffer.pop_due(
                org_id=org, env_id=env, due=due, limit=max(0, ask), lease_ms=conf.drain_lease_ms(), now_ms=self.clock()
            )
            got = self._add(started, org, env, popped)
            started.result.due += got
            if got:
                taken[pair] = taken.get(pair, 0) + got
                due_budget -= got
                self.scheduler.charge(org, env, got, org_weight=orgs[org], env_weight=weighed.weights[pair])
        # The shares are planned on the queues' lengths, then each environment is leased once for
        # its whole share: leasing quantum by quantum took a round trip per hundred rows. A queue
        # another drainer leases from meanwhile gives fewer rows: this round is then smaller, and
        # the environment is charged only for what it gave.
        waiting = buffer.leasable_counts(list(weighed.weights), now_ms=self.clock())
        planned: dict[priority.Pair, int] = {}

        def plan(org: str, env: str, rows: int) -> int:
            got = min(rows, waiting[(org, env)] - planned.get((org, env), 0))
            planned[(org, env)] = planned.get((org, env), 0) + got
            return got

        self.scheduler.fill(
            budget=budget - sum(taken.values()),
            envs=weighed.envs,
            weights=weighed.weights,
            quantum=batch,
            take=plan,
            taken=taken,
        )
        for (org, env), rows in planned.items():
            if rows and (got := self._take(started, org, env, rows)) < rows:
                weight = weighed.weights[(org, env)]
                self.scheduler.charge(org, env, got - rows, org_weight=orgs[org], env_weight=weight)
        if (now := self.clock()) - self._curves_at >= priority.CURVE_EVERY_MS:  # and then one drainer of all
            self._curves_at = now
            try:
                priority.publish_curves(envs=weighed.envs, weights=weighed.weights, now_ms=now)
            except BufferUnavailable:
                logger.warning("mollifier.drain.curves_not_published", exc_info=True)

    def _take(self, started: StartedRound, org: str, env: str, rows: int) -> int:
        popped = buffer.pop(org_id=org, env_id=env, limit=rows, lease_ms=conf.drain_lease_ms(), now_ms=self.clock())
        return self._add(started, org, env, popped)

    @staticmethod
    def _add(started: StartedRound, org: str, env: str, popped: buffer.Popped) -> int:
        started.result.envs += 1
        started.result.reclaimed += popped.reclaimed
        started.entries.extend(popped.entries)
        started.missing.extend(buffer.Missing(org, env, run_id, popped.token) for run_id in popped.missing)
        started.pins.extend(popped.pins)
        return len(popped.entries)

    def _adapt(self, started: StartedRound) -> None:
        """Report the round's write to the shared rate (mollifier/rate.py). A round that wrote
        nothing as a whole (no write, or one that failed on an entry rather than on the database)
        says nothing about Postgres and is not reported."""
        result = started.result
        if started.grant is None or (result.write_ms is None and not result.sink_unavailable):
            return
        if result.write_ms is not None:
            metrics.DRAIN_WRITE_SECONDS.observe(result.write_ms / 1000)
        change = rate.report(
            started.grant,
            write_ms=result.write_ms,
            failed=result.sink_unavailable,
            rows=result.report.inserted + result.report.already + result.report.failed,
            now_ms=self.clock(),
        )
        result.rate_limit = change.rate
        if change.change == "cut":
            metrics.DRAIN_RATE_CUTS.labels(cause="error" if result.sink_unavailable else "slow").inc()
            logger.info(
                "mollifier.drain.rate_cut rate=%.0f write_ms=%s failed=%s",
                change.rate,
                "-" if result.write_ms is None else f"{result.write_ms:.0f}",
                result.sink_unavailable,
            )

    # -- writing -----------------------------------------------------------------------------

    def _pinner(self, entries: list[Entry], pinned: list[tuple[str, frozenset[str]]]):
        """The ``pin`` callback handed to the sink; remembers what it pinned (the transaction id and
        the runs kept), so that a write that fails after its pin is settled by the transaction's
        outcome, not guessed."""

        def pin(txid: str) -> set[str]:
            kept = buffer.pin(entries, txid=txid, now_ms=self.clock(), lease_ms=conf.drain_lease_ms())
            pinned.append((txid, frozenset(kept)))  # as pinned, whatever the sink does with the set
            return kept

        return pin

    def _sink_write(
        self, entries: list[Entry], *, last_resort: bool = False, timed: RoundResult | None = None
    ) -> SinkReport:
        """One fenced write. When it fails after pinning, the pins are settled before the error
        goes on: rows that did commit are acked, the rest are unpinned (given back unchanged).
        ``timed``: the round whose write this is (its latency and a database refusal are noted)."""
        pinned: list[tuple[str, frozenset[str]]] = []
        began = time.monotonic()
        try:
            report = self.sink.write(entries, pin=self._pinner(entries, pinned), last_resort=last_resort)
        except Exception as error:
            if timed is not None and isinstance(error, SinkUnavailable):
                timed.sink_unavailable = True
            pins = [  # built only on failure: a round that commits never needs them
                buffer.Pin(e.org_id, e.env_id, e.run_id, f"{e.lease}:{txid}")
                for txid, kept in pinned
                for e in entries
                if e.run_id in kept
            ]
            if pins:
                self._settle_after_failure(pins)
            raise
        if timed is not None:
            timed.write_ms = (time.monotonic() - began) * 1000
        return report

    def _settle_after_failure(self, pinned: list[buffer.Pin]) -> None:
        """This drainer's own write failed after its pin: rows that committed are acked; the rest
        stay leased to it, unpinned, for it to retry (entry by entry, or with a backoff)."""
        try:
            settle(self.sink, pinned, now_ms=self.clock(), keep_lease=True)
        except (SinkUnavailable, BufferUnavailable):
            # Neither store can tell right now: the pins stay, and whoever finds them once their
            # lease expires settles them (pop.lua reports them).
            logger.warning("mollifier.drain.pins_unsettled count=%d", len(pinned))

    def _write(self, entries: list[Entry], missing: list[buffer.Missing], result: RoundResult) -> None:
        try:
            result.report = self._sink_write(entries, timed=result) if entries else SinkReport()
        except SinkUnavailable as error:
            logger.warning("mollifier.drain.database_unavailable entries=%d error=%s", len(entries), error)
            metrics.DRAIN_FAILURES.labels(cause="database_unavailable").inc()
            result.database_error, result.database_answered = str(error), error.answered
            for entry in entries:
                self._give_back(entry, result, "database_unavailable", "the database could not be reached", count=False)
            self._ack([], missing, result)
            return
        except BufferUnavailable:
            raise  # the loop backs off; unpinned leases expire and are taken back
        except Exception as error:
            # Some entry cannot be written: find which, one transaction each. One line, no
            # traceback: the failing entry's own line follows (a poison entry must not flood logs).
            logger.warning(
                "mollifier.drain.round_failed entries=%d error=%s: isolating", len(entries), str(error)[:300]
            )
            # Whole entries from here on: a failure is counted against the entry's own attempts,
            # and a failure row is built from its snapshot, neither of which a stored row carries.
            self._write_one_by_one(buffer.reread(entries), result)
            self._ack([], missing, result)
            return
        result.written += [entry.accepted_at_ms for entry in entries]
        self._wrote = True
        self._ack_round(entries, missing, result)

    def _write_one_by_one(self, entries: list[Entry], result: RoundResult) -> None:
        for entry in entries:
            try:
                result.report += self._write_entry(entry)
            except SinkUnavailable as error:
                result.database_error, result.database_answered = str(error), error.answered
                self._give_back(entry, result, "database_unavailable", "the database could not be reached", count=False)
                continue
            except BufferUnavailable:
                raise
            except Exception as error:
                self._entry_failed(entry, error, result)
                continue
            result.written.append(entry.accepted_at_ms)
            self._wrote = True
            self._ack([entry], [], result)

    def _write_entry(self, entry: Entry) -> SinkReport:
        """An entry on its own; a terminal one falls back to a minimal failure row."""
        if not entry.terminal_error and entry.snapshot is not None:
            return self._sink_write([entry])
        try:
            return self._sink_write([entry])
        except (SinkUnavailable, BufferUnavailable):
            raise
        except Exception:
            return self._sink_write([entry], last_resort=True)

    def _entry_failed(self, entry: Entry, error: Exception, result: RoundResult) -> None:
        """One line per failure (no traceback per round); the entry backs off, turns terminal after
        MAX_ATTEMPTS, and is parked when not even its minimal failure row can be written."""
        attempts = entry.attempts + 1
        reason = f"{type(error).__name__}: {error}"
        metrics.DRAIN_FAILURES.labels(cause="entry_failed").inc()
        logger.warning("mollifier.drain.entry_failed run=%s attempts=%d error=%s", entry.run_id, attempts, reason[:500])
        now = self.clock()
        if entry.terminal_error or entry.snapshot is None:
            if attempts >= conf.drain_max_attempts() + conf.drain_park_after():
                if buffer.park(entry, now_ms=now, code="unwritable", message=reason):
                    result.parked += 1
                    metrics.DRAIN_FAILURES.labels(cause="parked").inc()
                    logger.error(
                        "mollifier.drain.parked run=%s org=%s env=%s error=%s",
                        entry.run_id,
                        entry.org_id,
                        entry.env_id,
                        reason[:500],
                    )
                return
            self._give_back(entry, result, type(error).__name__, str(error))
        elif attempts >= conf.drain_max_attempts():
            result.failed += buffer.fail(
                entry, now_ms=now, backoff_ms=backoff_ms(attempts), code="attempts_exhausted", message=reason
            )
            metrics.DRAIN_FAILURES.labels(cause="marked_terminal").inc()
        else:
            self._give_back(entry, result, type(error).__name__, str(error))

    def _give_back(self, entry: Entry, result: RoundResult, code: str, message: str, *, count: bool = True) -> None:
        """Return a leased entry to ready after a backoff that grows with its attempts; without
        ``count`` (the database failed, not the entry) at once: the loop's own wait spaces the
        retries, and the entry is drained as soon as the database is back."""
        attempts = buffer.retry(
            entry,
            now_ms=self.clock(),
            backoff_ms=backoff_ms(entry.attempts + 1) if count else 0,
            code=code,
            message=message,
            count=count,
        )
        result.retried += attempts >= 0

    def _ack_round(self, entries: list[Entry], missing: list[buffer.Missing], result: RoundResult) -> None:
        """Ack a committed round. While ``run`` drains, on the ack thread: the next round's write
        (Postgres) overlaps this round's ack (Redis), which was a fifth of a round's time. One
        round's ack at most is in flight; until it lands its runs stay pinned to a committed
        transaction, which every reader and mutation already settles as written."""
        if self._acker is None:
            self._ack(entries, missing, result)
            return
        self._wait_ack()
        self._acking = (self._acker.submit(self._ack, entries, missing, result), result)

    def _wait_ack(self, result: RoundResult | None = None) -> None:
        """Wait for the ack in flight (only if it is ``result``'s, when given). ``_ack`` handles a
        Redis that fails; anything else it raises surfaces here."""
        if self._acking is not None and (result is None or self._acking[1] is result):
            future, self._acking = self._acking[0], None
            future.result()

    def _ack(self, entries: list[Entry], missing: list[buffer.Missing], result: RoundResult) -> None:
        try:
            result.acked += buffer.ack(entries, now_ms=self.clock(), missing=missing)
            buffer.unindex_delayed([entry for entry in entries if entry.delay_until_ms is not None])
        except BufferUnavailable:
            # The rows are committed and the entries pinned to their transaction. Once the lease
            # expires, whoever finds the pins settles them: committed, so they are acked.
            logger.warning("mollifier.drain.ack_failed entries=%d", len(entries), exc_info=True)
            metrics.DRAIN_FAILURES.labels(cause="ack_failed").inc()

    def _settle(self, pins: list[buffer.Pin], result: RoundResult) -> None:
        outcome = settle(self.sink, pins, now_ms=self.clock(), lapsed=True)  # found by pop: their lease lapsed
        result.settled += sum(value != Settled.RUNNING for value in outcome.values())

    def drain_environment(self, *, org_id: str, env_id: str, wait_until: float | None = None) -> RoundResult:
        """One round for one environment only (``drain_environment_now``'s), under the same rate
        cap; RateWaitTooLong when the rate grants it only after ``wait_until`` (time.monotonic())."""
        grant = rate.reserve(conf.drain_batch_size(), clock=self.clock, wait_until=wait_until)
        started = StartedRound(RoundResult(rate_limit=grant.rate), [], [], [], grant)
        popped = buffer.pop(
            org_id=org_id, env_id=env_id, limit=grant.rows, lease_ms=conf.drain_lease_ms(), now_ms=self.clock()
        )
        rate.give_back(grant.rows - len(popped.entries), grant, now_ms=self.clock())
        started.entries.extend(popped.entries)
        started.missing.extend(buffer.Missing(org_id, env_id, run_id, popped.token) for run_id in popped.missing)
        started.pins.extend(popped.pins)
        started.result.popped, started.result.reclaimed, started.result.envs = len(popped.entries), popped.reclaimed, 1
        result = self._finish_round(started)
        self._went_idle()  # one round on its own: nothing follows it to link what it could not
        return result

    def drain_environment_now(self, *, org_id: str, env_id: str, seconds: float | None = None) -> DrainedNow:
        """The dashboard's "drain now": rounds of one environment, under the same rate cap, until it
        has nothing ready or ``seconds`` have passed (a round the rate grants only after them is not
        waited for: this runs inside a web request); what is still ready is left to the drainers.
        BufferUnavailable when Redis does not answer at the first round; after rounds that went
        through, those are reported."""
        drained = DrainedNow()
        deadline = time.monotonic() + (DRAIN_NOW_SECONDS if seconds is None else seconds)
        try:
            while True:
                try:
                    result = self.drain_environment(org_id=org_id, env_id=env_id, wait_until=deadline)
                except RateWaitTooLong:
                    drained.rate_held = True
                    break
                drained.rounds += 1
                drained.acked += result.acked
                drained.inserted += result.report.inserted
                if result.database_error:  # that round was given back, unwritten
                    drained.database_error = result.database_error
                    break
                if result.popped == 0 or time.monotonic() >= deadline:
                    break
            drained.still_ready = buffer.leasable_counts([(org_id, env_id)], now_ms=self.clock())[(org_id, env_id)]
        except BufferUnavailable:
            if not drained.rounds:
                raise
            drained.still_ready = None
        return drained

    # -- the loop ---------------------------------------------------------------------------

    def run(
        self,
        *,
        once: bool = False,
        on_round: Callable[[RoundResult], None] | None = None,
        on_wait: Callable[["Waiting"], None] | None = None,
    ) -> None:
        """Drain until ``stop`` is set (or, with ``once``, until the buffer has nothing ready).

        While a round is written to Postgres, the next one is leased from Redis on a second thread,
        and the round before is acked on a third: the waits overlap (each was a fifth of a round or
        more). A leased round is always finished and acked, also when a stop arrives meanwhile;
        ``on_round`` hears of a round once its ack has landed.

        A dependency that fails or hangs at any call (listing organisations, leasing, reading,
        writing, acking) makes the loop wait, with a backoff that grows with consecutive failures
        (``backoff_ms``) and resets after the first round that goes through: it never spins. Each
        wait is one log line naming the dependency (``mollifier.drain.waiting dependency=redis|
        postgres``) and is reported to ``on_wait`` (the command's progress line). Hangs cost at most
        the clients' time budgets (Redis socket timeout, ``DB_ANSWER_TIMEOUT_MS``) per call.
        """
        unreported: RoundResult | None = None  # a round whose ack may be in flight: reported once it lands

        def report(now: RoundResult | None) -> None:
            """Report the round before ``now`` (its ack landed before ``now``'s began), or, with
            ``now`` None, the last one, once its ack lands; ``now`` waits for the next call."""
            nonlocal unreported
            if unreported is not None:
                self._wait_ack(unreported)
                if on_round:
                    on_round(unreported)
            unreported = now
            if now is None:
                self._wait_ack()

        with (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix=PREFETCH_THREAD) as prefetch,
            ThreadPoolExecutor(max_workers=1, thread_name_prefix=ACK_THREAD) as acker,
        ):
            self._acker = acker
            try:
                self._drain_loop(prefetch, report, on_wait=on_wait, once=once)
            finally:
                self._acker = None
                report(None)

    def _drain_loop(
        self,
        prefetch: ThreadPoolExecutor,
        report: Callable[[RoundResult | None], None],
        *,
        on_wait: Callable[["Waiting"], None] | None,
        once: bool,
    ) -> None:
        """``run``'s loop: rounds, each leased ahead on ``prefetch``, and the waits between them."""
        failures, since, waiting_for = 0, 0.0, ""
        ahead: Future | None = None
        while True:
            waiting: Waiting | None = None
            try:
                started_round = ahead.result() if ahead is not None else self._start_round()
                ahead = None
                if started_round.result.popped and not self.stop.is_set():
                    ahead = prefetch.submit(self._start_round)
                result = self._finish_round(started_round)
                if result.database_error:
                    waiting = Waiting("postgres", 0, result.database_error, until_answered=not result.database_answered)
                    self._give_back_round(ahead)  # not written while Postgres is out
                    ahead = None
            except BufferUnavailable as error:
                ahead = None
                metrics.DRAIN_FAILURES.labels(cause="redis_unavailable").inc()
                # An error reply is an answer: a PING would answer too, so no early end of the wait.
                waiting = Waiting(
                    "redis", 0, f"{type(error).__name__}: {error}", until_answered=redis_client.unanswered(error)
                )
            if waiting is not None:
                report(None)
                while True:
                    failures = failures + 1 if waiting.dependency == waiting_for else 1
                    waiting.failures = failures
                    since, waiting_for = since or time.monotonic(), waiting.dependency
                    waiting.retry_in_ms = backoff_ms(failures)
                    logger.warning(
                        "mollifier.drain.waiting dependency=%s failures=%d retry_in_ms=%d error=%s",
                        waiting.dependency,
                        waiting.failures,
                        waiting.retry_in_ms,
                        waiting.error[:300],
                    )
                    if on_wait:
                        on_wait(waiting)
                    ended = self._wait(waiting)
                    if ended == "stopped":
                        return
                    if ended != "unanswered":
                        break
                    # Still no answer at the end of the backoff: wait again, rather than lease a
                    # round that would fail too and hold its runs meanwhile (their changes wait).
                    waiting = replace(waiting)  # a new one: on_wait may keep each
                continue
            # Redis answered this round; Postgres only when the round wrote something (an
            # empty round, its entries backing off, does not reach it).
            if failures and (waiting_for == "redis" or result.popped):
                logger.warning(
                    "mollifier.drain.recovered dependency=%s after_failures=%d waited_ms=%d",
                    waiting_for,
                    failures,
                    int((time.monotonic() - since) * 1000),
                )
                failures, since, waiting_for = 0, 0.0, ""
            report(result)
            if ahead is not None:
                continue  # a leased round is waiting: finish it, stop or not
            report(None)  # nothing follows it: its ack lands before the drainer idles or stops
            if result.popped == 0 or self.stop.is_set():
                self._went_idle()
            if self.stop.is_set():
                return
            if result.popped == 0 and result.acked == 0 and result.settled == 0:
                if once and not self._has_waiting():
                    return
                self.stop.wait(conf.drain_idle_sleep_ms() / 1000)

    def _wait(self, waiting: Waiting) -> str:
        """Sleep the backoff: "stopped" when stopped meanwhile, else "answered" (or "waited", for a
        failure that was an answer), or "unanswered" when a Postgres that refused or did not
        answer still does not at the backoff's end. Such a wait ends as soon as the store answers (a PING
        to Redis, a ``SELECT 1`` through the sink to Postgres, one a second): after a long outage
        the backoff has grown to its cap (MOLLIFIER_DRAIN_BACKOFF_MAX_MS), and the buffer would
        otherwise wait up to that long again once the store is back. A store that still hangs costs
        each probe its client's timeout. A failure that was an answer (a Redis error reply, a
        statement timeout under a lock) keeps the whole backoff: the probe would be answered while
        the failure stays."""
        deadline = time.monotonic() + waiting.retry_in_ms / 1000
        watch = waiting.until_answered
        answers = buffer.answers if waiting.dependency == "redis" else self.sink.answers
        while (left := deadline - time.monotonic()) > 0:
            if self.stop.wait(min(left, PROBE_EVERY_S) if watch else left):
                return "stopped"
            if watch and answers():
                return "answered"
        # Postgres only: a lease cannot be taken while Redis does not answer anyway, and a PING to
        # a cluster can fail for one node while rounds for the others would go through.
        return "unanswered" if watch and waiting.dependency == "postgres" else "waited"

    def _went_idle(self) -> None:
        """Once after rounds that wrote: the sink finishes what their transactions could not see."""
        if self._wrote:
            self._wrote = False
            self.sink.idle()

    def _give_back_round(self, ahead: Future | None) -> None:
        """Return a round leased ahead, unwritten (its entries keep their attempts)."""
        if ahead is not None:
            started = ahead.result()
            for entry in started.entries:
                self._give_back(
                    entry, started.result, "database_unavailable", "the database could not be reached", count=False
                )

    def _has_waiting(self) -> bool:
        """Anything a drainer could still write (ready, backing off, or leased; parked entries wait
        for an operator)?"""
        return any(buffer.buffered_count(org) > buffer.parked_count(org) for org in buffer.active_orgs())
