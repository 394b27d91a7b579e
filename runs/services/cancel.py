"""Cancelling a run, wherever it lives. Cancelling a finished run is a no-op, as upstream.

Cancel wins: a run cancelled while buffered is written CANCELED and never queued.
"""

from django.db import transaction
from django.utils import timezone

from mollifier import buffer
from mollifier.buffer import MutateStatus
from runs.exceptions import RunNotFound
from runs.models import RunStatus, TaskRun
from runs.services.mid_drain import change_buffered_run

CANCELLABLE_STATUSES = frozenset(
    {
        RunStatus.DELAYED,
        RunStatus.QUEUED,
        RunStatus.PENDING_VERSION,
        RunStatus.DEQUEUED,
        RunStatus.EXECUTING,
        RunStatus.WAITING,
    }
)


def task_run_cancel(*, run: TaskRun, reason: str = "Canceled by user") -> TaskRun:
    """Cancel ``run`` (a row or a buffered run). Raises ServiceUnavailable when it stays mid-drain."""
    if not run.is_buffered:
        return _cancel_row(run=run, reason=reason)
    if run.status not in CANCELLABLE_STATUSES:
        # Finished while buffered (its snapshot unreadable, or its writes failed for good): it reads
        # SYSTEM_FAILURE, so the cancel does nothing, as for a row. mutate.lua checks the second
        # again, atomically: a run the drain marks terminal meanwhile is not cancelled either.
        return run
    result = change_buffered_run(
        lambda **ids: buffer.cancel(reason=reason, **ids),
        org_id=str(run.organization_id),
        env_id=str(run.environment_id),
        run_id=run.friendly_id,
    )
    if result.status == MutateStatus.APPLIED:
        return TaskRun.objects.get_with_fallback(environment=run.environment, run_id=run.friendly_id)
    # Written meanwhile ("materialised", or gone after its grace period): the row is the run now.
    row = TaskRun.objects.filter(environment=run.environment, id=run.id).first()
    if row is None:
        raise RunNotFound("Run not found")
    return _cancel_row(run=row, reason=reason)


@transaction.atomic
def _cancel_row(*, run: TaskRun, reason: str) -> TaskRun:
    run = TaskRun.objects.select_for_update().get(pk=run.pk)
    if run.status not in CANCELLABLE_STATUSES:
        return run
    now = timezone.now()
    run.status = RunStatus.CANCELED
    run.cancelled_at = run.completed_at = run.updated_at = now
    run.cancel_reason = reason
    run.save(update_fields=["status", "cancelled_at", "completed_at", "updated_at", "cancel_reason"])
    return run
