"""The ``filter[…]`` parameters of ``runs.list`` (API.md §7), as the merged read's vocabulary
(runs/read_fallback.py FILTERS). Pages are runs/api/pagination.py's."""

from datetime import UTC, datetime
from typing import Any

from django.http import QueryDict
from django.utils import timezone

from runs import durations, ids
from runs.api.pagination import QueryError
from runs.models import RunStatus


def _list(query: QueryDict, name: str) -> list[str]:
    return [part.strip() for value in query.getlist(name) for part in value.split(",") if part.strip()]


def _timestamp(query: QueryDict, name: str) -> datetime | None:
    raw = query.get(name)
    if raw is None or raw == "":
        return None
    if len(raw) < 20:  # epoch milliseconds (a longer number is no time this service can hold)
        try:
            return datetime.fromtimestamp(int(raw) / 1000, tz=UTC)
        except (ValueError, OverflowError, OSError):
            pass
    if (parsed := durations.parse_date(raw)) is not None:
        return parsed
    raise QueryError(f"{name} must be epoch milliseconds or an ISO 8601 date")


def run_list_filters(query: QueryDict, *, now: datetime | None = None) -> dict[str, Any]:
    """The filters of a ``runs.list`` query string, in the merged read's vocabulary."""
    now = now or timezone.now()
    statuses = _list(query, "filter[status]")
    if unknown := [s for s in statuses if s not in RunStatus.values]:
        raise QueryError(f"filter[status] has unknown statuses: {', '.join(unknown)}")

    is_test = query.get("filter[isTest]")
    if is_test not in (None, "", "true", "false"):
        raise QueryError("filter[isTest] must be true or false")

    created_from = _timestamp(query, "filter[createdAt][from]")
    created_to = _timestamp(query, "filter[createdAt][to]")
    if period := query.get("filter[createdAt][period]"):
        duration = durations.parse_natural_duration(period)
        if duration is None:
            raise QueryError('filter[createdAt][period] must be a duration like "1d" or "2h"')
        created_from = max(filter(None, [created_from, now - duration]))

    filters: dict[str, Any] = {
        "status": statuses,
        "task_identifier": _list(query, "filter[taskIdentifier]"),
        "version": _list(query, "filter[version]"),
        "tag": _list(query, "filter[tag]"),
        "queue": _list(query, "filter[queue]"),
        "machine": _list(query, "filter[machine]"),
        "region": _list(query, "filter[region]"),
        "is_test": {"true": True, "false": False}.get(is_test or ""),
        "created_from": created_from,
        "created_to": created_to,
    }
    if batch := query.get("filter[batch]"):
        filters["batch"] = ids.from_friendly(ids.BATCH, batch)
        if filters["batch"] is None:
            filters["nothing"] = True  # not a batch id: no run is in it
    if query.get("filter[bulkAction]") or query.get("filter[schedule]"):
        filters["nothing"] = True  # this service has neither bulk actions nor schedules
    return filters


def environment_names(query: QueryDict) -> list[str]:
    """``filter[env]`` of the project route: environment slugs or types."""
    return _list(query, "filter[env]")
