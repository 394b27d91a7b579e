"""Parsing the duration and date strings of trigger options, as the official server does.

Two grammars: the idempotency-key TTL is strict (``^\\d+[smhd]$``); ``delay`` and ``ttl`` take the
looser natural form (``1w2d3h4m5s``, ``hr`` for hours). Dates are ISO 8601; a string that is not a
valid date is rejected, never read as "now" or as truthy.
"""

import re
from datetime import UTC, datetime, timedelta

from django.utils import timezone
from django.utils.dateparse import parse_datetime

# Digits are bounded: a longer number is past MAX_DURATION anyway, and converting thousands of
# digits (or building a timedelta from them) must not cost or crash anything.
_IDEMPOTENCY_TTL = re.compile(r"^(\d{1,12})([smhd])$")
_NATURAL = re.compile(r"^(?:(\d{1,12})w)?(?:(\d{1,12})d)?(?:(\d{1,12})(?:hr|h))?(?:(\d{1,12})m)?(?:(\d{1,12})s)?$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
# Extended ISO 8601 only (what Date.toISOString sends): "11111111" is not a date here.
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|[+-]\d{2}:?\d{2})?)?$")
# Far enough for any real schedule, small enough that datetime arithmetic cannot overflow.
MAX_DURATION = timedelta(days=3650)
DELAY_HELP = f'Must be a duration like "30s" or "1h30m", or an ISO 8601 date, at most {MAX_DURATION.days} days ahead.'


def parse_idempotency_ttl(value: str) -> timedelta | None:
    match = _IDEMPOTENCY_TTL.match(value)
    if not match:
        return None
    seconds = int(match[1]) * _UNIT_SECONDS[match[2]]
    return timedelta(seconds=seconds) if seconds <= MAX_DURATION.total_seconds() else None


def parse_natural_duration(value: str) -> timedelta | None:
    match = _NATURAL.match(value.strip())
    if not match or not any(match.groups()):
        return None
    weeks, days, hours, minutes, seconds = (int(g) if g else 0 for g in match.groups())
    total = weeks * 604800 + days * 86400 + hours * 3600 + minutes * 60 + seconds
    return timedelta(seconds=total) if total <= MAX_DURATION.total_seconds() else None


def parse_date(value: str) -> datetime | None:
    """An aware datetime for an extended ISO 8601 string, or None when it is not one."""
    if len(value) > 64 or not _ISO_DATE.match(value.strip()):
        return None
    try:
        parsed = parse_datetime(value.strip())
    except ValueError:
        return None
    if parsed is None:
        return None
    if timezone.is_naive(parsed):
        parsed = timezone.make_aware(parsed, UTC)
    return parsed


def parse_delay(value: str, *, now: datetime) -> datetime | None:
    """When a run with ``delay`` should start: ``now`` + a duration, or an ISO date within
    MAX_DURATION from now (a date in the past means "now")."""
    if len(value) > 64:
        return None
    if (duration := parse_natural_duration(value)) is not None:
        return now + duration
    date = parse_date(value)
    return date if date is not None and date <= now + MAX_DURATION else None
