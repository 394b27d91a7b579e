"""Triggering a run: the one place that decides how a trigger is answered (DESIGN §4).

Order: request idempotency → mint the id → idempotency key (Postgres → buffer → pre-gate claim) →
gate → write (Postgres row, or buffer entry) → publish or release the claim → remember the request.
The id is minted before anything is written; whichever store receives the run keeps it.
"""

import logging
import math
import random
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.db import IntegrityError, InterfaceError, OperationalError, transaction
from django.utils import timezone

from mollifier import buffer, claims, conf, gate, rate
from mollifier.buffer import AcceptResult, AcceptStatus
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
from runs.services.keyed_markers import (
    KeyedMarkerNeeded,
    keyed_buffer_may_hold,
    keyed_marker_generation,
    keyed_marker_make_sure,
)
from runs.services.packets import PACKET_TYPE, packets_use
from runs.snapshots import entry_to_run, run_to_entry, to_ms
from trigger_project.postgres import breaker as postgres_breaker

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
    idempotency claim too long, or when an enrolled organisation's key is in no row and the buffer,
    which may hold it, does not answer. Nothing is written before validation has passed.
    A packet payload (``application/store``) must name a packet of this environment: see packets_use.
    """
    now = now or timezone.now()
    if options.payload_type == PACKET_TYPE and batch is None:  # batch items: checked together, before any is written
        packets_use(environment=environment, paths=[options.payload], now=now)
    run = task_run_prepare(
        environment=environment, task_identifier=task_identifier, options=options, now=now, batch=batch
    )
    # The request's key rides with the run: on its row (unique per environment and task) or, for an
    # enrolled organisation, resolved by the gate's own script. No lookup before: no round trip.
    run.request_key = request_key
    return task_run_commit(run=run, options=options, now=now, batch=batch, batch_index=batch_index)


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
    """Write a prepared run (Postgres or the buffer), or find the one its idempotency key names.

    A batch's items are committed inside the batch's transaction: a keyed item the buffer takes
    only once the environment's keyed marker is committed raises KeyedMarkerNeeded instead, and
    the batch makes sure of the marker outside its transaction and sends its items again."""
    return _trigger(run=run, options=options, now=now, batch=batch, batch_index=batch_index)


def _trigger(
    *, run: TaskRun, options: TriggerOptions, now: datetime, batch: BatchTaskRun | None, batch_index: int | None
) -> TriggerOutcome:
    environment = run.environment
    enrolled = mollifier_enrolled(environment.organization)
    key = options.idempotency_key
    if key is None or not (conf.enabled() and enrolled):
        if key is not None and (holder := _holder_of_key(run=run, key=key, now=now, uses_buffer=False)):
            return _cached(holder, batch=batch, batch_index=batch_index, request_key=run.request_key)
        return _admit_and_write(
            run=run, options=options, now=now, batch=batch, batch_index=batch_index, enrolled=enrolled, held=None
        )
    # Read before the rows are searched for the key: the buffer takes the run only while its
    # marker has this generation (runs/services/keyed_markers.py).
    known_marker = keyed_marker_generation(environment)
    # The claim serialises same-key triggers across both stores (bypassed triggers claim too, so
    # that no path races a buffered holder); its script reads the buffered holder. The rows are
    # searched after it: a run the drain writes meanwhile is committed before it leaves the buffer,
    # so one of the two reads sees it (rows first could miss it in both).
    try:
        with claims.held(
            org_id=str(run.organization_id),
            env_id=str(run.environment_id),
            task=run.task_identifier,
            key=key,
            key_expires_ms=to_ms(run.idempotency_key_expires_at),
            now_ms=to_ms(now),
        ) as held:
            if held.outcome.kind != claims.ClaimKind.UNAVAILABLE and (
                holder := _claimed_holder(run=run, key=key, now=now, outcome=held.outcome)
            ):
                return _cached(holder, batch=batch, batch_index=batch_index, request_key=run.request_key)
            if (holder := _holder_of_key(run=run, key=key, now=now, uses_buffer=False)) is not None:
                return _cached(holder, batch=batch, batch_index=batch_index, request_key=run.request_key)
            if held.outcome.kind == claims.ClaimKind.UNAVAILABLE:
                # Redis did not answer: the key is checked against rows only, and a buffered run can
                # hold it only if the environment's keyed marker exists. The row's transaction checks
                # (keyed_buffer_may_hold; 503 if so: the SDK retries). Never buffered: its key was
                # not checked there.
                return _insert_or_find_existing(
                    run=run, key=key, now=now, batch=batch, batch_index=batch_index, unchecked_key=True
                )
            return _admit_and_write(
                run=run,
                options=options,
                now=now,
                batch=batch,
                batch_index=batch_index,
                enrolled=enrolled,
                held=held,
                known_marker=known_marker,
            )
    except ClaimTimeout as error:
        raise ServiceUnavailable(str(error)) from None


def _cached(
    holder: TaskRun, *, batch: BatchTaskRun | None, batch_index: int | None, request_key: str | None = None
) -> TriggerOutcome:
    """The answer to a trigger whose idempotency key another run holds: cached — unless it is
    the same request again (a retry gets its first run back as first answered, not cached)."""
    _link_batch_item(batch=batch, index=batch_index, run=holder)
    repeated = request_key is not None and holder.request_key == request_key
    return TriggerOutcome(run=holder, is_cached=not repeated)


KEY_NOT_CHECKABLE = (
    "The run buffer is not answering, so this idempotency key cannot be checked against the runs waiting "
    "there; retry shortly"
)
MARKER_ATTEMPTS = 3  # the buffer asks for the keyed marker at most this often before a 503


def _admit_and_write(
    *,
    run: TaskRun,
    options: TriggerOptions,
    now: datetime,
    batch: BatchTaskRun | None,
    batch_index: int | None,
    enrolled: bool,
    held: claims.Held | None,
    known_marker: int | None = None,
) -> TriggerOutcome:
    """Through the gate: into the buffer (mollified), or into Postgres; the claim, when held, is
    published with the run id (the buffer's accept publishes it in its own script).
    ``known_marker``: the keyed marker's generation, read before the rows were searched for the key."""
    environment = run.environment

    def admit(*, replace_request: bool = False) -> gate.Admission:
        return gate.admit_or_buffer(
            org_id=str(environment.organization_id),
            env_id=str(environment.pk),
            enrolled=enrolled,
            bypass=_bypass(options),
            entry=lambda: run_to_entry(run, batch_index=batch_index),
            now_ms=to_ms(now),
            claim=held.claim if held else None,
            request_key=run.request_key,
            request_ttl_ms=int(settings.TRIGGER["REQUEST_IDEMPOTENCY_TTL_SECONDS"]) * 1000,
            replace_request=replace_request,
            postgres_out=postgres_breaker.is_open(),
            marker_gen=known_marker,
        )

    admission = admit()
    replaced, marker_asks = False, 0
    while True:
        if admission.repeated_run:
            if (first := _find(environment, admission.repeated_run)) is not None:
                return _cached(first, batch=batch, batch_index=batch_index, request_key=run.request_key)
            # The run the key named was never written (its attempt failed after the gate): this one
            # is. Every later call replaces too, so no repeated run comes back: the loop ends.
            replaced = True
            admission = admit(replace_request=True)
            continue
        if admission.accepted is None or admission.accepted.status != AcceptStatus.NEEDS_MARKER:
            break
        marker_asks += 1
        if marker_asks > MARKER_ATTEMPTS:
            raise ServiceUnavailable("The run buffer's keyed marker is changing hands; retry")
        if batch is not None:  # inside the batch's transaction: a marker made here would not be committed first
            raise KeyedMarkerNeeded(environment, refused=known_marker)
        known_marker = keyed_marker_make_sure(environment, refused=known_marker)
        # Look again, now that the marker is committed: a row written for the key without the
        # buffer's word (keyed_buffer_may_hold) was committed before it.
        if options.idempotency_key and (
            holder := _holder_of_key(run=run, key=options.idempotency_key, now=now, uses_buffer=False)
        ):
            return _cached(holder, batch=batch, batch_index=batch_index, request_key=run.request_key)
        admission = admit(replace_request=replaced)
    if admission.accepted is not None:  # mollified: the buffer answered
        outcome = _buffered_outcome(run=run, accepted=admission.accepted)
        if held and admission.accepted.status == AcceptStatus.ACCEPTED:
            held.published_by_accept()
        return outcome
    # The gate's script made the request key name this run (enrolled, or shadowed, organisations).
    gate_named_run = bool(run.request_key) and admission.reason not in ("disabled", "not_enrolled")
    outcome = _insert_or_find_existing(
        run=run,
        key=options.idempotency_key,
        now=now,
        batch=batch,
        batch_index=batch_index,
        gate_named_run=gate_named_run,
    )
    if held:
        held.publish(outcome.run.friendly_id)
    if outcome.run is not run and gate_named_run and run.request_key:  # (the key again: for the type checker)
        # The gate made the request key name this trigger's run, which another run answered for.
        try:
            buffer.remember_request(
                org_id=str(environment.organization_id),
                env_id=str(environment.pk),
                task=run.task_identifier,
                request_key=run.request_key,
                run_id=outcome.run.friendly_id,
                ttl_ms=int(settings.TRIGGER["REQUEST_IDEMPOTENCY_TTL_SECONDS"]) * 1000,
            )
        except BufferUnavailable as error:
            logger.warning("runs.trigger.request_key_not_corrected env=%s error=%s", environment.pk, error)
    return outcome


def _forget_request(run: TaskRun) -> None:
    """The gate made the request's key name this run, whose row could not be written: a retry of the
    request (the SDK retries the 503) must make its run, not look for this one, which it could not
    tell apart from a row while Postgres does not answer."""
    try:
        buffer.forget_request(
            org_id=str(run.organization_id),
            env_id=str(run.environment_id),
            task=run.task_identifier,
            request_key=run.request_key or "",
            run_id=run.friendly_id,
        )
    except BufferUnavailable as error:  # the key names a run that is nowhere: the retry answers 503 until Postgres does
        logger.warning("runs.trigger.request_key_not_forgotten env=%s error=%s", run.environment_id, error)


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
    except BufferUnavailable as error:
        logger.warning("runs.trigger.buffer_unreadable env=%s error=%s", environment.pk, error)
        return None


def _holder_of_key(*, run: TaskRun, key: str, now: datetime, uses_buffer: bool) -> TaskRun | None:
    """The run holding the idempotency key now (a stale holder loses it first). With
    ``uses_buffer``: the buffer first, then the rows, so that a run the drain writes meanwhile
    (committed before it leaves the buffer) is seen by one of the two reads; BufferUnavailable
    when the buffer does not answer."""
    if uses_buffer:
        entry = buffer.lookup_idempotency(
            org_id=str(run.organization_id),
            env_id=str(run.environment_id),
            task=run.task_identifier,
            key=key,
            now_ms=to_ms(now),
        )
        if entry is not None:
            return entry_to_run(entry, environment=run.environment, now=now)
    return idempotency.idempotent_run_find(
        environment_id=run.environment_id, task_identifier=run.task_identifier, key=key, now=now
    )


def _claimed_holder(*, run: TaskRun, key: str, now: datetime, outcome: claims.ClaimOutcome) -> TaskRun | None:
    """The run the claim says holds the key (a buffered run, or a published winner), or None when
    the claim is ours or the winner is gone (the rows are searched next; Postgres's constraint
    decides). A holder the claim names that cannot be read because Redis stopped answering is a
    503 (the SDK retries): writing a row now could make a second run for the key."""
    try:
        if outcome.kind == claims.ClaimKind.BUFFERED:
            holder = _holder_of_key(run=run, key=key, now=now, uses_buffer=True)  # checks expiry
        elif outcome.kind == claims.ClaimKind.RESOLVED:
            holder = TaskRun.objects.get_with_fallback(environment=run.environment, run_id=outcome.run_id)
        else:
            return None
    except TaskRun.DoesNotExist:
        holder = None
    except BufferUnavailable:
        logger.warning("runs.trigger.buffer_lookup_failed env=%s", run.environment_id)
        raise ServiceUnavailable(KEY_NOT_CHECKABLE) from None
    if holder is not None and holder.idempotency_key == key:
        return holder
    logger.info("runs.trigger.claim_winner_gone env=%s run=%s", run.environment_id, outcome.run_id)
    return None


def _buffered_outcome(*, run: TaskRun, accepted: AcceptResult) -> TriggerOutcome:
    if accepted.status == AcceptStatus.OVER_CAP:
        # The SDK waits this long, a few times, then gives up: it should cover the time the
        # organisation's backlog takes to drain at the pace the drain keeps now (spread, so that the
        # refused callers do not all come back at once), not a flat second.
        try:
            pace = rate.state().pace
        except BufferUnavailable:
            pace = conf.drain_max_rows_per_sec()
        wait_ms = accepted.count / max(pace, 1.0) * 1000 * random.uniform(1.0, 1.5)
        retry_after_ms = min(30_000, max(1_000, math.ceil(wait_ms)))
        held = f"{accepted.bytes:,} bytes" if accepted.limit == "bytes" else f"{accepted.count}"
        raise BufferFull(
            f"Too many runs are waiting to be written for this organisation ({held}); retry shortly.",
            retry_after_ms=retry_after_ms,
        )
    if accepted.status == AcceptStatus.DUPLICATE_IDEMPOTENCY:
        # A same-key trigger got into the buffer between our lookup and our accept.
        if (winner := _find(run.environment, accepted.run_id)) is not None:
            return TriggerOutcome(run=winner, is_cached=True)
        raise ServiceUnavailable("Idempotency key is changing hands; retry")
    run.buffered_at = run.created_at
    return TriggerOutcome(run=run, is_cached=False, buffered=True)


def _insert_or_find_existing(
    *,
    run: TaskRun,
    key: str | None,
    now: datetime,
    batch: BatchTaskRun | None,
    batch_index: int | None,
    gate_named_run: bool = False,
    unchecked_key: bool = False,
) -> TriggerOutcome:
    """Insert the run's row, or find the run that holds its key. When the gate made the request's
    key name this run and the database fails before the commit was sent (the row cannot have been
    written), the key is released (``_forget_request``); a failure of the commit itself leaves the
    outcome unknown, and the key as it is. ``unchecked_key``: Redis did not answer this keyed
    trigger's claim; the row is written only if no buffered run can hold keys of the environment
    (keyed_buffer_may_hold, in the row's own transaction), else ServiceUnavailable."""
    # Two passes at most: a concurrent trigger may take the key between our read and our insert.
    for attempt in range(2):
        if key is not None and attempt:
            existing = idempotency.idempotent_run_find(
                environment_id=run.environment_id, task_identifier=run.task_identifier, key=key, now=now
            )
            if existing is not None:
                _link_batch_item(batch=batch, index=batch_index, run=existing)
                return TriggerOutcome(run=existing, is_cached=True)
        committing = False
        try:
            with transaction.atomic():
                if unchecked_key and keyed_buffer_may_hold(run.environment):
                    raise ServiceUnavailable(KEY_NOT_CHECKABLE)
                run.save(force_insert=True)
                _link_batch_item(batch=batch, index=batch_index, run=run)
                committing = True
            return TriggerOutcome(run=run, is_cached=False)
        except (OperationalError, InterfaceError, ServiceUnavailable):
            if gate_named_run and not committing:
                _forget_request(run)
            raise
        except IntegrityError as error:
            violated = _violated_constraint(error)
            if violated == REQUEST_CONSTRAINT and (first := _run_of_request(run)) is not None:
                return TriggerOutcome(run=first, is_cached=False)  # a retried request: its first run
            if violated != idempotency.UNIQUE_CONSTRAINT:
                raise
    raise IntegrityError(f"idempotency key {key!r} kept changing hands")


REQUEST_CONSTRAINT = "run_env_task_request_uniq"


def _run_of_request(run: TaskRun) -> TaskRun | None:
    return TaskRun.objects.filter(
        environment_id=run.environment_id, task_identifier=run.task_identifier, request_key=run.request_key
    ).first()


def _violated_constraint(error: IntegrityError) -> str | None:
    diag = getattr(error.__cause__, "diag", None)
    return getattr(diag, "constraint_name", None)


def _link_batch_item(*, batch: BatchTaskRun | None, index: int | None, run: TaskRun) -> None:
    """Make ``run`` the batch's item ``index``. A run still in the buffer has no row to point at
    yet: the link waits as a pending item until the run is written."""
    if batch is None or index is None:
        return
    if run.is_buffered:
        BatchTaskRunPendingItem.objects.get_or_create(batch=batch, index=index, defaults={"run_internal_id": run.id})
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
