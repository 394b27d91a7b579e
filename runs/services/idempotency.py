"""Task idempotency keys: one live run per (environment, task, key).

A key is released when it expires (``idempotencyKeyTTL``, default 30 days) or when its run ended
failed-like or expired; the old run then loses the key and a new run may take it. A completed or
cancelled run keeps its key. The unique constraint on (environment, task, key) is the final arbiter
between concurrent triggers.
"""

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.utils import timezone

from mollifier import buffer
from mollifier.buffer import Pin, ResetResult, ResetStatus
from mollifier.clock import now_ms
from mollifier.exceptions import BufferUnavailable
from mollifier.sink import Settled
from runs.exceptions import IdempotencyKeyNotFound, ServiceUnavailable
from runs.models import RunStatus, RuntimeEnvironment, TaskRun
from runs.services.mid_drain import retry_while_draining, settle_pin

DEFAULT_TTL = timedelta(days=30)
# Runs in these states give their key back (the official server's rule).
RELEASING_STATUSES = frozenset(
    {RunStatus.FAILED, RunStatus.CRASHED, RunStatus.SYSTEM_FAILURE, RunStatus.TIMED_OUT, RunStatus.EXPIRED}
)
UNIQUE_CONSTRAINT = "run_env_task_idem_uniq"


def key_is_live(*, run: TaskRun, now: datetime) -> bool:
    if run.status in RELEASING_STATUSES:
        return False
    return run.idempotency_key_expires_at is None or run.idempotency_key_expires_at > now


def idempotent_run_find(*, environment_id: int, task_identifier: str, key: str, now: datetime) -> TaskRun | None:
    """The run holding ``key`` now, or None; a stale holder is stripped of the key first."""
    run = TaskRun.objects.filter(
        environment_id=environment_id, task_identifier=task_identifier, idempotency_key=key
    ).first()
    if run is None:
        return None
    if key_is_live(run=run, now=now):
        return run
    idempotency_key_clear(
        environment_id=environment_id, task_identifier=task_identifier, key=key, only_internal_id=run.id
    )
    return None


def idempotency_key_clear(
    *, environment_id: int, task_identifier: str, key: str, only_internal_id: str | None = None
) -> int:
    """Take ``key`` off the runs holding it; returns how many rows changed."""
    runs = TaskRun.objects.filter(environment_id=environment_id, task_identifier=task_identifier, idempotency_key=key)
    if only_internal_id is not None:
        runs = runs.filter(id=only_internal_id)
    return runs.update(idempotency_key=None, idempotency_key_expires_at=None, updated_at=timezone.now())


@dataclass(frozen=True)
class KeyReset:
    rows: int  # rows in Postgres that gave the key up
    buffered_run: str | None  # the buffered run (run_…) that gave it up


def idempotency_key_reset(*, environment: RuntimeEnvironment, task_identifier: str, key: str) -> KeyReset:
    """Release ``key`` in both stores so the next trigger with it makes a new run.

    Raises IdempotencyKeyNotFound when no run held it, and ServiceUnavailable when Postgres had
    nothing and the buffer could not be checked (or its holder stayed mid-drain).
    """
    org_id, env_id = str(environment.organization_id), str(environment.pk)
    cleared = idempotency_key_clear(environment_id=environment.pk, task_identifier=task_identifier, key=key)

    def attempt(started: float) -> ResetResult:
        result = buffer.reset_idempotency(org_id=org_id, env_id=env_id, task=task_identifier, key=key, now_ms=now_ms())
        if result.status != ResetStatus.PINNED:
            return result
        outcome = settle_pin(Pin(org_id, env_id, result.run_id, result.holder), waiting_since=started)
        if outcome == Settled.COMMITTED:
            return ResetResult(ResetStatus.NONE)  # its row holds the key now: the second pass clears it
        return ResetResult(ResetStatus.MOVED if outcome == Settled.NOT_COMMITTED else ResetStatus.BUSY)

    try:
        result = retry_while_draining(
            attempt, busy=lambda outcome: outcome.status in (ResetStatus.BUSY, ResetStatus.MOVED)
        )
    except BufferUnavailable:
        if cleared:
            return KeyReset(cleared, None)
        raise ServiceUnavailable("Unable to verify buffered idempotency state right now; please retry") from None
    buffered = result.run_id if result.status == ResetStatus.RESET else None
    if cleared or buffered:
        return KeyReset(cleared, buffered)
    # The holder may have been written to Postgres between the two steps above.
    if cleared := idempotency_key_clear(environment_id=environment.pk, task_identifier=task_identifier, key=key):
        return KeyReset(cleared, None)
    raise IdempotencyKeyNotFound(f"No runs found with idempotency key: {key} and task: {task_identifier}")
