from datetime import UTC, datetime, timedelta

import pytest

from runs import durations, ids


def test_ids_are_prefix_and_internal_id():
    internal = ids.new_internal_id()
    assert len(internal) == 25 and internal.startswith("c") and internal.isalnum() and internal.islower()
    assert ids.from_friendly("run", ids.to_friendly("run", internal)) == internal
    assert ids.from_friendly("run", f"batch_{internal}") is None
    assert ids.from_friendly("run", "run_") is None
    assert ids.from_friendly("run", "run_a_b") is None


def test_later_ids_sort_later():
    assert ids.new_internal_id(now_ms=1_000) < ids.new_internal_id(now_ms=2_000)


@pytest.mark.parametrize("value, seconds", [("2s", 2), ("15m", 900), ("1h", 3600), ("30d", 2592000)])
def test_idempotency_ttl_grammar(value, seconds):
    assert durations.parse_idempotency_ttl(value) == timedelta(seconds=seconds)


@pytest.mark.parametrize("value", ["1h30m", "1w", "", "h", "10", "-1s", "1 h"])
def test_idempotency_ttl_rejects_other_forms(value):
    assert durations.parse_idempotency_ttl(value) is None


@pytest.mark.parametrize("value, seconds", [("1h30m", 5400), ("1w", 604800), ("2hr", 7200), ("1d2h3m4s", 93784)])
def test_natural_durations(value, seconds):
    assert durations.parse_natural_duration(value) == timedelta(seconds=seconds)


def test_delay_accepts_dates_and_rejects_invalid_ones():
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert durations.parse_delay("30s", now=now) == now + timedelta(seconds=30)
    assert durations.parse_delay("2026-02-01T00:00:00.000Z", now=now) == datetime(2026, 2, 1, tzinfo=UTC)
    assert durations.parse_delay("2026-02-30T00:00:00Z", now=now) is None
    assert durations.parse_delay("Invalid Date", now=now) is None
