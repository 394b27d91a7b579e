"""Triggering a run: the one place that decides how a trigger is answered.

Order (DESIGN §4): request idempotency → mint the id → task idempotency key → write → remember
the request. The id is minted before anything is written; whichever store receives the run keeps it.
"""

from dataclasses import dataclass
from datetime import datetime

from django.db import IntegrityError, transaction
from django.utils import timezone

from runs import ids
from runs.exceptions import InvalidRequest
from runs.models import BatchTaskRun, BatchTaskRunItem, RunStatus, RuntimeEnvironment, TaskRun
from runs.options import TriggerOptions
from runs.services import idempotency
from runs.services.request_idempotency import request_lookup, request_remember


@dataclass(frozen=True)
class TriggerOutcome:
    run: TaskRun
    is_cached: bool  # an existing run was returned for the task idempotency key


def task_run_trigger(
    *,
    environment: RuntimeEnvironment,
    task_identifier: str,
    options: TriggerOptions,
    request_key: str | None = None,
    batch: BatchTaskRun | None = None,
    batch_index: int | None = None,
    now: datetime | None = None,
) -> TriggerOutcome:
    """Create the run (or find the one this trigger repeats) and say which.

    Raises InvalidRequest for a parent run that is not in this environment. Never writes anything
    before validation has passed; the run row and its batch item are written in one transaction.
    """
    now = now or timezone.now()
    scope = [task_identifier]
    if (known_id := request_lookup(request_key=request_key, environment_id=environment.pk, scope=scope)) is not None:
        run = TaskRun.objects.filter(environment=environment, id=known_id).first()
        if run is not None:
            return TriggerOutcome(run=run, is_cached=False)  # the official answer to a retried request

    run = _build_run(environment=environment, task_identifier=task_identifier, options=options, now=now, batch=batch)
    outcome = _insert_or_find_existing(run=run, options=options, now=now, batch=batch, batch_index=batch_index)
    request_remember(request_key=request_key, environment_id=environment.pk, scope=scope, value=outcome.run.id)
    return outcome


def _insert_or_find_existing(
    *, run: TaskRun, options: TriggerOptions, now: datetime, batch: BatchTaskRun | None, batch_index: int | None
) -> TriggerOutcome:
    key = options.idempotency_key
    # Two passes at most: a concurrent trigger may take the key between our read and our insert.
    for _ in range(2):
        if key is not None:
            existing = idempotency.idempotent_run_find(
                environment_id=run.environment_id, task_identifier=run.task_identifier, key=key, now=now
            )
            if existing is not None:
                _link_batch_item(batch=batch, index=batch_index, run=existing)
                return TriggerOutcome(run=existing, is_cached=True)
        try:
            with transaction.atomic():
                run.save(force_insert=True)
                _link_batch_item(batch=batch, index=batch_index, run=run)
            return TriggerOutcome(run=run, is_cached=False)
        except IntegrityError as error:
            if _violated_constraint(error) != idempotency.UNIQUE_CONSTRAINT:
                raise
    raise IntegrityError(f"idempotency key {key!r} kept changing hands")


def _violated_constraint(error: IntegrityError) -> str | None:
    diag = getattr(error.__cause__, "diag", None)
    return getattr(diag, "constraint_name", None)


def _link_batch_item(*, batch: BatchTaskRun | None, index: int | None, run: TaskRun) -> None:
    if batch is not None and index is not None:
        BatchTaskRunItem.objects.get_or_create(batch=batch, index=index, defaults={"task_run": run})


def _build_run(
    *,
    environment: RuntimeEnvironment,
    task_identifier: str,
    options: TriggerOptions,
    now: datetime,
    batch: BatchTaskRun | None,
) -> TaskRun:
    parent = _parent_run(environment=environment, parent_run_id=options.parent_run_id)
    delayed = options.delay_until is not None and options.delay_until > now
    key = options.idempotency_key
    return TaskRun(
        id=ids.new_internal_id(),
        environment=environment,
        organization_id=environment.organization_id,
        project_id=environment.project_id,
        task_identifier=task_identifier,
        status=RunStatus.DELAYED if delayed else RunStatus.QUEUED,
        payload=options.payload,
        payload_type=options.payload_type,
        metadata=options.metadata,
        metadata_type=options.metadata_type,
        idempotency_key=key,
        idempotency_key_expires_at=(now + (options.idempotency_key_ttl or idempotency.DEFAULT_TTL)) if key else None,
        idempotency_key_options=options.idempotency_key_options if key else None,
        task_version=options.lock_to_version,
        queue=options.queue or f"task/{task_identifier}",
        concurrency_key=options.concurrency_key,
        ttl=options.ttl,
        max_attempts=options.max_attempts,
        max_duration=options.max_duration,
        machine=options.machine,
        priority=options.priority,
        region=options.region,
        tags=sorted(options.tags),
        is_test=options.is_test,
        delay_until=options.delay_until if delayed else None,
        depth=parent.depth + 1 if parent else 0,
        parent_run=parent,
        root_run_id=(parent.root_run_id or parent.id) if parent else None,
        resume_parent_on_completion=options.resume_parent_on_completion and parent is not None,
        batch=batch,
        created_at=now,
        updated_at=now,
    )


def _parent_run(*, environment: RuntimeEnvironment, parent_run_id: str | None) -> TaskRun | None:
    if parent_run_id is None:
        return None
    internal = ids.from_friendly(ids.RUN, parent_run_id)
    parent = TaskRun.objects.filter(environment=environment, id=internal).first() if internal else None
    if parent is None:
        raise InvalidRequest(f"Parent run not found: {parent_run_id}")
    return parent
