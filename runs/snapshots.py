"""A TaskRun as a mollifier buffer entry, and back.

The entry's ``snapshot`` holds every column the row needs that cannot change while the run waits;
tags, metadata, delay, cancellation and the idempotency key ride beside it as entry fields, so the
buffer can change them atomically. Ids only, never secrets: the environment is referenced by id and
re-read from Postgres when the row is written.
"""

from datetime import UTC, datetime
from typing import NamedTuple, overload

from django.utils import timezone

from mollifier import conf
from mollifier.codec import Entry
from runs import copy_rows, ids
from runs.models import RunStatus, RuntimeEnvironment, TaskRun

SNAPSHOT_VERSION = 1
# TaskRun columns copied into the snapshot verbatim (JSON-safe values).
SNAPSHOT_FIELDS = (
    "organization_id",
    "project_id",
    "payload",
    "payload_type",
    "idempotency_key_options",
    "task_version",
    "queue",
    "concurrency_key",
    "ttl",
    "max_attempts",
    "max_duration",
    "machine",
    "priority",
    "region",
    "is_test",
    "depth",
    "parent_run_id",
    "root_run_id",
    "resume_parent_on_completion",
    "trace_id",
    "span_id",
)


@overload
def to_ms(value: datetime) -> int: ...
@overload
def to_ms(value: None) -> None: ...
def to_ms(value: datetime | None) -> int | None:
    return None if value is None else int(value.timestamp() * 1000)


def from_ms(value: int | None) -> datetime | None:
    if value is None:
        return None
    try:
        return datetime.fromtimestamp(value / 1000, tz=UTC)
    except (OverflowError, OSError, ValueError):
        return None  # an absurd stored value reads as absent, never as "now"


class EnvironmentIds(NamedTuple):
    """What a row takes from its environment (a RuntimeEnvironment has the same attributes)."""

    pk: int
    organization_id: int
    project_id: int


def run_to_entry(run: TaskRun, *, batch_index: int | None = None) -> Entry:
    snapshot = {"v": SNAPSHOT_VERSION, **{name: getattr(run, name) for name in SNAPSHOT_FIELDS}}
    entry = Entry(
        run_id=run.friendly_id,
        org_id=str(run.organization_id),
        env_id=str(run.environment_id),
        task=run.task_identifier,
        accepted_at_ms=to_ms(run.created_at),
        snapshot=snapshot,
        tags=list(run.tags),
        metadata=run.metadata,
        metadata_type=run.metadata_type,
        delay_until_ms=to_ms(run.delay_until),
        idempotency_key=run.idempotency_key,
        idempotency_expires_ms=to_ms(run.idempotency_key_expires_at),
        batch_id=run.batch_id,
        request_key=run.request_key,
        batch_index=batch_index if run.batch_id else None,
    )
    if conf.store_rows():
        _store_row(entry, EnvironmentIds(run.environment_id, run.organization_id, run.project_id))
    return entry


def _store_row(entry: Entry, environment: EnvironmentIds) -> None:
    """Give ``entry`` the row the drain writes for it while nothing changes it, encoded now
    (copy_rows), and where its payload is in it; none when a value cannot be encoded: the drain
    then builds the row from the entry, meets the same error and isolates the entry, as for any
    row it cannot write."""
    try:
        entry.row, entry.row_payload = copy_rows.stored_row(
            entry_values(entry, environment=environment, now=datetime.now(UTC))
        )
    except (ValueError, TypeError):
        entry.row = entry.row_payload = None


def row_id(entry: Entry) -> str:
    """The id of the row ``entry`` becomes (the internal id its friendly id carries)."""
    return ids.from_friendly(ids.RUN, entry.run_id) or entry.run_id


def entry_status(entry: Entry) -> str:
    """The status a buffered run's row has (and will have when written): stored as on a row, so
    that ``TaskRun.status_at`` reads both the same way (a passed delay reads as QUEUED).

    Cancel wins (DESIGN, "Reads and mutations"): a run whose cancel was answered is CANCELED, also
    when its writes later kept failing or its snapshot cannot be read (the row then says why in
    ``error``, as a failure row would)."""
    if entry.cancelled_at_ms is not None:
        return RunStatus.CANCELED
    if entry.snapshot is None or entry.terminal_error:
        return RunStatus.SYSTEM_FAILURE
    if entry.delay_until_ms is not None:
        return RunStatus.DELAYED
    return RunStatus.QUEUED


# Every column's default, for the columns a buffered run does not set.
_DEFAULTS = {field.attname: field.get_default() for field in TaskRun._meta.concrete_fields}
_SNAPSHOT_COLUMNS = tuple(name for name in SNAPSHOT_FIELDS if name not in ("organization_id", "project_id"))
_SNAPSHOT_KEYS = frozenset(("v", *SNAPSHOT_FIELDS))  # organization_id and project_id: overwritten below
_FAILURE_FALLBACK = {"code": "snapshot_unreadable", "message": "The buffered snapshot could not be read."}


def entry_values(entry: Entry, *, environment: RuntimeEnvironment | EnvironmentIds, now: datetime) -> dict:
    """Every TaskRun column (by attname) for ``entry``, as a reader sees it now and as the drainer
    writes it now. A snapshot that cannot be read still gives a run: SYSTEM_FAILURE (CANCELED when
    cancelled), from the envelope."""
    snapshot = entry.snapshot or {}
    created_at = from_ms(entry.accepted_at_ms) or now
    status = entry_status(entry)
    cancelled_at = from_ms(entry.cancelled_at_ms)
    if not snapshot.keys() <= _SNAPSHOT_KEYS:  # keys this version does not know (a newer writer): its columns only
        snapshot = {name: snapshot[name] for name in _SNAPSHOT_COLUMNS if name in snapshot}
    # One dict display (the drainer builds one per row): the defaults, the snapshot's columns, then
    # the columns the envelope decides. The snapshot's "v" is popped after.
    values = {
        **_DEFAULTS,
        **snapshot,
        "id": row_id(entry),
        "environment_id": environment.pk,
        "organization_id": environment.organization_id,
        "project_id": environment.project_id,
        "task_identifier": entry.task,
        "status": status,
        "tags": sorted(entry.tags),
        "metadata": entry.metadata,
        "metadata_type": entry.metadata_type or "application/json",
        "delay_until": from_ms(entry.delay_until_ms),  # kept, as on a row: status_at reads it
        "idempotency_key": entry.idempotency_key,
        "idempotency_key_expires_at": from_ms(entry.idempotency_expires_ms) if entry.idempotency_key else None,
        # Kept on the row too: a retried request then finds its run in Postgres alone, once the
        # run is written, also while Redis does not answer.
        "request_key": entry.request_key,
        "batch_id": entry.batch_id,
        "created_at": created_at,
        "updated_at": cancelled_at or created_at,
        "cancelled_at": cancelled_at,
        "cancel_reason": entry.cancel_reason if cancelled_at else None,
        "completed_at": cancelled_at if status == RunStatus.CANCELED else None,
        "buffered_at": created_at,
    }
    values.pop("v", None)
    if entry.snapshot is None or entry.terminal_error:  # SYSTEM_FAILURE, or CANCELED (cancel wins)
        error = entry.terminal_error or _FAILURE_FALLBACK
        values["error"] = {"message": f"{error.get('code')}: {error.get('message')}", "name": "MollifierError"}
    if status == RunStatus.SYSTEM_FAILURE:
        values["completed_at"] = values["updated_at"] = now
    return values


def _clean(value: str) -> str:
    """Text any column can hold: no NUL, no lone surrogate."""
    return value.replace("\x00", "").encode("utf-8", "backslashreplace").decode("utf-8")


def _fit(value: str, field_name: str) -> str:
    limit = TaskRun.column_length(field_name)
    value = _clean(value)
    return value if len(value) <= limit else value[: limit - 1] + "…"


def minimal_failure_values(entry: Entry, *, environment: RuntimeEnvironment, now: datetime) -> dict:
    """The last resort for an entry whose row cannot be written in any form: a SYSTEM_FAILURE row
    with its ids, trigger time and the reason only, every value cut to fit its column. A run whose
    cancel was answered is CANCELED even so (cancel wins), with its cancel's time and reason."""
    error = entry.terminal_error or _FAILURE_FALLBACK
    created_at = from_ms(entry.accepted_at_ms) or now
    cancelled_at = from_ms(entry.cancelled_at_ms)
    return {
        **_DEFAULTS,
        "id": row_id(entry),
        "environment_id": environment.pk,
        "organization_id": environment.organization_id,
        "project_id": environment.project_id,
        "task_identifier": _fit(entry.task or "unknown", "task_identifier"),
        "status": entry_status(entry),  # CANCELED or SYSTEM_FAILURE, as readers see it
        "tags": [],
        "metadata": None,
        "payload": None,
        "batch_id": entry.batch_id,
        "created_at": created_at,
        "updated_at": cancelled_at or now,
        "completed_at": cancelled_at or now,
        "cancelled_at": cancelled_at,
        "cancel_reason": _fit(entry.cancel_reason, "cancel_reason") if cancelled_at and entry.cancel_reason else None,
        "buffered_at": created_at,
        "error": {
            "name": "MollifierError",
            "message": _clean(f"{error.get('code')}: {str(error.get('message'))[:2000]}")
            + " (the run could not be written as triggered; only its ids were kept)",
        },
    }


def entry_to_run(entry: Entry, *, environment: RuntimeEnvironment, now: datetime | None = None) -> TaskRun:
    """An unsaved TaskRun for ``entry`` (``run.is_buffered`` is true): one shape for serializers."""
    run = TaskRun(**entry_values(entry, environment=environment, now=now or timezone.now()))
    run.environment = environment  # cached: no query when presenters read it
    return run
