"""Settings of the run API that are not limits of its input, read from ``settings.TRIGGER`` at call
time (tests override them). Each is in the README's configuration table."""

from typing import Any

from django.conf import settings


def _get(name: str):
    return settings.TRIGGER[name]


def buffer_scan_per_page() -> int:
    """Buffered runs a listing reads from Redis at a time."""
    return int(_get("LIST_BUFFER_SCAN"))


def buffer_scan_max() -> int:
    """Buffered runs a listing page may read before it gives up on filling the page (it then ends
    empty, with a cursor to carry on from)."""
    return int(_get("LIST_BUFFER_SCAN_MAX"))


def mid_drain_wait_seconds() -> float:
    """How long a change to a run a drainer holds waits for it before answering 503."""
    return float(_get("MID_DRAIN_WAIT_SECONDS"))


def mid_drain_poll_seconds() -> float:
    return float(_get("MID_DRAIN_POLL_SECONDS"))


def metadata_cas_attempts() -> int:
    """Compare-and-set attempts of a metadata change to a buffered run under contention."""
    return int(_get("METADATA_CAS_ATTEMPTS"))


def keyed_marker_keep_seconds() -> int:
    """A keyed marker is kept at least this long after it was made, also once its environment's
    buffer is empty: an environment that stays tripped while the drain keeps up would otherwise
    make one (a Postgres write, a Redis round trip) for most of its keyed triggers."""
    return int(_get("KEYED_MARKER_KEEP_SECONDS"))


def _packets(name: str) -> Any:
    return getattr(settings, "PACKETS")[name]  # noqa: B009  (getattr: its value types are the settings', not object)


def packet_max_bytes() -> int:
    """The largest packet an upload may store (PACKETS_MAX_BYTES; 413 past it)."""
    return int(_packets("MAX_BYTES"))


def packet_url_ttl_seconds() -> int:
    return int(_packets("URL_TTL_SECONDS"))


def packet_cleanup_grace_seconds() -> int:
    return int(_packets("CLEANUP_GRACE_SECONDS"))


def packet_public_url() -> str:
    return str(_packets("PUBLIC_URL"))
