"""The query string of ``runs.list``: ``filter[…]`` and ``page[…]`` parameters (API.md §7)."""

from dataclasses import dataclass
from datetime import UTC, datetime

from django.http import QueryDict
from django.utils import timezone

from runs import durations, ids
from runs.exceptions import InvalidRequest
from runs.models import RunStatus
from runs.selectors import Cursor, RunListFilters

DEFAULT_PAGE_SIZE = 25
MAX_PAGE_SIZE = 100


class QueryError(InvalidRequest):
    def __init__(self, detail: str):
        super().__init__("Query Error")
        self.extra = {"details": [detail]}


@dataclass(frozen=True)
class RunListQuery:
    filters: RunListFilters
    page_size: int
    after: Cursor | None
    before: Cursor | None
    environments: list[str]  # filter[env] of the project route: environment slugs or types


def _list(query: QueryDict, name: str) -> list[str]:
    return [part.strip() for value in query.getlist(name) for part in value.split(",") if part.strip()]


def _timestamp(query: QueryDict, name: str) -> datetime | None:
    raw = query.get(name)
    if raw is None or raw == "":
        return None
    try:
        return datetime.fromtimestamp(int(raw) / 1000, tz=UTC)
    except (ValueError, OverflowError, OSError):
        pass
    if (parsed := durations.parse_date(raw)) is not None:
        return parsed
    raise QueryError(f"{name} must be epoch milliseconds or an ISO 8601 date")


def parse_run_list_query(query: QueryDict, *, now: datetime | None = None) -> RunListQuery:
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

    batch_id = None
    match_nothing = bool(query.get("filter[bulkAction]") or query.get("filter[schedule]"))
    if batch := query.get("filter[batch]"):
        batch_id = ids.from_friendly(ids.BATCH, batch)
        match_nothing = match_nothing or batch_id is None

    filters = RunListFilters(
        statuses=statuses,
        task_identifiers=_list(query, "filter[taskIdentifier]"),
        versions=_list(query, "filter[version]"),
        tags=_list(query, "filter[tag]"),
        is_test={"true": True, "false": False}.get(is_test or ""),
        created_from=created_from,
        created_to=created_to,
        batch_id=batch_id,
        queues=_list(query, "filter[queue]"),
        machines=_list(query, "filter[machine]"),
        regions=_list(query, "filter[region]"),
        match_nothing=match_nothing,
    )

    raw_size = query.get("page[size]") or query.get("limit") or str(DEFAULT_PAGE_SIZE)
    try:
        page_size = int(raw_size)
    except ValueError:
        page_size = 0
    if not 1 <= page_size <= MAX_PAGE_SIZE:
        raise QueryError(f"page[size] must be a whole number from 1 to {MAX_PAGE_SIZE}")

    after = Cursor.decode(query["page[after]"]) if query.get("page[after]") else None
    before = Cursor.decode(query["page[before]"]) if query.get("page[before]") else None
    if after and before:
        raise QueryError("Use page[after] or page[before], not both")
    return RunListQuery(filters, page_size, after, before, _list(query, "filter[env]"))
