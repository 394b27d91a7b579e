"""The drain rate every drainer shares: a token bucket at the allowed rate, and the AIMD controller
that moves that rate with Postgres's health (issue 17).

Adaptive (the default): each round reports its write latency, from the transaction's start to its
commit, as the drainer saw it. While the rounds' latency, smoothed over the last few rounds, stays
under ``MOLLIFIER_DRAIN_TARGET_COMMIT_MS``, the rate rises additively, by (ceiling − floor) /
``MOLLIFIER_DRAIN_RATE_RISE_SECONDS`` rows/s per second. When it goes over, or a round is refused by
the database (unreachable, a statement timeout), the rate is cut by ``MOLLIFIER_DRAIN_RATE_CUT_PERCENT``. The rate stays between ``MOLLIFIER_DRAIN_MIN_ROWS_PER_SEC``
and ``MOLLIFIER_DRAIN_MAX_ROWS_PER_SEC``. Fixed: the ceiling, always (the reports only record the
latency). Rounds are sized from the rate (a twentieth of a second of it, up to a tenth at low rates
to hold ROUND_MIN_ROWS), so a cut also shortens the transactions.

The state is one Redis hash beside the bucket (same hash tag): every drainer reads and moves the same
rate in one script (drain_rate.lua to reserve, drain_adapt.lua to report), and a cut answers a
slowdown once however many drainers saw it (see drain_adapt.lua). Settings are read at call time.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass

from mollifier import client as redis_client
from mollifier import clock, conf, keys, scripts
from mollifier.codec import as_text
from mollifier.exceptions import RateWaitTooLong

ROUND_MS = 50  # a round reserves this long a stretch of the rate,
# and at low rates up to LONGEST_ROUND_MS of it, to write ROUND_MIN_ROWS: a round's fixed cost to
# Postgres (its transaction) and Redis (its scripts) is then spread over more rows (at a cap of
# 170 rows/s, rounds of 8 rows cost Postgres 2.5 times what the rows did). The bucket grants at most
# the rate plus one round in any second, so 100 ms of the rate keeps the grants within the cap plus
# 10 % (rows are stamped when written: a round granted just before a second's end may count in the next).
LONGEST_ROUND_MS = 100
ROUND_MIN_ROWS = 25
STATE_TTL_MS = 3_600_000  # an hour without a report: the rate goes back to the ceiling


@dataclass(frozen=True)
class Grant:
    rows: int  # rows this round may write
    rate: float  # the allowed rate they were granted at (rows/s)
    epoch: int  # the shared rate's cuts so far: the round reports with it


@dataclass(frozen=True)
class Change:
    change: str  # rise | cut | held (a round reserved before the last cut) | fixed
    rate: float


def _ceiling_floor() -> tuple[int, int]:
    return conf.drain_max_rows_per_sec(), conf.drain_min_rows_per_sec()


def _reserve_call(now_ms: int, rows: int, *, granted_rate: float | None = None) -> list:
    ceiling, floor = _ceiling_floor()
    return scripts.DRAIN_RATE(
        keys=[keys.drain_rate(), keys.drain_limit(), keys.drain_minute(now_ms // 60_000)],
        args=[
            now_ms,
            rows,
            ceiling,
            floor,
            conf.drain_rate_mode(),
            ROUND_MS,
            "" if granted_rate is None else granted_rate,
            LONGEST_ROUND_MS,
            ROUND_MIN_ROWS,
        ],
        client=redis_client.get(),
    )


def reserve(limit: int, *, clock: Callable[[], int], wait_until: float | None = None) -> Grant:
    """Block until the shared bucket grants a round: at most ``limit`` rows, and at most
    ``ROUND_MS`` of the allowed rate (up to ``LONGEST_ROUND_MS`` at low rates, see ROUND_MIN_ROWS).
    Raises BufferUnavailable when Redis does not answer, and RateWaitTooLong when the grant would
    come after ``wait_until`` (a ``time.monotonic()`` instant) rather than wait for it."""
    while True:
        wait, rows, rate, epoch = _reserve_call(clock(), max(1, limit))
        if int(wait) <= 0:
            return Grant(int(rows), float(as_text(rate)), int(epoch))
        if wait_until is not None and time.monotonic() + int(wait) / 1000 > wait_until:
            raise RateWaitTooLong(f"the drain rate grants the next round in {int(wait)} ms")
        time.sleep(int(wait) / 1000)


def give_back(rows: int, grant: Grant, *, now_ms: int) -> None:
    """Return rows a round reserved but did not use (at the rate they were granted at)."""
    if rows > 0:
        _reserve_call(now_ms, -rows, granted_rate=grant.rate)


def report(grant: Grant, *, write_ms: float | None, failed: bool, rows: int, now_ms: int) -> Change:
    """Move the shared rate after a round that wrote ``rows`` in ``write_ms`` (or that the database
    refused: ``failed``); one script, see drain_adapt.lua."""
    ceiling, floor = _ceiling_floor()
    if conf.drain_rate_mode() == conf.RateMode.FIXED:
        verdict = "fixed"
    else:
        verdict = "error" if failed or write_ms is None else "ok"
    change, rate, _ = scripts.DRAIN_ADAPT(
        keys=[keys.drain_limit(), keys.drain_minute(now_ms // 60_000)],
        args=[
            now_ms,
            grant.epoch,
            verdict,
            "" if write_ms is None else round(write_ms, 3),
            ceiling,
            floor,
            (ceiling - floor) / conf.drain_rate_rise_seconds(),
            1 - conf.drain_rate_cut_percent() / 100,
            STATE_TTL_MS,
            conf.drain_target_commit_ms(),
            rows,
        ],
        client=redis_client.get(),
    )
    return Change(as_text(change), float(as_text(rate)))


@dataclass(frozen=True)
class State:
    mode: str
    rate: float  # the allowed rate now (rows/s)
    ceiling: int
    floor: int
    target_ms: int
    commit_ms: float | None  # moving average of the rounds' write latency (None before any report)
    drained: float | None  # rows/s the drainers wrote over the last second or so (None: not draining)

    @property
    def pace(self) -> float:
        """The pace a backlog drains at: the allowed rate, or what the drainers actually achieve when
        that is less (too few drainers for the rate, or each round's write slower than its share)."""
        return min(self.rate, self.drained) if self.drained else self.rate


STATE_FIELDS = ["rate", "commit_ms", "drained", "drained_at"]
DRAINED_FRESH_MS = 5_000  # an older throughput reading means the drain has stopped


def allowed(raw_rate) -> float:
    """The allowed rate from the shared hash's ``rate`` field (None or absent: the ceiling)."""
    ceiling, floor = _ceiling_floor()
    if conf.drain_rate_mode() == conf.RateMode.FIXED or raw_rate is None:
        return float(ceiling)
    return min(float(ceiling), max(float(floor), float(as_text(raw_rate))))


def from_fields(values: list, *, now_ms: int) -> State:
    """A State from an HMGET of STATE_FIELDS on the shared hash (estimate.py reads it in its pipeline)."""
    raw_rate, raw_commit, raw_drained, raw_drained_at = values
    ceiling, floor = _ceiling_floor()
    fresh = raw_drained_at is not None and now_ms - int(as_text(raw_drained_at)) <= DRAINED_FRESH_MS
    return State(
        mode=conf.drain_rate_mode(),
        rate=allowed(raw_rate),
        ceiling=ceiling,
        floor=floor,
        target_ms=conf.drain_target_commit_ms(),
        commit_ms=float(as_text(raw_commit)) if raw_commit is not None else None,
        drained=float(as_text(raw_drained)) if fresh and raw_drained is not None else None,
    )


def state(*, now_ms: int | None = None) -> State:
    """The drain rate as every process sees it (metrics, dashboard, estimates). Raises
    BufferUnavailable when Redis does not answer."""
    values = redis_client.get().hmget(keys.drain_limit(), STATE_FIELDS)
    return from_fields(values, now_ms=now_ms if now_ms is not None else clock.now_ms())


def minutes(*, now_ms: int, count: int = 60) -> list[dict]:
    """Per minute, oldest first: the mean allowed rate of the grants (None when nothing was
    drained), the mean write latency of the rounds, and the cuts."""
    last = now_ms // 60_000
    span = range(last - count + 1, last + 1)
    pipe = redis_client.get().pipeline(transaction=False)
    for minute in span:
        pipe.hmget(keys.drain_minute(minute), ["rate_sum", "rate_n", "commit_sum", "commit_n", "cuts"])
    rows = []
    for minute, (rate_sum, rate_n, commit_sum, commit_n, cuts) in zip(span, pipe.execute(), strict=True):
        rows.append(
            {
                "minute": minute,
                "rate": float(as_text(rate_sum)) / int(rate_n) if rate_n else None,
                "commit_ms": float(as_text(commit_sum)) / int(commit_n) if commit_n else None,
                "cuts": int(cuts or 0),
            }
        )
    return rows
