"""Reading runs: by id and as a filtered, keyset-paginated listing (newest first)."""

import base64
import binascii
import json
import logging
from dataclasses import dataclass, field
from datetime import datetime

from django.db.models import Q, QuerySet
from django.utils import timezone

from mollifier import buffer
from mollifier.exceptions import BufferUnavailable
from mollifier.stats import env_stats
from runs import conf, ids, json_values
from runs.exceptions import InvalidRequest, RunNotFound
from runs.models import RunStatus, RuntimeEnvironment, TaskRun
from runs.snapshots import entry_to_run, from_ms, to_ms

logger = logging.getLogger(__name__)


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
        """The cursor of a ``pagination.next/previous`` token; InvalidRequest for anything this
        server did not make (bounded: a forged token is refused before it is parsed)."""
        try:
            if len(token) > 200:
                raise ValueError("too long")
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            created_at, run_id = json_values.loads(raw)
            if not isinstance(created_at, str) or not isinstance(run_id, str) or len(run_id) > 64:
                raise ValueError("not a cursor")
            moment = datetime.fromisoformat(created_at)
            if moment.tzinfo is None:
                raise ValueError("naive time")
            return cls(moment, run_id)
        except (ValueError, TypeError, UnicodeDecodeError, binascii.Error):
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
    if filters.statuses:
        queryset = queryset.with_status(filters.statuses, now=timezone.now())
    lookups = {
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


def matches(run: TaskRun, filters: RunListFilters) -> bool:
    """The same filters as ``filter_runs``, for a buffered run (an unsaved TaskRun)."""
    checks = (
        not filters.match_nothing,
        not filters.statuses or run.status_at(timezone.now()) in filters.statuses,
        not filters.task_identifiers or run.task_identifier in filters.task_identifiers,
        not filters.versions or run.task_version in filters.versions,
        not filters.tags or bool(set(filters.tags) & set(run.tags)),
        not filters.queues or run.queue in filters.queues,
        not filters.machines or run.machine in filters.machines,
        not filters.regions or run.region in filters.regions,
        filters.is_test is None or run.is_test == filters.is_test,
        filters.created_from is None or run.created_at >= filters.created_from,
        filters.created_to is None or run.created_at <= filters.created_to,
        filters.batch_id is None or run.batch_id == filters.batch_id,
    )
    return all(checks)


def task_run_list(
    *,
    environment: RuntimeEnvironment,
    filters: RunListFilters,
    page_size: int,
    after: Cursor | None = None,
    before: Cursor | None = None,
) -> RunPage:
    """One page of runs, newest first by trigger time (ties broken by id), keyset-paginated, with
    the runs still in the mollifier buffer merged in (each run once: Postgres wins while a run is
    in both during its drain).

    The buffer is read before Postgres: a run that moves between the two reads is then seen in both
    (and shown once), never in neither. Redis work is bounded: TRIGGER_LIST_BUFFER_SCAN entries at a
    time; when a scan stops there, the page ends at the last entry scanned (it may be short), so no
    buffered run is skipped. When the filters reject everything scanned, scanning goes on (up to
    TRIGGER_LIST_BUFFER_SCAN_MAX entries per page), so a page is empty only at the end of the listing."""
    newest_first = before is None
    cursor = before if before is not None else after
    scan = _BufferScan(environment, filters, cursor, newest_first)
    while True:
        scan.more()
        rows = _postgres_page(environment, filters, page_size, cursor, newest_first)
        runs, more = _merge(rows, scan, page_size, newest_first)
        if runs or scan.exhausted or scan.scanned >= conf.buffer_scan_max():
            break
    if not runs and not scan.exhausted:
        # The filters rejected TRIGGER_LIST_BUFFER_SCAN_MAX buffered runs in a row: carry on from there next page.
        edge = Cursor(*scan.bound)
        return RunPage(runs=[], next=edge if newest_first else None, previous=None if newest_first else edge)
    if not newest_first:
        runs.reverse()
        return RunPage(
            runs=runs,
            next=Cursor.of(runs[-1]) if runs else None,
            previous=Cursor.of(runs[0]) if runs and more else None,
        )
    return RunPage(
        runs=runs,
        next=Cursor.of(runs[-1]) if runs and more else None,
        previous=Cursor.of(runs[0]) if runs and after is not None else None,
    )


def _merge(rows: list[TaskRun], scan: "_BufferScan", page_size: int, newest_first: bool) -> tuple[list[TaskRun], bool]:
    merged = {run.id: run for run in scan.matched}
    merged.update({run.id: run for run in rows})  # Postgres wins
    ordered = sorted(merged.values(), key=sort_key, reverse=newest_first)
    if not scan.exhausted:  # runs past the scan's bound may have unscanned buffered runs between them
        ordered = [
            run for run in ordered if (sort_key(run) >= scan.bound) == newest_first or sort_key(run) == scan.bound
        ]
    more = len(ordered) > page_size or len(rows) > page_size or not scan.exhausted
    return ordered[:page_size], more


# Statuses a buffered run can have; a filter on others never needs the buffer.
BUFFERED_STATUSES = frozenset({RunStatus.QUEUED, RunStatus.DELAYED, RunStatus.CANCELED, RunStatus.SYSTEM_FAILURE})


def _score(value: datetime) -> str:
    """A listing score for a cursor: its millisecond, or between two when it has finer precision
    (a run written directly keeps microseconds; a buffered one has whole milliseconds)."""
    ms = to_ms(value)
    return f"{ms}.5" if value.microsecond % 1000 else str(ms)


class _BufferScan:
    """The buffered runs of one environment beyond a cursor, read in chunks, in listing order."""

    def __init__(self, environment: RuntimeEnvironment, filters: RunListFilters, cursor, newest_first: bool):
        self.environment, self.filters, self.newest_first = environment, filters, newest_first
        self.matched: list[TaskRun] = []
        self.scanned = 0
        self.bound: tuple = ()
        self.exhausted = filters.match_nothing or (
            bool(filters.statuses) and not BUFFERED_STATUSES.intersection(filters.statuses)
        )
        self.cursor_key = (cursor.created_at, cursor.run_id) if cursor else None
        self.beyond = (_score(cursor.created_at), ids.to_friendly(ids.RUN, cursor.run_id)) if cursor else None
        edge = filters.created_to if newest_first else filters.created_from
        if edge is not None and (cursor is None or (edge < cursor.created_at) == newest_first):
            # Start at the filter's edge: nothing beyond it can match. An empty run id sorts
            # before every run of that millisecond, so "beyond" includes the whole millisecond.
            self.beyond = (f"{to_ms(edge)}.5" if newest_first else f"{to_ms(edge) - 1}.5", "")
        floor = filters.created_from if newest_first else filters.created_to
        self.floor = str(to_ms(floor)) if floor is not None else None

    def more(self) -> None:
        """Scan the next chunk (a batch filter reads the batch's buffered items at once instead)."""
        if self.exhausted:
            return
        try:
            if self.filters.batch_id is not None:
                entries = self._batch_entries()
                self.exhausted = True
            else:
                chunk = buffer.listing(
                    org_id=str(self.environment.organization_id),
                    env_id=str(self.environment.pk),
                    newest_first=self.newest_first,
                    limit=conf.buffer_scan_per_page(),
                    beyond=self.beyond,
                    floor=self.floor,
                )
                entries, self.exhausted = chunk.entries, chunk.exhausted
                if chunk.last is not None:
                    self.beyond = chunk.last
                    self.bound = (from_ms(int(float(chunk.last[0]))), ids.from_friendly(ids.RUN, chunk.last[1]))
                self.scanned += conf.buffer_scan_per_page()
        except BufferUnavailable:
            logger.warning("runs.list.buffer_unavailable env=%s", self.environment.pk, exc_info=True)
            self.exhausted = True
            return
        env_id = str(self.environment.pk)
        runs = [entry_to_run(entry, environment=self.environment) for entry in entries if entry.env_id == env_id]
        if self.cursor_key is not None:
            runs = [run for run in runs if (sort_key(run) < self.cursor_key) == self.newest_first]
        self.matched += [run for run in runs if matches(run, self.filters)]

    def _batch_entries(self):
        org_id = str(self.environment.organization_id)
        run_ids = buffer.batch_buffered_items(org_id=org_id, batch_id=self.filters.batch_id).values()
        return buffer.get_many(org_id=org_id, run_ids=list(run_ids))


@dataclass(frozen=True)
class BufferedRunRow:
    run: TaskRun  # unsaved, built from the entry
    entry: object  # mollifier.codec.Entry
    where: str  # buffered | draining


def buffered_runs(*, search: str = "", where: str | None = None, limit: int = 100) -> list[BufferedRunRow]:
    """The newest waiting runs across every environment, for operators (the admin), optionally
    narrowed to those a drainer holds (``where="draining"``) or matching ``search`` (a run id, an
    idempotency key or a tag)."""
    now_ms = int(timezone.now().timestamp() * 1000)
    stats = env_stats(now_ms=now_ms)
    environments = RuntimeEnvironment.objects.select_related("organization", "project").in_bulk(
        [int(row.env_id) for row in stats if row.env_id.isdigit()]
    )
    term = search.strip()
    rows = []
    for row in stats:
        environment = environments.get(int(row.env_id)) if row.env_id.isdigit() else None
        if environment is None:
            continue
        entries = buffer.listing(org_id=row.org_id, env_id=row.env_id, newest_first=True, limit=limit).entries
        leased = buffer.leased_ids(org_id=row.org_id, env_id=row.env_id) if row.leased else set()
        for entry in entries:
            state = "draining" if entry.run_id in leased else "buffered"
            if where and where != state:
                continue
            if term and term not in entry.run_id and term != (entry.idempotency_key or "") and term not in entry.tags:
                continue
            rows.append(BufferedRunRow(entry_to_run(entry, environment=environment), entry, state))
    rows.sort(key=lambda r: sort_key(r.run), reverse=True)
    return rows[:limit]


def sort_key(run: TaskRun) -> tuple:
    return (run.created_at, run.id)


def _beyond(cursor: Cursor, newest_first: bool) -> Q:
    if newest_first:
        return Q(created_at__lt=cursor.created_at) | Q(created_at=cursor.created_at, id__lt=cursor.run_id)
    return Q(created_at__gt=cursor.created_at) | Q(created_at=cursor.created_at, id__gt=cursor.run_id)


def _postgres_page(environment, filters, page_size, cursor, newest_first) -> list[TaskRun]:
    queryset = filter_runs(TaskRun.objects.filter(environment=environment), filters).select_related("environment")
    if cursor is not None:
        queryset = queryset.filter(_beyond(cursor, newest_first))
    order = ("-created_at", "-id") if newest_first else ("created_at", "id")
    return list(queryset.order_by(*order)[: page_size + 1])
