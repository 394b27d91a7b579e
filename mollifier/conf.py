"""Mollifier settings, read from ``settings.MOLLIFIER`` at call time (tests override them).

Every knob, its environment variable and its default are listed in the README's configuration
table; ``trigger_project/settings.py`` fills the dict.
"""

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


def drain_batch_size() -> int:
    return _positive("DRAIN_BATCH_SIZE")


def drain_max_rows_per_sec() -> int:
    return _positive("DRAIN_MAX_ROWS_PER_SEC")


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
