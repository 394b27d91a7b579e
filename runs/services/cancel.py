"""Cancelling a run. Cancelling a run that already finished is a no-op, as upstream."""

from django.db import transaction
from django.utils import timezone

from runs.models import RunStatus, TaskRun

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


@transaction.atomic
def task_run_cancel(*, run: TaskRun, reason: str = "Canceled by user") -> TaskRun:
    run = TaskRun.objects.select_for_update().get(pk=run.pk)
    if run.status not in CANCELLABLE_STATUSES:
        return run
    now = timezone.now()
    run.status = RunStatus.CANCELED
    run.cancelled_at = run.completed_at = run.updated_at = now
    run.cancel_reason = reason
    run.save(update_fields=["status", "cancelled_at", "completed_at", "updated_at", "cancel_reason"])
    return run
