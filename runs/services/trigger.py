"""Triggering a run: the one place that decides how a trigger is answered (DESIGN §4).

Order: request idempotency → mint the id → idempotency key (Postgres → buffer → pre-gate claim) →
gate → write (Postgres row, or buffer entry) → publish or release the claim → remember the request.
The id is minted before anything is written; whichever store receives the run keeps it.
"""

import logging
import math
from dataclasses import dataclass
from datetime import datetime

from django.db import IntegrityError, transaction
from django.utils import timezone

from mollifier import buffer, claims, conf, gate
from mollifier.exceptions import BufferUnavailable, ClaimTimeout
from runs import ids
from runs.exceptions import BufferFull, InvalidRequest, ServiceUnavailable
from runs.models import (
    BatchTaskRun,
    BatchTaskRunItem,
    BatchTaskRunPendingItem,
    RunStatus,
    RuntimeEnvironment,
    TaskRun,
)
from runs.options import TriggerOptions
from runs.services import idempotency
from runs.services.batch_items import batch_link_pending
from runs.services.flags import mollifier_enrolled
from runs.services.packets import PACKET_TYPE, packets_use
from runs.services.request_idempotency import request_lookup, request_remember
from runs.snapshots import entry_to_run, run_to_entry, to_ms

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TriggerOutcome:
    run: TaskRun
    is_cached: bool  # an existing run was returned for the task idempotency key
    buffered: bool = False  # this trigger was diverted into the mollifier buffer


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
    """Create the run (in Postgres or the buffer), or find the one this trigger repeats.

    Raises InvalidRequest for a parent run that is not in this environment, BufferFull when the
    organisation's buffer is at its cap, and ServiceUnavailable when a same-key trigger held the
    idempotency claim too long. Nothing is written before validation has passed.
    A packet payload (``application/store``) must name a packet of this environment: see packets_use.
    """
    now = now or timezone.now()
    scope = [task_identifier]
    if (known_id := request_lookup(request_key=request_key, environment_id=environment.pk, scope=scope)) is not None:
        if (run := _find(environment, ids.to_friendly(ids.RUN, known_id))) is not None:
            return TriggerOutcome(run=run, is_cached=False)  # the official answer to a retried request

    if options.payload_type == PACKET_TYPE and batch is None:  # batch items: checked together, before any is written
        packets_use(environment=environment, paths=[options.payload], now=now)
    run = task_run_prepare(
        environment=environment, task_identifier=task_identifier, options=options, now=now, batch=batch
    )
    outcome = task_run_commit(run=run, options=options, now=now, batch=batch, batch_index=batch_index)
    request_remember(request_key=request_key, environment_id=environment.pk, scope=scope, value=outcome.run.id)
    return outcome


def task_run_prepare(
    *,
    environment: RuntimeEnvironment,
    task_identifier: str,
    options: TriggerOptions,
    now: datetime,
    batch: BatchTaskRun | None = None,
) -> TaskRun:
    """Check what only the stores can check (the parent run) and build the unsaved run, with its
    id. Writes nothing: a batch prepares every item before it writes any (all or nothing)."""
    return _build_run(environment=environment, task_identifier=task_identifier, options=options, now=now, batch=batch)


def task_run_commit(
    *,
    run: TaskRun,
    options: TriggerOptions,
    now: datetime,
    batch: BatchTaskRun | None = None,
    batch_index: int | None = None,
) -> TriggerOutcome:
    """Write a prepared run (Postgres or the buffer), or find the one its idempotency key names."""
    return _trigger(run=run, options=options, now=now, batch=batch, batch_index=batch_index)


def _trigger(
    *, run: TaskRun, options: TriggerOptions, now: datetime, batch: BatchTaskRun | None, batch_index: int | None
) -> TriggerOutcome:
    environment = run.environment
    enrolled = mollifier_enrolled(environment.organization)
    uses_buffer = conf.enabled() and enrolled
    key = options.idempotency_key
    claim = None
    if key is not None:
        # Postgres first. When the organisation uses the buffer, the claim (taken by bypassed
        # triggers too, so that no path races a buffered holder of the key) reads the buffered
        # holder in the same script.
        holder = _holder_of_key(run=run, key=key, now=now, uses_buffer=False)
        if holder is not None:
            _link_batch_item(batch=batch, index=batch_index, run=holder)
            return TriggerOutcome(run=holder, is_cached=True)
        if uses_buffer:
            claim, existing = _claim(run=run, key=key, now=now)
            if existing is not None:
                _link_batch_item(batch=batch, index=batch_index, run=existing)
                return TriggerOutcome(run=existing, is_cached=True)

    published = False
    try:
        admission = gate.admit(
            org_id=str(environment.organization_id),
            env_id=str(environment.pk),
            enrolled=enrolled,
            bypass=_bypass(options),
            entry=lambda: run_to_entry(run, batch_index=batch_index),
            now_ms=to_ms(now),
            claim_marker=claim.marker if claim else "",
            claim_ttl=claim.publish_ttl if claim else 0,
        )
        if admission.decision == gate.Decision.MOLLIFY:
            outcome = _buffered_outcome(run=run, admission=admission, now=now)
            # An accepted entry published the claim in the same script; any other outcome releases it.
            published = admission.accepted.status == "accepted"
        else:
            outcome = _insert_or_find_existing(run=run, key=key, now=now, batch=batch, batch_index=batch_index)
            if claim is not None:
                published = claims.publish(claim, outcome.run.friendly_id)
        return outcome
    finally:
        if claim is not None and not published:
            claims.release(claim)


def _bypass(options: TriggerOptions) -> str | None:
    """Why this trigger must reach Postgres now (and is not counted against the rate): only a
    triggerAndWait child, whose parent (checked to exist) waits on the child's row. Debounce and
    one-time-use tokens are refused at the door, so no caller can opt out of the gate."""
    if options.parent_run_id and options.resume_parent_on_completion:
        return "trigger_and_wait"
    return None


def _find(environment: RuntimeEnvironment, run_id: str) -> TaskRun | None:
    try:
        return TaskRun.objects.get_with_fallback(environment=environment, run_id=run_id)
    except TaskRun.DoesNotExist:
        return None
    except BufferUnavailable:
        logger.warning("runs.trigger.buffer_unreadable env=%s", environment.pk, exc_info=True)
        return None


def _holder_of_key(*, run: TaskRun, key: str, now: datetime, uses_buffer: bool) -> TaskRun | None:
    """The run holding the idempotency key now: Postgres first, then the buffer."""
    existing = idempotency.idempotent_run_find(
        environment_id=run.environment_id, task_identifier=run.task_identifier, key=key, now=now
    )
    if existing is not None or not uses_buffer:
        return existing
    try:
        entry = buffer.lookup_idempotency(
            org_id=str(run.organization_id),
            env_id=str(run.environment_id),
            task=run.task_identifier,
            key=key,
            now_ms=to_ms(now),
        )
    except BufferUnavailable:
        logger.warning("runs.trigger.buffer_lookup_failed env=%s", run.environment_id, exc_info=True)
        return None  # fail open: the Postgres constraint still holds
    return entry_to_run(entry, environment=run.environment, now=now) if entry is not None else None


def _claim(*, run: TaskRun, key: str, now: datetime) -> tuple[claims.Claim | None, TaskRun | None]:
    """Take the pre-gate claim, or find the run of the trigger that holds (or held) it."""
    try:
        outcome = claims.acquire(
            org_id=str(run.organization_id),
            env_id=str(run.environment_id),
            task=run.task_identifier,
            key=key,
            key_expires_ms=to_ms(run.idempotency_key_expires_at),
            now_ms=to_ms(now),
        )
    except ClaimTimeout as error:
        raise ServiceUnavailable(str(error)) from None
    if outcome.kind == "claimed":
        return outcome.claim, None
    if outcome.kind in ("buffered", "resolved"):
        if outcome.kind == "buffered":
            holder = _holder_of_key(run=run, key=key, now=now, uses_buffer=True)  # checks expiry
        else:
            holder = _find(run.environment, outcome.run_id)
        if holder is not None and holder.idempotency_key == key:
            return None, holder
        logger.info("runs.trigger.claim_winner_gone env=%s run=%s", run.environment_id, outcome.run_id)
    return None, None  # unavailable, or the winner is gone: Postgres's constraint decides


def _buffered_outcome(*, run: TaskRun, admission: gate.Admission, now: datetime) -> TriggerOutcome:
    accepted = admission.accepted
    if accepted.status == "over_cap":
        retry_after_ms = min(30_000, max(1_000, math.ceil(accepted.count / 100 / conf.drain_max_rows_per_sec() * 1000)))
        held = f"{accepted.bytes:,} bytes" if accepted.limit == "bytes" else f"{accepted.count}"
        raise BufferFull(
            f"Too many runs are waiting to be written for this organisation ({held}); retry shortly.",
            retry_after_ms=retry_after_ms,
        )
    if accepted.status == "duplicate_idempotency":
        # A same-key trigger got into the buffer between our lookup and our accept.
        if (winner := _find(run.environment, accepted.run_id)) is not None:
            return TriggerOutcome(run=winner, is_cached=True)
        raise ServiceUnavailable("Idempotency key is changing hands; retry")
    run.buffered_at = run.created_at
    return TriggerOutcome(run=run, is_cached=False, buffered=True)


def _insert_or_find_existing(
    *, run: TaskRun, key: str | None, now: datetime, batch: BatchTaskRun | None, batch_index: int | None
) -> TriggerOutcome:
    # Two passes at most: a concurrent trigger may take the key between our read and our insert.
    for attempt in range(2):
        if key is not None and attempt:
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
    """Make ``run`` the batch's item ``index``. A run still in the buffer has no row to point at
    yet: the link waits as a pending item until the run is written."""
    if batch is None or index is None:
        return
    if run.is_buffered:
        BatchTaskRunPendingItem.objects.get_or_create(batch=batch, index=index, defaults={"run_id": run.id})
        # Linked once the run's row exists: checked after this commit and after each drain's.
        transaction.on_commit(lambda: batch_link_pending(batch_ids=[batch.id]))
        return
    BatchTaskRunItem.objects.get_or_create(batch=batch, index=index, defaults={"task_run": run})


def _build_run(
    *,
    environment: RuntimeEnvironment,
    task_identifier: str,
    options: TriggerOptions,
    now: datetime,
    batch: BatchTaskRun | None,
) -> TaskRun:
    parent = run_parent(environment=environment, parent_run_id=options.parent_run_id)
    delayed = options.delay_until is not None and options.delay_until > now
    key = options.idempotency_key
    return TaskRun(
        id=ids.new_internal_id(now_ms=to_ms(now)),
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
        parent_run_id=parent.id if parent else None,
        root_run_id=(parent.root_run_id or parent.id) if parent else None,
        resume_parent_on_completion=options.resume_parent_on_completion and parent is not None,
        batch=batch,
        created_at=now,
        updated_at=now,
    )


def run_parent(*, environment: RuntimeEnvironment, parent_run_id: str | None) -> TaskRun | None:
    """The parent run named by a trigger or a batch, in this environment; InvalidRequest if unknown."""
    if parent_run_id is None:
        return None
    if (parent := _find(environment, parent_run_id)) is None:
        raise InvalidRequest(f"Parent run not found: {parent_run_id}")
    return parent
