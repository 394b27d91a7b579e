"""Prometheus metrics (prometheus-client). Labels are small fixed sets — never organisation or
environment ids, whose number is unbounded; per-tenant detail is in the admin dashboard.

With several processes (gunicorn workers, drainers on one host) set PROMETHEUS_MULTIPROC_DIR to a
shared empty directory, as `make run` does; `/metrics` then sums every process's counters.
"""

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector

from mollifier import clock
from mollifier.exceptions import BufferUnavailable
from mollifier.sink import OUTCOMES

GATE_DECISIONS = Counter(
    "mollifier_gate_decisions_total", "Gate decisions for triggers that reached the gate.", ["decision", "reason"]
)
CLAIM_OUTCOMES = Counter(
    "mollifier_claim_outcomes_total",
    "Pre-gate idempotency claims.",
    ["outcome"],  # claimed, buffered, resolved, unavailable, timeout
)
DRAINED_ROWS = Counter(
    "mollifier_drained_rows_total",
    "Buffered runs written by drainers.",
    ["outcome"],  # inserted, already, failed, dropped, fenced (not written: the lease was taken back)
)
DRAIN_ROUND_SECONDS = Histogram(
    "mollifier_drain_round_seconds",
    "Time to write and ack one drain round.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
DWELL_SECONDS = Histogram(
    "mollifier_dwell_seconds",
    "Time from trigger to the run's row being written (buffered runs).",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 900, 3600),
)
LEASES_RECLAIMED = Counter("mollifier_leases_reclaimed_total", "Expired drain leases moved back to ready.")
DRAIN_FAILURES = Counter(
    "mollifier_drain_failures_total",
    "Drain problems by cause.",
    ["cause"],
    # database_unavailable, entry_failed, marked_terminal, parked, ack_failed, redis_unavailable
)
REDIS_BREAKER_STATE = Gauge(
    "mollifier_redis_breaker_state",
    "Redis circuit breaker: 0 closed, 1 half-open (probing), 2 open (Redis skipped). The worst of this "
    "host's live processes.",
    multiprocess_mode="livemax",
)
REDIS_BREAKER_OPENS = Counter(
    "mollifier_redis_breaker_opens_total", "Times a Redis circuit breaker opened (closed to open)."
)
REDIS_BREAKER_REJECTED = Counter(
    "mollifier_redis_breaker_rejected_total", "Redis calls refused at once because a circuit breaker was open."
)
POSTGRES_BREAKER_STATE = Gauge(
    "mollifier_postgres_breaker_state",
    "Postgres circuit breaker of the web processes: 0 closed, 1 half-open (probing), 2 open (Postgres "
    "skipped: its requests answer 503 at once, enrolled organisations' triggers are buffered). The worst "
    "of this host's live processes.",
    multiprocess_mode="livemax",
)
POSTGRES_BREAKER_OPENS = Counter(
    "mollifier_postgres_breaker_opens_total", "Times a web process's Postgres circuit breaker opened."
)
POSTGRES_BREAKER_REJECTED = Counter(
    "mollifier_postgres_breaker_rejected_total",
    "Postgres connections and statements refused at once because the circuit breaker was open.",
)

# Labelled counters start at zero (the Prometheus convention): a rate() or an alert on a series that
# has never been incremented would otherwise see nothing rather than 0.
for _outcome in OUTCOMES:
    DRAINED_ROWS.labels(outcome=_outcome)
for _cause in ("database_unavailable", "entry_failed", "marked_terminal", "parked", "ack_failed", "redis_unavailable"):
    DRAIN_FAILURES.labels(cause=_cause)
for _outcome in ("claimed", "buffered", "resolved", "unavailable", "timeout"):
    CLAIM_OUTCOMES.labels(outcome=_outcome)
# Every decision the gate counts (mollifier/gate.py `admit`), with each reason it can give: a trip is
# per environment or global, and its trigger is mollified, refused (the organisation's buffer is
# full) or, for an organisation not enrolled, only counted (shadow mode). The one bypass is the run
# API's triggerAndWait child (runs/services/trigger.py).
GATE_DECISION_REASONS = (
    ("pass_through", "under_threshold"),
    ("pass_through", "redis_error"),
    ("pass_through", "bypass:trigger_and_wait"),
    *(
        (decision, reason)
        for decision in ("mollify", "refused", "shadow")
        for reason in ("per_env_rate", "global_rate")
    ),
    # While the web process's Postgres breaker is open, an enrolled organisation's triggers are buffered.
    ("mollify", "postgres_unavailable"),
    ("refused", "postgres_unavailable"),
)
for _decision, _reason in GATE_DECISION_REASONS:
    GATE_DECISIONS.labels(decision=_decision, reason=_reason)


class BufferCollector:
    """Buffer gauges read from Redis at scrape time (so every process reports the same truth)."""

    def collect(self):
        from mollifier import buffer, conf, memory
        from mollifier import client as redis_client
        from mollifier.stats import env_stats

        now_ms = clock.now_ms()
        try:
            rows = env_stats(now_ms=now_ms)
            parked = sum(buffer.parked_count(org) for org in buffer.parked_orgs())
        except BufferUnavailable:
            up = GaugeMetricFamily("mollifier_buffer_up", "1 when the buffer's Redis answered the scrape.")
            up.add_metric([], 0)
            yield up
            return
        gauges = {
            "mollifier_buffer_up": ("1 when the buffer's Redis answered the scrape.", 1),
            "mollifier_buffer_bytes": (
                "Bytes held by waiting runs (what MOLLIFIER_ORG_BUFFER_MAX_BYTES bounds per organisation).",
                sum(buffer.buffered_bytes(org) for org in {row.org_id for row in rows} | set(buffer.parked_orgs())),
            ),
            "mollifier_buffer_depth": ("Runs waiting in the buffer (not yet written).", sum(r.waiting for r in rows)),
            "mollifier_buffer_leased": ("Buffered runs held by drainers right now.", sum(r.leased for r in rows)),
            "mollifier_buffer_expired_leases": ("Leases whose drainer is gone.", sum(r.expired_leases for r in rows)),
            "mollifier_buffer_parked": ("Buffered runs no row could be written for: waiting for an operator.", parked),
            "mollifier_buffer_environments": ("Environments with buffered runs.", len(rows)),
            "mollifier_buffer_tripped_environments": (
                "Environments whose gate trip holds.",
                sum(r.tripped for r in rows),
            ),
            "mollifier_buffer_oldest_age_seconds": (
                "Age of the oldest waiting run.",
                max((r.oldest_age_ms(now_ms) for r in rows), default=0) / 1000,
            ),
        }
        try:
            reading = memory.read(redis_client.get())
        except BufferUnavailable:  # INFO refused (a managed Redis): no memory gauges
            reading = None
        if reading is not None:
            gauges["mollifier_redis_memory_used_ratio"] = (
                "Redis used_memory / maxmemory (0 without maxmemory); new entries are refused from "
                "MOLLIFIER_REDIS_MEMORY_LIMIT_PERCENT.",
                reading.ratio,
            )
            gauges["mollifier_redis_memory_guard"] = (
                "1 while Redis is near its maxmemory: new entries refused, triggers pass through.",
                int(reading.near_full(conf.redis_memory_limit_percent())),
            )
        for name, (documentation, value) in gauges.items():
            gauge = GaugeMetricFamily(name, documentation)
            gauge.add_metric([], value)
            yield gauge


DRAIN_WRITE_SECONDS = Histogram(
    "mollifier_drain_write_seconds",
    "A drain round's write, from its transaction's start to its commit (what the adaptive rate "
    "compares with MOLLIFIER_DRAIN_TARGET_COMMIT_MS).",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
DRAIN_RATE_CUTS = Counter(
    "mollifier_drain_rate_cuts_total",
    "Cuts of the adaptive drain rate, by cause: a round slower than the target, or refused by the database.",
    ["cause"],  # slow, error
)
for _cause in ("slow", "error"):
    DRAIN_RATE_CUTS.labels(cause=_cause)


class DrainRateCollector:
    """The allowed drain rate, read from Redis at scrape time (every process reports the same)."""

    def collect(self):
        from mollifier import rate

        try:
            current = rate.state()
        except BufferUnavailable:
            return  # mollifier_buffer_up says so
        limit = GaugeMetricFamily(
            "mollifier_drain_rate_limit",
            "The drain rate the drainers may write at now, in rows per second (adaptive: between "
            "MOLLIFIER_DRAIN_MIN_ROWS_PER_SEC and MOLLIFIER_DRAIN_MAX_ROWS_PER_SEC; fixed: the latter).",
        )
        limit.add_metric([], current.rate)
        yield limit
        commit = GaugeMetricFamily(
            "mollifier_drain_commit_seconds",
            "Moving average of the drain rounds' write latency, as the drainers reported it.",
        )
        commit.add_metric([], (current.commit_ms or 0) / 1000)
        yield commit


METRICS = (
    GATE_DECISIONS,
    CLAIM_OUTCOMES,
    DRAINED_ROWS,
    DRAIN_ROUND_SECONDS,
    DWELL_SECONDS,
    LEASES_RECLAIMED,
    DRAIN_FAILURES,
    DRAIN_WRITE_SECONDS,
    DRAIN_RATE_CUTS,
    REDIS_BREAKER_STATE,
    REDIS_BREAKER_OPENS,
    REDIS_BREAKER_REJECTED,
    POSTGRES_BREAKER_STATE,
    POSTGRES_BREAKER_OPENS,
    POSTGRES_BREAKER_REJECTED,
)


def _process_registry() -> CollectorRegistry:
    """Every process's metrics in multiprocess mode (else this process's)."""
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        MultiProcessCollector(registry)
    else:
        for metric in METRICS:
            registry.register(metric)
    return registry


def exposition() -> bytes:
    """The text exposition: the processes' metrics, plus the buffer gauges."""
    registry = _process_registry()
    registry.register(BufferCollector())
    registry.register(DrainRateCollector())
    return generate_latest(registry)


def breaker_summary(dependency: str = "redis") -> tuple[int, float]:
    """(the worst state of this host's live processes' breakers for ``dependency``, redis or
    postgres, and how often they opened so far): what ``mollifier_<dependency>_breaker_state`` and
    ``_opens_total`` say, for the dashboard."""
    state, opens = 0, 0.0
    for family in _process_registry().collect():
        for sample in family.samples:
            if sample.name == f"mollifier_{dependency}_breaker_state":
                state = max(state, int(sample.value))
            elif sample.name == f"mollifier_{dependency}_breaker_opens_total":
                opens += sample.value
    return state, opens
