"""The drainer: buffered runs into Postgres, fairly across tenants, at a bounded rate (DESIGN §7).

One round: rotate organisations (then environments within each), lease at most DRAIN_BATCH_SIZE
entries per environment and at most one round's budget in all, wait for the shared rate limiter,
hand the whole round to the sink (one transaction), then ack it in one Redis round trip.

At least once, and idempotent: entries are leased, written, then acked. A drainer that dies
mid-round leaves leases that expire and are re-driven; the sink treats a row that already exists
with the same id as written. Nothing is acked without its row.
"""

import logging
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from mollifier import buffer, conf, keys, metrics, scripts
from mollifier import client as redis_client
from mollifier.codec import Entry
from mollifier.exceptions import BufferUnavailable, SinkUnavailable
from mollifier.sink import Sink, SinkReport, get_sink

logger = logging.getLogger(__name__)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def round_budget() -> int:
    """Entries per round: a twentieth of a second's worth of writes, so the rate limiter's
    granularity stays within 5% of the cap."""
    return max(1, conf.drain_max_rows_per_sec() // 20)


def backoff_ms(attempts: int) -> int:
    """Exponential backoff with jitter, capped: retries spread out instead of retrying each tick."""
    base = min(conf.drain_backoff_max_ms(), conf.drain_backoff_base_ms() * 2 ** max(0, attempts - 1))
    return int(base * random.uniform(0.8, 1.2))


@dataclass
class RoundResult:
    popped: int = 0
    reclaimed: int = 0  # expired leases moved back to ready before popping
    report: SinkReport = field(default_factory=SinkReport)
    acked: int = 0
    retried: int = 0  # given back with a backoff (database unavailable, or an entry failed)
    failed: int = 0  # marked terminal: the next round writes their SYSTEM_FAILURE rows
    envs: int = 0
    written: list[int] = field(default_factory=list)  # trigger times (ms) of the runs written, for dwell


class Drainer:
    """Drains rounds until stopped. Any number may run at once, in any number of processes."""

    def __init__(
        self, *, sink: Sink | None = None, stop: threading.Event | None = None, clock: Callable[[], int] = now_ms
    ):
        self.sink = sink or get_sink()
        self.stop = stop or threading.Event()
        self.clock = clock
        self._org_turn = 0
        self._env_turns: dict[str, int] = {}

    # -- one round --------------------------------------------------------------------------

    def drain_round(self) -> RoundResult:
        return self._finish_round(self._start_round())

    def _start_round(self) -> tuple[RoundResult, list[Entry], list[tuple[str, str, str]]]:
        """Lease a round (Redis only: safe on the prefetch thread)."""
        result = RoundResult()
        entries, missing = self._pop_round(result)
        result.popped = len(entries)
        metrics.LEASES_RECLAIMED.inc(result.reclaimed)
        return result, entries, missing

    def _finish_round(self, started_round) -> RoundResult:
        """Wait for the rate limiter, write the round, ack it."""
        result, entries, missing = started_round
        if entries or missing:
            if entries:
                self._wait_for_rate(len(entries))
            started = time.monotonic()
            self._write(entries, missing, result)
            metrics.DRAIN_ROUND_SECONDS.observe(time.monotonic() - started)
            report = result.report
            for outcome, count in zip(("inserted", "already", "failed", "dropped"), report.astuple()):
                metrics.DRAINED_ROWS.labels(outcome=outcome).inc(count)
            written_at = self.clock()
            for accepted_at_ms in result.written:
                metrics.DWELL_SECONDS.observe(max(0, written_at - accepted_at_ms) / 1000)
        return result

    def _pop_round(self, result: RoundResult) -> tuple[list[Entry], list[tuple[str, str, str]]]:
        orgs = buffer.active_orgs()
        if not orgs:
            return [], []
        start = self._org_turn % len(orgs)
        self._org_turn += 1
        budget, batch, lease = round_budget(), conf.drain_batch_size(), conf.drain_lease_ms()
        entries: list[Entry] = []
        missing: list[tuple[str, str, str]] = []
        for org in orgs[start:] + orgs[:start]:
            envs = buffer.active_envs(org)
            if not envs:
                continue
            turn = self._env_turns.get(org, 0)
            self._env_turns[org] = turn + 1
            turn %= len(envs)
            for env in envs[turn:] + envs[:turn]:
                if budget <= 0:
                    return entries, missing
                popped = buffer.pop(
                    org_id=org, env_id=env, limit=min(batch, budget), lease_ms=lease, now_ms=self.clock()
                )
                result.envs += 1
                result.reclaimed += popped.reclaimed
                entries += popped.entries
                missing += [(org, env, run_id) for run_id in popped.missing]
                budget -= len(popped.entries)
        return entries, missing

    def _wait_for_rate(self, rows: int) -> None:
        """Block until the shared bucket grants ``rows`` (the round is leased: it finishes even
        when a stop was asked meanwhile)."""
        redis = redis_client.get()
        while (
            wait := int(
                scripts.DRAIN_RATE(
                    keys=[keys.drain_rate()], args=[self.clock(), rows, conf.drain_max_rows_per_sec()], client=redis
                )
            )
        ) > 0:
            time.sleep(wait / 1000)

    def _write(self, entries: list[Entry], missing: list[tuple[str, str, str]], result: RoundResult) -> None:
        try:
            result.report = self.sink(entries) if entries else SinkReport()
        except SinkUnavailable:
            logger.warning("mollifier.drain.database_unavailable entries=%d", len(entries), exc_info=True)
            metrics.DRAIN_FAILURES.labels(cause="database_unavailable").inc()
            for entry in entries:
                self._give_back(entry, result, "database_unavailable", "the database could not be reached")
            self._ack([], missing, result)
            return
        except Exception:
            # Some entry cannot be written: find which, one transaction each.
            logger.exception("mollifier.drain.round_failed entries=%d; isolating", len(entries))
            self._write_one_by_one(entries, result)
            self._ack([], missing, result)
            return
        result.written += [entry.accepted_at_ms for entry in entries]
        self._ack(entries, missing, result)

    def _write_one_by_one(self, entries: list[Entry], result: RoundResult) -> None:
        for entry in entries:
            try:
                result.report += self.sink([entry])
            except SinkUnavailable:
                self._give_back(entry, result, "database_unavailable", "the database could not be reached")
                continue
            except Exception as error:
                logger.exception("mollifier.drain.entry_failed run=%s attempts=%d", entry.run_id, entry.attempts + 1)
                metrics.DRAIN_FAILURES.labels(cause="entry_failed").inc()
                if entry.attempts + 1 >= conf.drain_max_attempts() or entry.terminal_error:
                    result.failed += buffer.fail(
                        entry,
                        now_ms=self.clock(),
                        code="attempts_exhausted",
                        message=f"{type(error).__name__}: {error}",
                    )
                    metrics.DRAIN_FAILURES.labels(cause="marked_terminal").inc()
                else:
                    self._give_back(entry, result, type(error).__name__, str(error))
                continue
            result.written.append(entry.accepted_at_ms)
            self._ack([entry], [], result)

    def _give_back(self, entry: Entry, result: RoundResult, code: str, message: str) -> None:
        """Return a leased entry to ready after a backoff that grows with its attempts."""
        result.retried += bool(
            buffer.retry(
                entry, now_ms=self.clock(), backoff_ms=backoff_ms(entry.attempts + 1), code=code, message=message
            )
        )

    def _ack(self, entries: list[Entry], missing: list[tuple[str, str, str]], result: RoundResult) -> None:
        try:
            result.acked += buffer.ack(entries, now_ms=self.clock(), missing=missing)
        except BufferUnavailable:
            # The rows are committed. The leases expire and the entries are re-driven; the sink
            # then finds their rows and they are acked: no duplicate, no failure row.
            logger.warning("mollifier.drain.ack_failed entries=%d", len(entries), exc_info=True)
            metrics.DRAIN_FAILURES.labels(cause="ack_failed").inc()

    def drain_environment(self, *, org_id: str, env_id: str) -> RoundResult:
        """One round for one environment only (the dashboard's "drain now"), under the same rate cap."""
        result = RoundResult()
        popped = buffer.pop(
            org_id=org_id,
            env_id=env_id,
            limit=min(conf.drain_batch_size(), round_budget()),
            lease_ms=conf.drain_lease_ms(),
            now_ms=self.clock(),
        )
        result.popped, result.reclaimed, result.envs = len(popped.entries), popped.reclaimed, 1
        missing = [(org_id, env_id, run_id) for run_id in popped.missing]
        if popped.entries:
            self._wait_for_rate(len(popped.entries))
        if popped.entries or missing:
            self._write(popped.entries, missing, result)
        return result

    # -- the loop ---------------------------------------------------------------------------

    def run(self, *, once: bool = False, on_round: Callable[[RoundResult], None] | None = None) -> None:
        """Drain until ``stop`` is set (or, with ``once``, until the buffer has nothing ready).

        While a round is written to Postgres, the next one is leased from Redis on a second thread:
        the two waits overlap (each was ~20% of a round). A leased round is always finished, also
        when a stop arrives meanwhile. Redis failures are logged and retried with a capped backoff.
        """
        failures = 0
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="mollifier-lease") as prefetch:
            ahead: Future | None = None
            while True:
                try:
                    started_round = ahead.result() if ahead is not None else self._start_round()
                    ahead = None
                    if started_round[0].popped and not self.stop.is_set():
                        ahead = prefetch.submit(self._start_round)
                    result = self._finish_round(started_round)
                    failures = 0
                except BufferUnavailable:
                    ahead = None
                    failures += 1
                    logger.warning("mollifier.drain.redis_unavailable failures=%d", failures, exc_info=True)
                    metrics.DRAIN_FAILURES.labels(cause="redis_unavailable").inc()
                    if self.stop.wait(backoff_ms(failures) / 1000):
                        return
                    continue
                if on_round:
                    on_round(result)
                if ahead is not None:
                    continue  # a leased round is waiting: finish it, stop or not
                if self.stop.is_set():
                    return
                if result.popped == 0 and result.acked == 0:
                    if once and not self._has_waiting():
                        return
                    self.stop.wait(conf.drain_idle_sleep_ms() / 1000)

    def _has_waiting(self) -> bool:
        """Anything not yet materialised (ready, backing off, or leased)?"""
        return any(buffer.buffered_count(org) for org in buffer.active_orgs())
