"""The drainer's sink: buffered runs become TaskRun rows, a whole round in one transaction.

The hot insert goes through psycopg directly (COPY into a temporary table, then one
``INSERT … SELECT … ON CONFLICT DO NOTHING``), on Django's connection and inside Django's
transaction: Django's bulk_create was ~25× slower here (DESIGN §7). Everything else is the ORM.

Outcomes per entry:
- inserted as intended: QUEUED, DELAYED (delay still ahead), CANCELED (cancelled while buffered);
- a row with the same id exists: an earlier drain wrote it (a replay) → counted ``already``;
- the idempotency key is held by another live run meanwhile → a SYSTEM_FAILURE row naming it;
- a terminal entry (attempts exhausted, unreadable snapshot) → a SYSTEM_FAILURE row from the envelope;
- the environment was deleted → nothing to attach a row to: dropped, logged.
Batch members get their BatchTaskRunItem in the same transaction.
"""

import logging
from collections import defaultdict

from django.db import InterfaceError, OperationalError, connection, transaction
from django.db.models import JSONField
from django.utils import timezone
from psycopg.types.json import Jsonb

from mollifier.codec import Entry
from mollifier.exceptions import SinkUnavailable
from mollifier.sink import SinkReport
from runs.models import BatchTaskRun, RunStatus, RuntimeEnvironment, TaskRun
from runs.services import idempotency
from runs.services.batches import batch_refresh_status
from runs.snapshots import entry_to_run

logger = logging.getLogger(__name__)

FIELDS = TaskRun._meta.concrete_fields
COLUMNS = ", ".join(connection.ops.quote_name(field.column) for field in FIELDS)
JSON_ATTRS = {field.attname for field in FIELDS if isinstance(field, JSONField)}
STAGING = "mollifier_incoming_runs"


def materialise_entries(entries: list[Entry]) -> SinkReport:
    """Write every entry as a row (see the module docstring); raises SinkUnavailable when the
    database cannot be reached."""
    try:
        with transaction.atomic():
            return _materialise(entries)
    except (OperationalError, InterfaceError) as error:
        raise SinkUnavailable(str(error)) from error


def _materialise(entries: list[Entry]) -> SinkReport:
    now = timezone.now()
    environments = RuntimeEnvironment.objects.in_bulk({int(entry.env_id) for entry in entries if entry.env_id.isdigit()})
    runs: list[tuple[Entry, TaskRun]] = []
    dropped = 0
    for entry in entries:
        environment = environments.get(int(entry.env_id)) if entry.env_id.isdigit() else None
        if environment is None:
            logger.warning("mollifier.drain.environment_gone run=%s env=%s", entry.run_id, entry.env_id)
            dropped += 1
            continue
        run = entry_to_run(entry, environment=environment, now=now)
        run.materialised_at = now
        runs.append((entry, run))

    inserted = _insert([run for _, run in runs])
    pending = [(entry, run) for entry, run in runs if run.id not in inserted]
    existing = set(TaskRun.objects.filter(id__in=[run.id for _, run in pending]).values_list("id", flat=True))
    contested = [(entry, run) for entry, run in pending if run.id not in existing]
    failed = _resolve_key_conflicts(contested, now=now) if contested else 0

    _link_batch_items([(entry, run) for entry, run in runs], now=now)
    return SinkReport(
        inserted=len(inserted) - sum(run.status == RunStatus.SYSTEM_FAILURE for _, run in runs if run.id in inserted),
        already=len(existing),
        failed=failed + sum(run.status == RunStatus.SYSTEM_FAILURE for _, run in runs if run.id in inserted),
        dropped=dropped,
    )


def _row(run: TaskRun) -> tuple:
    values = []
    for field in FIELDS:
        value = getattr(run, field.attname)
        if field.attname in JSON_ATTRS and value is not None:
            value = Jsonb(value)
        values.append(value)
    return tuple(values)


def _insert(runs: list[TaskRun]) -> set[str]:
    """COPY the rows into a session temp table, then insert what does not conflict; returns the ids
    inserted. ON CONFLICT DO NOTHING covers both the id and the idempotency-key constraints."""
    if not runs:
        return set()
    with connection.cursor() as cursor:
        raw = cursor.cursor  # the psycopg cursor, inside Django's transaction
        raw.execute(
            f"CREATE TEMP TABLE IF NOT EXISTS {STAGING} (LIKE {TaskRun._meta.db_table} INCLUDING DEFAULTS) "
            "ON COMMIT DELETE ROWS"
        )
        with raw.copy(f"COPY {STAGING} ({COLUMNS}) FROM STDIN") as copy:
            for run in runs:
                copy.write_row(_row(run))
        raw.execute(
            f"INSERT INTO {TaskRun._meta.db_table} ({COLUMNS}) SELECT {COLUMNS} FROM {STAGING} "
            "ON CONFLICT DO NOTHING RETURNING id"
        )
        inserted = {row[0] for row in raw.fetchall()}
        raw.execute(f"TRUNCATE {STAGING}")  # a retried key-conflict pass reuses the table
    return inserted


def _resolve_key_conflicts(contested: list[tuple[Entry, TaskRun]], *, now) -> int:
    """Rows refused because another run holds their idempotency key: release stale holders and
    insert again; for live holders write a SYSTEM_FAILURE row that names the winner."""
    holders = {
        (run.environment_id, run.task_identifier, run.idempotency_key): run
        for run in TaskRun.objects.filter(
            idempotency_key__in={run.idempotency_key for _, run in contested if run.idempotency_key},
            environment_id__in={run.environment_id for _, run in contested},
        )
    }
    retry, failures = [], []
    for entry, run in contested:
        holder = holders.get((run.environment_id, run.task_identifier, run.idempotency_key))
        if holder is not None and not idempotency.key_is_live(run=holder, now=now):
            idempotency.idempotency_key_clear(
                environment_id=run.environment_id, task_identifier=run.task_identifier, key=run.idempotency_key, only_run_id=holder.id
            )
            holder = None
        if holder is None:
            retry.append(run)
        else:
            failures.append(_failure_row(run, winner=holder, now=now))
    inserted = _insert(retry)
    # A row refused twice (the key was taken again in between) is written as a failure too.
    failures += [_failure_row(run, winner=None, now=now) for run in retry if run.id not in inserted]
    written = _insert(failures)
    return len(written)


def _failure_row(run: TaskRun, *, winner: TaskRun | None, now) -> TaskRun:
    winner_id = winner.friendly_id if winner else "another run"
    run.status = RunStatus.SYSTEM_FAILURE
    run.error = {
        "name": "IdempotencyKeyTaken",
        "message": f"Idempotency key {run.idempotency_key!r} was taken by {winner_id} while this run waited in the buffer.",
    }
    run.idempotency_key = run.idempotency_key_expires_at = None
    run.idempotency_key_options = None
    run.completed_at = run.updated_at = now
    return run


def _link_batch_items(runs: list[tuple[Entry, TaskRun]], *, now) -> None:
    members = [(entry, run) for entry, run in runs if entry.batch_id and entry.batch_index is not None]
    if not members:
        return
    with connection.cursor() as cursor:
        cursor.execute(
            'INSERT INTO runs_batchtaskrunitem (batch_id, task_run_id, "index", created_at) '
            "SELECT b, r, i, %s FROM unnest(%s::text[], %s::text[], %s::int[]) AS t(b, r, i) "
            'ON CONFLICT (batch_id, "index") DO NOTHING',
            [now, [e.batch_id for e, _ in members], [r.id for _, r in members], [e.batch_index for e, _ in members]],
        )
    by_batch = defaultdict(list)
    for entry, _ in members:
        by_batch[entry.batch_id].append(entry)
    for batch in BatchTaskRun.objects.select_for_update().filter(id__in=list(by_batch)):
        batch_refresh_status(batch=batch, now=now)
        batch.save(update_fields=["status", "completed_at", "updated_at"])
