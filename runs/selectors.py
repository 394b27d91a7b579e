"""Reading runs: by id and as a filtered, keyset-paginated listing (newest first)."""

import base64
import json
from dataclasses import dataclass, field
from datetime import datetime

from django.db.models import Q, QuerySet

from runs import ids
from runs.exceptions import InvalidRequest, RunNotFound
from runs.models import RuntimeEnvironment, TaskRun


def task_run_get(*, environment: RuntimeEnvironment, run_id: str) -> TaskRun:
    """The run with friendly id ``run_id`` in ``environment``, in Postgres or still in the buffer;
    RunNotFound otherwise (also for another tenant's run)."""
    try:
        return TaskRun.objects.get_with_fallback(environment=environment, run_id=run_id)
    except TaskRun.DoesNotExist:
        raise RunNotFound("Run not found") from None


@dataclass(frozen=True, kw_only=True)
class RunListFilters:
    statuses: list[str] = field(default_factory=list)
    task_identifiers: list[str] = field(default_factory=list)
    versions: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    is_test: bool | None = None
    created_from: datetime | None = None
    created_to: datetime | None = None
    batch_id: str | None = None  # internal id
    queues: list[str] = field(default_factory=list)
    machines: list[str] = field(default_factory=list)
    regions: list[str] = field(default_factory=list)
    match_nothing: bool = False  # a filter on something this service never has (schedules, bulk actions)


@dataclass(frozen=True)
class Cursor:
    created_at: datetime
    run_id: str

    def encode(self) -> str:
        raw = json.dumps([self.created_at.isoformat(), self.run_id], separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, token: str) -> "Cursor":
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            created_at, run_id = json.loads(raw)
            return cls(datetime.fromisoformat(created_at), str(run_id))
        except (ValueError, TypeError, UnicodeDecodeError):
            raise InvalidRequest("Invalid page cursor") from None

    @classmethod
    def of(cls, run: TaskRun) -> "Cursor":
        return cls(run.created_at, run.id)


@dataclass(frozen=True)
class RunPage:
    runs: list[TaskRun]
    next: Cursor | None
    previous: Cursor | None


def filter_runs(queryset: QuerySet[TaskRun], filters: RunListFilters) -> QuerySet[TaskRun]:
    if filters.match_nothing:
        return queryset.none()
    lookups = {
        "status__in": filters.statuses,
        "task_identifier__in": filters.task_identifiers,
        "task_version__in": filters.versions,
        "tags__overlap": filters.tags,
        "queue__in": filters.queues,
        "machine__in": filters.machines,
        "region__in": filters.regions,
    }
    queryset = queryset.filter(**{lookup: value for lookup, value in lookups.items() if value})
    if filters.is_test is not None:
        queryset = queryset.filter(is_test=filters.is_test)
    if filters.created_from is not None:
        queryset = queryset.filter(created_at__gte=filters.created_from)
    if filters.created_to is not None:
        queryset = queryset.filter(created_at__lte=filters.created_to)
    if filters.batch_id is not None:
        queryset = queryset.filter(batch_id=filters.batch_id)
    return queryset


def task_run_list(
    *,
    environment: RuntimeEnvironment,
    filters: RunListFilters,
    page_size: int,
    after: Cursor | None = None,
    before: Cursor | None = None,
) -> RunPage:
    """One page of runs, newest first by trigger time (ties broken by id), keyset-paginated."""
    queryset = filter_runs(TaskRun.objects.filter(environment=environment), filters)
    if before is not None:
        # Walk towards newer runs, then turn the page back to newest-first.
        newer = Q(created_at__gt=before.created_at) | Q(created_at=before.created_at, id__gt=before.run_id)
        rows = list(queryset.filter(newer).order_by("created_at", "id")[: page_size + 1])
        has_more = len(rows) > page_size
        runs = list(reversed(rows[:page_size]))
        return RunPage(
            runs=runs,
            next=Cursor.of(runs[-1]) if runs else None,
            previous=Cursor.of(runs[0]) if runs and has_more else None,
        )
    if after is not None:
        older = Q(created_at__lt=after.created_at) | Q(created_at=after.created_at, id__lt=after.run_id)
        queryset = queryset.filter(older)
    rows = list(queryset.order_by("-created_at", "-id")[: page_size + 1])
    runs = rows[:page_size]
    return RunPage(
        runs=runs,
        next=Cursor.of(runs[-1]) if len(rows) > page_size else None,
        previous=Cursor.of(runs[0]) if runs and after is not None else None,
    )
