"""A batch's items and its status, wherever its runs are.

An item normally points at its run's row (BatchTaskRunItem). A run still in the mollifier buffer has
no row yet: a buffered member of the batch is linked by the drainer in the transaction that writes
it; an item answered with another buffered run (its idempotency key was held) waits as a
BatchTaskRunPendingItem and becomes an item once that run is written. Both the batch request and each
drain look for such links: the request after it commits, the drain inside the transaction that
writes the run, again in its next round, and once more when it has nothing left to write. Whichever
commits last, the item is linked.
"""

from datetime import datetime

from django.db import connection, transaction
from django.utils import timezone

from runs.models import BatchTaskRun, BatchTaskRunItem


def batch_refresh_status(*, batch: BatchTaskRun, now: datetime) -> None:
    """COMPLETED once every item's run is in Postgres; PROCESSING while some are still buffered."""
    if not batch.sealed:
        return
    stored = BatchTaskRunItem.objects.filter(batch=batch).count()
    if stored >= batch.run_count:
        batch.status = BatchTaskRun.Status.COMPLETED
        batch.completed_at = batch.completed_at or now
    else:
        batch.status = BatchTaskRun.Status.PROCESSING


def batch_refresh(*, batch_ids: set[str], now: datetime) -> None:
    """Refresh the status of these batches (row-locked: drains and item streams serialise here)."""
    for batch in BatchTaskRun.objects.select_for_update().filter(id__in=batch_ids).order_by("id"):
        batch_refresh_status(batch=batch, now=now)
        batch.save(update_fields=["status", "completed_at", "updated_at"])


def batch_link_pending(*, batch_ids: list[str] | None = None) -> int:
    """Turn pending items whose run has been written into items (all batches, or these), and refresh
    their batches; returns how many. One statement, cheap when nothing is pending (the usual case)."""
    with transaction.atomic():
        linked = batch_move_pending(batch_ids=batch_ids)
        if linked:
            batch_refresh(batch_ids=set(linked), now=timezone.now())
    return len(linked)


def batch_move_pending(*, batch_ids: list[str] | None = None) -> list[str]:
    """The statement of ``batch_link_pending``, without the refresh: the batch id of each item
    linked (the drain refreshes them with its own members' batches, in one ordered lock)."""
    scope = "AND p.batch_id = ANY(%s)" if batch_ids is not None else ""
    with connection.cursor() as cursor:
        cursor.execute(
            "WITH moved AS ("
            "  DELETE FROM runs_batchtaskrunpendingitem p USING runs_taskrun r"
            f'  WHERE p.run_internal_id = r.id {scope} RETURNING p.batch_id, p.run_internal_id, p."index"'
            ") "
            'INSERT INTO runs_batchtaskrunitem (batch_id, task_run_id, "index", created_at) '
            'SELECT batch_id, run_internal_id, "index", now() FROM moved '
            'ON CONFLICT (batch_id, "index") DO NOTHING RETURNING batch_id',
            [batch_ids] if batch_ids is not None else [],
        )
        return [row[0] for row in cursor.fetchall()]
