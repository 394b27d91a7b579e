"""The merged read: runs in Postgres and runs still in the mollifier buffer, as one ordered result
(DESIGN §8). ``TaskRun.objects.with_buffered(environments=…)`` returns a ``MergedRuns``.

One order, newest first: ``(-created_at, -id)``; a buffered run keeps its trigger time to the
millisecond when it is written, so it keeps its place while it moves. Each run appears once:
Postgres wins while a run is in both stores. The buffer is always read before Postgres, so a run
written and acked between the two reads is seen in both (and shown once), never in neither.

The filter vocabulary is declared once (``FILTERS``): each filter's ORM lookup beside its predicate
on a buffered run. The API (keyset pages) and the admin (offset pages, honest counts) use it alike.
"""

import heapq
import logging
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.db.models import Q, QuerySet
from django.utils import timezone

from mollifier import buffer
from mollifier.exceptions import BufferUnavailable
from mollifier.stats import env_stats
from runs import conf, ids
from runs.managers import status_q
from runs.models import RunStatus, RuntimeEnvironment, TaskRun
from runs.snapshots import entry_to_run, from_ms, to_ms

logger = logging.getLogger(__name__)

# Statuses a buffered run can have; a filter on others never needs the buffer.
BUFFERED_STATUSES = frozenset({RunStatus.QUEUED, RunStatus.DELAYED, RunStatus.CANCELED, RunStatus.SYSTEM_FAILURE})


class Where:
    """Where a run is: the admin's "where" column and filter."""

    BUFFERED = "buffered"  # waiting in the buffer
    DRAINING = "draining"  # held by a drainer right now
    MATERIALISED = "materialised"  # written from the buffer
    DIRECT = "direct"  # written directly

    LABELS = {
        BUFFERED: "waiting in the buffer",
        DRAINING: "being written by a drainer",
        MATERIALISED: "written from the buffer",
        DIRECT: "written directly",
    }

    @classmethod
    def of(cls, run: TaskRun) -> str:
        if run.is_buffered:
            return getattr(run, "where", cls.BUFFERED)
        return cls.MATERIALISED if run.materialised_at else cls.DIRECT


def _search_q(term: str) -> Q:
    internal = term.removeprefix("run_")
    return Q(id=internal) | Q(idempotency_key=term) | Q(tags__contains=[term])


def _search_matches(run: TaskRun, term: str) -> bool:
    return term == run.friendly_id or term == run.id or term == (run.idempotency_key or "") or term in run.tags


@dataclass(frozen=True)
class RunFilter:
    """One filter: its ORM lookup and its predicate on a buffered run, side by side. ``buffered``
    says whether a buffered run can match the value at all (else the buffer is not read)."""

    query: Callable[[Any, datetime], Q]
    matches: Callable[[TaskRun, Any, datetime], bool]
    buffered: Callable[[Any], bool] = lambda value: True


FILTERS: dict[str, RunFilter] = {
    "status": RunFilter(
        lambda value, now: status_q(value, now=now),
        lambda run, value, now: run.status_at(now) in value,
        lambda value: bool(BUFFERED_STATUSES.intersection(value)),
    ),
    "task_identifier": RunFilter(
        lambda value, now: Q(task_identifier__in=value), lambda run, value, now: run.task_identifier in value
    ),
    "version": RunFilter(
        lambda value, now: Q(task_version__in=value), lambda run, value, now: run.task_version in value
    ),
    "tag": RunFilter(
        lambda value, now: Q(tags__overlap=value), lambda run, value, now: bool(set(value) & set(run.tags))
    ),
    "queue": RunFilter(lambda value, now: Q(queue__in=value), lambda run, value, now: run.queue in value),
    "machine": RunFilter(lambda value, now: Q(machine__in=value), lambda run, value, now: run.machine in value),
    "region": RunFilter(lambda value, now: Q(region__in=value), lambda run, value, now: run.region in value),
    "is_test": RunFilter(lambda value, now: Q(is_test=value), lambda run, value, now: run.is_test == value),
    "created_from": RunFilter(
        lambda value, now: Q(created_at__gte=value), lambda run, value, now: run.created_at >= value
    ),
    "created_to": RunFilter(
        lambda value, now: Q(created_at__lte=value), lambda run, value, now: run.created_at <= value
    ),
    "batch": RunFilter(lambda value, now: Q(batch_id=value), lambda run, value, now: run.batch_id == value),
    "environment": RunFilter(
        lambda value, now: Q(environment_id__in=value), lambda run, value, now: run.environment_id in value
    ),
    "where": RunFilter(
        lambda value, now: (
            (Q(materialised_at__isnull=False) if Where.MATERIALISED in value else Q(pk__in=[]))
            | (Q(buffered_at__isnull=True) if Where.DIRECT in value else Q(pk__in=[]))
        ),
        lambda run, value, now: Where.of(run) in value,
        lambda value: bool({Where.BUFFERED, Where.DRAINING} & set(value)),
    ),
    "search": RunFilter(lambda value, now: _search_q(value), lambda run, value, now: _search_matches(run, value)),
    # A filter on something this service never has (schedules, bulk actions): nothing matches.
    "nothing": RunFilter(lambda value, now: Q(pk__in=[]), lambda run, value, now: False, lambda value: False),
}


@dataclass(frozen=True)
class Position:
    """A place in the order: a run's trigger time and internal id (what a cursor encodes)."""

    created_at: datetime
    internal_id: str

    @classmethod
    def of(cls, run: TaskRun) -> "Position":
        return cls(run.created_at, run.id)

    def key(self) -> tuple[datetime, str]:
        return (self.created_at, self.internal_id)


def sort_key(run: TaskRun) -> tuple[datetime, str]:
    return (run.created_at, run.id)


@dataclass(frozen=True)
class Page:
    runs: list[TaskRun]
    next: Position | None
    previous: Position | None


@dataclass(frozen=True)
class Counts:
    buffered: int  # waiting in the buffer (including runs being written)
    postgres: int

    @property
    def total(self) -> int:
        return self.buffered + self.postgres


def _score(value: datetime) -> str:
    """A listing score for a position: its millisecond, or between two when it has finer precision
    (a run written directly keeps microseconds; a buffered one has whole milliseconds)."""
    ms = to_ms(value)
    return f"{ms}.5" if value.microsecond % 1000 else str(ms)


@dataclass
class _Stream:
    """One environment's matching buffered runs beyond a position, read in chunks in the order."""

    environment: RuntimeEnvironment
    newest_first: bool
    beyond: tuple[str, str] | None
    floor: str | None
    cursor_key: tuple | None
    runs: deque[TaskRun] = field(default_factory=deque)  # read, matching, not yet handed out
    bound: tuple | None = None  # the last position scanned
    exhausted: bool = False
    leased: set[str] | None = None

    def read(self, merged: "MergedRuns") -> int:
        """Scan the next chunk; returns how many entries were scanned. A batch filter reads the
        batch's buffered members at once instead (a batch holds at most a few thousand)."""
        org_id, env_id = str(self.environment.organization_id), str(self.environment.pk)
        if (batch_id := merged.filters.get("batch")) is not None:
            members = buffer.batch_buffered_items(org_id=org_id, batch_id=batch_id)
            entries = buffer.get_many(org_id=org_id, run_ids=list(members.values()))
            self.exhausted, scanned = True, len(entries)
        else:
            limit = conf.buffer_scan_per_page()
            chunk = buffer.listing(
                org_id=org_id,
                env_id=env_id,
                newest_first=self.newest_first,
                limit=limit,
                beyond=self.beyond,
                floor=self.floor,
            )
            entries, self.exhausted, scanned = chunk.entries, chunk.exhausted, limit
            if chunk.last is not None:
                self.beyond = chunk.last
                self.bound = (from_ms(int(float(chunk.last[0]))), ids.from_friendly(ids.RUN, chunk.last[1]) or "")
        if merged.needs_where and self.leased is None:
            self.leased = buffer.leased_ids(org_id=org_id, env_id=env_id)
        matched = []
        for entry in entries:
            if entry.env_id != env_id or entry.materialised:
                continue
            run = entry_to_run(entry, environment=self.environment)
            if self.leased is not None:
                run.where = Where.DRAINING if entry.run_id in self.leased else Where.BUFFERED  # type: ignore[attr-defined]
            if self.cursor_key is not None and (sort_key(run) < self.cursor_key) != self.newest_first:
                continue
            if merged.matches(run):
                matched.append(run)
        # In the stream's order (a batch's members come by index, not by time).
        self.runs.extend(sorted(matched, key=sort_key, reverse=self.newest_first))
        return scanned


class MergedRuns:
    """Runs of ``environments`` in Postgres (``queryset``) and in the buffer, as one result in the
    order ``(-created_at, -id)``. Lazy: nothing is read until a page, a slice, ``count`` or
    iteration asks. Filter with the vocabulary of ``FILTERS`` (``.filter(status=["QUEUED"])``)."""

    def __init__(
        self,
        queryset: QuerySet,
        *,
        environments: Iterable[RuntimeEnvironment] | None = None,
        filters: dict[str, Any] | None = None,
        must_read_buffer: bool = False,
    ):
        self.queryset = queryset
        self.environments = list(environments) if environments is not None else None
        self.filters = dict(filters or {})
        self.now = timezone.now()
        # A page that could not read the buffer: raise BufferUnavailable (a client retries) when
        # the buffer may hold runs in scope, else read rows only and say so in buffer_unavailable.
        self.must_read_buffer = must_read_buffer
        self.buffer_unavailable = False  # set when Redis did not answer: only rows were read

    # -- the vocabulary ---------------------------------------------------------------------

    def filter(self, **filters: Any) -> "MergedRuns":
        unknown = set(filters) - set(FILTERS)
        if unknown:
            raise TypeError(f"MergedRuns.filter() knows {', '.join(sorted(FILTERS))}; not {', '.join(sorted(unknown))}")
        given = {name: value for name, value in filters.items() if value not in (None, [], "", ())}
        return MergedRuns(
            self.queryset,
            environments=self.environments,
            filters={**self.filters, **given},
            must_read_buffer=self.must_read_buffer,
        )

    def matches(self, run: TaskRun) -> bool:
        return all(FILTERS[name].matches(run, value, self.now) for name, value in self.filters.items())

    @property
    def needs_where(self) -> bool:
        return "where" in self.filters

    def _rows(self) -> QuerySet:
        queryset = self.queryset
        if self.environments is not None:
            queryset = queryset.filter(environment__in=self.environments)
        for name, value in self.filters.items():
            queryset = queryset.filter(FILTERS[name].query(value, self.now))
        return queryset.select_related("environment")

    def _buffer_may_match(self) -> bool:
        return all(FILTERS[name].buffered(value) for name, value in self.filters.items())

    def _buffered_environments(self) -> list[RuntimeEnvironment]:
        """The environments in scope that have runs in the buffer (one Redis scan of the index)."""
        if not self._buffer_may_match():
            return []
        if self.environments is not None:
            return self.environments
        with_work = RuntimeEnvironment.objects.select_related("organization", "project").by_ids(
            row.env_id for row in env_stats(now_ms=to_ms(self.now))
        )
        wanted = self.filters.get("environment")
        return [env for env in with_work.values() if wanted is None or env.pk in wanted]

    def _streams(self, *, newest_first: bool, position: Position | None) -> list[_Stream]:
        beyond = (_score(position.created_at), ids.to_friendly(ids.RUN, position.internal_id)) if position else None
        edge = self.filters.get("created_to" if newest_first else "created_from")
        if edge is not None and (position is None or (edge < position.created_at) == newest_first):
            # Start at the filter's edge: an empty run id sorts before every run of that millisecond.
            beyond = (f"{to_ms(edge)}.5" if newest_first else f"{to_ms(edge) - 1}.5", "")
        floor_at = self.filters.get("created_from" if newest_first else "created_to")
        floor = str(to_ms(floor_at)) if floor_at is not None else None
        cursor_key = position.key() if position else None
        return [
            _Stream(environment, newest_first, beyond, floor, cursor_key)
            for environment in self._buffered_environments()
        ]

    # -- keyset pages (the API) ---------------------------------------------------------------

    def page(self, *, size: int, after: Position | None = None, before: Position | None = None) -> Page:
        """One page newest first beyond ``after`` (or the page before ``before``). Redis work is
        bounded: TRIGGER_LIST_BUFFER_SCAN entries per environment at a time; when a scan stops
        there, the page ends at the last entry scanned (it may be short), so no buffered run is
        skipped. When the filters reject everything scanned, scanning goes on, up to
        TRIGGER_LIST_BUFFER_SCAN_MAX entries, so a page is empty only at the end."""
        newest_first = before is None
        position = before if before is not None else after
        try:
            streams = self._streams(newest_first=newest_first, position=position)
        except BufferUnavailable as error:
            if self.must_read_buffer:
                raise
            logger.warning("runs.list.buffer_unavailable error=%s", error)
            self.buffer_unavailable, streams = True, []
        scanned = 0
        while True:
            scanned += self._read(streams)
            if self.buffer_unavailable and self.must_read_buffer:
                raise BufferUnavailable("the buffer did not answer while runs were listed")
            rows = self._rows_beyond(position, size + 1, newest_first)
            runs, more, bound = self._merge(rows, streams, size, newest_first)
            if runs or all(stream.exhausted for stream in streams) or scanned >= conf.buffer_scan_max():
                break
        if not runs and bound is not None:
            # The filters rejected TRIGGER_LIST_BUFFER_SCAN_MAX buffered runs in a row: go on from there.
            edge = Position(*bound)
            return Page(runs=[], next=edge if newest_first else None, previous=None if newest_first else edge)
        if not newest_first:
            runs.reverse()
            return Page(runs, Position.of(runs[-1]) if runs else None, Position.of(runs[0]) if runs and more else None)
        return Page(
            runs,
            Position.of(runs[-1]) if runs and more else None,
            Position.of(runs[0]) if runs and after is not None else None,
        )

    def _read(self, streams: list[_Stream]) -> int:
        scanned = 0
        for stream in streams:
            if stream.exhausted:
                continue
            try:
                scanned += stream.read(self)
            except BufferUnavailable as error:
                logger.warning("runs.list.buffer_unavailable env=%s error=%s", stream.environment.pk, error)
                self.buffer_unavailable = stream.exhausted = True
        return scanned

    def _rows_beyond(self, position: Position | None, limit: int, newest_first: bool) -> list[TaskRun]:
        rows = self._rows()
        if position is not None:
            at, internal = position.created_at, position.internal_id
            if newest_first:
                rows = rows.filter(Q(created_at__lt=at) | Q(created_at=at, id__lt=internal))
            else:
                rows = rows.filter(Q(created_at__gt=at) | Q(created_at=at, id__gt=internal))
        order = ("-created_at", "-id") if newest_first else ("created_at", "id")
        return list(rows.order_by(*order)[:limit])

    @staticmethod
    def _merge(rows: list[TaskRun], streams: list[_Stream], size: int, newest_first: bool):
        merged = {run.id: run for stream in streams for run in stream.runs}
        merged.update({run.id: run for run in rows})  # Postgres wins
        ordered = sorted(merged.values(), key=sort_key, reverse=newest_first)
        open_bounds = [stream.bound for stream in streams if not stream.exhausted and stream.bound is not None]
        bound = (max(open_bounds) if newest_first else min(open_bounds)) if open_bounds else None
        if bound is not None:  # past the bound an environment still has unscanned buffered runs
            ordered = [run for run in ordered if (sort_key(run) >= bound) == newest_first or sort_key(run) == bound]
        more = len(ordered) > size or len(rows) > size or bound is not None
        return ordered[:size], more, bound

    # -- offset windows, counts and iteration (the admin) -------------------------------------

    def _buffered_in_order(self) -> Iterator[TaskRun]:
        """Every matching buffered run, newest first, across environments (read in chunks)."""
        streams = self._streams(newest_first=True, position=None)

        def each(stream: _Stream) -> Iterator[TaskRun]:
            while True:
                if not stream.runs and not stream.exhausted:
                    stream.read(self)
                if not stream.runs:
                    return
                yield stream.runs.popleft()

        return heapq.merge(*(each(stream) for stream in streams), key=sort_key, reverse=True)

    def __getitem__(self, window: slice) -> list[TaskRun]:
        """The runs of positions ``window.start`` to ``window.stop`` (newest first): both stores
        are walked from the top, so the cost grows with the offset (as SQL OFFSET's does)."""
        if not isinstance(window, slice) or window.step not in (None, 1):
            raise TypeError("MergedRuns supports plain slices")
        start, stop = window.start or 0, window.stop
        if stop is None:
            raise TypeError("MergedRuns needs a slice with an end")
        buffered: list[TaskRun] = []
        try:
            for run in self._buffered_in_order():  # the buffer first, then Postgres
                buffered.append(run)
                if len(buffered) >= stop:
                    break
        except BufferUnavailable as error:
            logger.warning("runs.admin.buffer_unavailable error=%s", error)
            self.buffer_unavailable = True
        # Each store gives at most `stop` runs in order, so the top `stop` of their union are right.
        found: dict[str, tuple[tuple, TaskRun | None]] = {run.id: (sort_key(run), run) for run in buffered}
        for created_at, internal_id in (
            self._rows().order_by("-created_at", "-id").values_list("created_at", "id")[:stop]
        ):
            found[internal_id] = ((created_at, internal_id), None)  # Postgres wins; read below
        ordered = sorted(found.items(), key=lambda item: item[1][0], reverse=True)[start:stop]
        rows = {row.id: row for row in self._rows().filter(id__in=[i for i, (_, run) in ordered if run is None])}
        return [run if run is not None else rows[i] for i, (_, run) in ordered if run is not None or i in rows]

    def counts(self) -> Counts:
        """How many match, in each store. Without filters the buffer's side is its listing sizes;
        with filters every buffered run is read to check them (admin only)."""
        postgres = self._rows().count()
        try:
            if self.filters:
                buffered = sum(1 for _ in self._buffered_in_order())
            else:
                scope = {str(env.pk) for env in self.environments} if self.environments is not None else None
                buffered = sum(
                    row.waiting for row in env_stats(now_ms=to_ms(self.now)) if scope is None or row.env_id in scope
                )
        except BufferUnavailable:
            self.buffer_unavailable, buffered = True, 0
        return Counts(buffered=buffered, postgres=postgres)

    def count(self) -> int:
        return self.counts().total

    def __len__(self) -> int:
        return self.count()

    def __iter__(self) -> Iterator[TaskRun]:
        return iter(self[0 : self.count()])

    def get(self, *, run_id: str) -> TaskRun:
        """The run ``run_id`` (``run_…``) of the one environment in scope, wherever it is."""
        if not self.environments or len(self.environments) != 1:
            raise TypeError("MergedRuns.get() needs exactly one environment")
        return TaskRun.objects.get_with_fallback(environment=self.environments[0], run_id=run_id)


def buffered_runs_by_id(internal_ids: Iterable[str]) -> list[TaskRun]:
    """Buffered runs by internal id, whichever organisation holds them (the admin's selected rows:
    a checkbox carries the id only). One read per organisation with buffered work."""
    wanted = [ids.to_friendly(ids.RUN, internal_id) for internal_id in internal_ids]
    if not wanted:
        return []
    entries = [
        entry
        for org_id in sorted(set(buffer.active_orgs()) | set(buffer.parked_orgs()))
        for entry in buffer.get_many(org_id=org_id, run_ids=wanted)
        if not entry.materialised
    ]
    environments = RuntimeEnvironment.objects.select_related("organization", "project").by_ids(
        entry.env_id for entry in entries
    )
    return [
        entry_to_run(entry, environment=environments[entry.env_id]) for entry in entries if entry.env_id in environments
    ]
