"""Prometheus metrics (prometheus-client). Labels are small fixed sets — never organisation or
environment ids, whose number is unbounded; per-tenant detail is in the admin dashboard.

With several processes (gunicorn workers, drainers on one host) set PROMETHEUS_MULTIPROC_DIR to a
shared empty directory, as `make run` does; `/metrics` then sums every process's counters.
"""

import os
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector

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

# Labelled counters start at zero (the Prometheus convention): a rate() or an alert on a series that
# has never been incremented would otherwise see nothing rather than 0.
for _outcome in OUTCOMES:
    DRAINED_ROWS.labels(outcome=_outcome)
for _cause in ("database_unavailable", "entry_failed", "marked_terminal", "parked", "ack_failed", "redis_unavailable"):
    DRAIN_FAILURES.labels(cause=_cause)
for _outcome in ("claimed", "buffered", "resolved", "unavailable", "timeout"):
    CLAIM_OUTCOMES.labels(outcome=_outcome)


class BufferCollector:
    """Buffer gauges read from Redis at scrape time (so every process reports the same truth)."""

    def collect(self):
        from mollifier import buffer
        from mollifier.stats import env_stats

        now_ms = time.time_ns() // 1_000_000
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
        for name, (documentation, value) in gauges.items():
            gauge = GaugeMetricFamily(name, documentation)
            gauge.add_metric([], value)
            yield gauge


METRICS = (
    GATE_DECISIONS,
    CLAIM_OUTCOMES,
    DRAINED_ROWS,
    DRAIN_ROUND_SECONDS,
    DWELL_SECONDS,
    LEASES_RECLAIMED,
    DRAIN_FAILURES,
    REDIS_BREAKER_STATE,
    REDIS_BREAKER_OPENS,
    REDIS_BREAKER_REJECTED,
)


def exposition() -> bytes:
    """The text exposition: every process's counters in multiprocess mode (else this process's),
    plus the buffer gauges."""
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        MultiProcessCollector(registry)
    else:
        for metric in METRICS:
            registry.register(metric)
    registry.register(BufferCollector())
    return generate_latest(registry)
