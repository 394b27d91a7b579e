"""Mollifier settings, read from ``settings.MOLLIFIER`` at call time (tests override them).

Every knob, its environment variable and its default are listed in the README's configuration
table; ``trigger_project/settings.py`` fills the dict.
"""

import enum

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured


def _get(name: str):
    return settings.MOLLIFIER[name]


def _positive(name: str) -> int:
    value = int(_get(name))
    if value <= 0:
        # A threshold of 0 would mollify every trigger; a window of 0 divides by zero.
        raise ImproperlyConfigured(f"MOLLIFIER_{name} must be positive, got {value}.")
    return value


def enabled() -> bool:
    return bool(_get("ENABLED"))


def shadow_mode() -> bool:
    return bool(_get("SHADOW_MODE"))


def trip_threshold() -> int:
    return _positive("TRIP_THRESHOLD")


def trip_window_ms() -> int:
    return _positive("TRIP_WINDOW_MS")


def hold_ms() -> int:
    return _positive("HOLD_MS")


def global_trip_threshold() -> int:
    """0 turns the global gate off."""
    return max(0, int(_get("GLOBAL_TRIP_THRESHOLD")))


def global_trip_window_ms() -> int:
    return _positive("GLOBAL_TRIP_WINDOW_MS")


def global_hold_ms() -> int:
    return _positive("GLOBAL_HOLD_MS")


def claim_ttl_seconds() -> int:
    return _positive("CLAIM_TTL_SECONDS")


def claim_min_ttl_seconds() -> int:
    return _positive("CLAIM_MIN_TTL_SECONDS")


def claim_wait_ms() -> int:
    return _positive("CLAIM_WAIT_MS")


def claim_poll_ms() -> int:
    return _positive("CLAIM_POLL_MS")


def org_buffer_cap() -> int:
    return _positive("ORG_BUFFER_CAP")


def org_buffer_max_bytes() -> int:
    """Bytes of waiting entries one organisation may hold (snapshots and fields); 0: no byte cap."""
    return max(0, int(_get("ORG_BUFFER_MAX_BYTES")))


def redis_memory_limit_percent() -> int:
    """New entries are refused once Redis uses this share of its maxmemory; 0 turns the guard off."""
    value = int(_get("REDIS_MEMORY_LIMIT_PERCENT"))
    if not 0 <= value <= 100:
        raise ImproperlyConfigured(f"MOLLIFIER_REDIS_MEMORY_LIMIT_PERCENT must be 0 to 100, got {value}.")
    return value


def redis_memory_check_ms() -> int:
    """How long a process trusts its reading of Redis's memory (0: read before every accept)."""
    return max(0, int(_get("REDIS_MEMORY_CHECK_MS")))


def ack_grace_ms() -> int:
    return _positive("ACK_GRACE_MS")


def store_rows() -> bool:
    return bool(_get("STORE_ROWS"))


def drain_batch_size() -> int:
    return _positive("DRAIN_BATCH_SIZE")


def drain_max_rows_per_sec() -> int:
    return _positive("DRAIN_MAX_ROWS_PER_SEC")


class RateMode(enum.StrEnum):
    ADAPTIVE = "adaptive"
    FIXED = "fixed"


def drain_rate_mode() -> str:
    """``adaptive`` (the default): the drain rate follows Postgres between the floor and the
    ceiling; ``fixed``: the ceiling, always."""
    mode = str(_get("DRAIN_RATE_MODE")).strip().lower()
    if mode not in (RateMode.ADAPTIVE, RateMode.FIXED):
        raise ImproperlyConfigured(f"MOLLIFIER_DRAIN_RATE_MODE must be adaptive or fixed, got {mode!r}.")
    return mode


def drain_min_rows_per_sec() -> int:
    """The adaptive rate's floor (never above the ceiling): the drain always makes this much progress."""
    return min(_positive("DRAIN_MIN_ROWS_PER_SEC"), drain_max_rows_per_sec())


def drain_target_commit_ms() -> int:
    """A round whose write (begin to commit) takes longer than this cuts the adaptive rate."""
    return _positive("DRAIN_TARGET_COMMIT_MS")


def drain_rate_rise_seconds() -> int:
    """Seconds of healthy rounds the adaptive rate takes to climb from the floor to the ceiling."""
    return _positive("DRAIN_RATE_RISE_SECONDS")


def drain_rate_cut_percent() -> int:
    """How much of the adaptive rate a slow or failed round takes away (1 to 99 percent)."""
    value = int(_get("DRAIN_RATE_CUT_PERCENT"))
    if not 0 < value < 100:
        raise ImproperlyConfigured(f"MOLLIFIER_DRAIN_RATE_CUT_PERCENT must be 1 to 99, got {value}.")
    return value


def drain_weights() -> dict[str, int]:
    """Environment type (lower case) → its weight in the drain under contention. Types not listed
    weigh 1. Read from ``"production:8,staging:2"`` (the environment variable) or a dict."""
    raw = _get("DRAIN_WEIGHTS")
    pairs = (
        raw.items() if isinstance(raw, dict) else (part.split(":", 1) for part in str(raw).split(",") if part.strip())
    )
    weights = {}
    for pair in pairs:
        try:
            name, value = pair
            weights[str(name).strip().lower()] = int(value)
        except ValueError:
            raise ImproperlyConfigured(f"MOLLIFIER_DRAIN_WEIGHTS must be type:weight pairs, got {raw!r}.") from None
        if weights[str(name).strip().lower()] <= 0:
            raise ImproperlyConfigured(f"MOLLIFIER_DRAIN_WEIGHTS: every weight must be positive, got {raw!r}.")
    return weights


def drain_lease_ms() -> int:
    return _positive("DRAIN_LEASE_MS")


def drain_max_attempts() -> int:
    return _positive("DRAIN_MAX_ATTEMPTS")


def drain_park_after() -> int:
    """Failed attempts at a terminal entry's failure row (after MAX_ATTEMPTS) before it is parked."""
    return _positive("DRAIN_PARK_AFTER")


def drain_backoff_base_ms() -> int:
    return _positive("DRAIN_BACKOFF_BASE_MS")


def drain_backoff_max_ms() -> int:
    return _positive("DRAIN_BACKOFF_MAX_MS")


def drain_idle_sleep_ms() -> int:
    return _positive("DRAIN_IDLE_SLEEP_MS")


def stale_after_ms() -> int:
    return _positive("STALE_AFTER_MS")


def sink_path() -> str:
    return str(_get("SINK"))


def directory_path() -> str:
    return str(_get("DIRECTORY"))


def redis_alias() -> str:
    return str(_get("REDIS_ALIAS"))


def redis_cluster_url() -> str:
    return str(_get("REDIS_CLUSTER_URL") or "")


def redis_breaker_failures() -> int:
    """Consecutive failures (timeouts, refused connections) that open the breaker; 0 turns it off."""
    return max(0, int(_get("REDIS_BREAKER_FAILURES")))


def redis_breaker_cooldown_ms() -> int:
    return _positive("REDIS_BREAKER_COOLDOWN_MS")


def redis_socket_timeout_ms() -> int:
    return _positive("REDIS_SOCKET_TIMEOUT_MS")


def redis_connect_timeout_ms() -> int:
    return _positive("REDIS_CONNECT_TIMEOUT_MS")
