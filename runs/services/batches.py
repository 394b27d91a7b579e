"""Batches (two-phase, SDK ≥ 4.3.1): create the batch, then stream its items as NDJSON.

Items are deduplicated by ``(batch, index)``, so the SDK may resend the whole stream safely. A batch
is sealed once ``run_count`` distinct items have arrived.
"""

import logging
from dataclasses import dataclass
from datetime import datetime

from django.db import IntegrityError, transaction
from django.utils import timezone

from mollifier import buffer, conf
from mollifier.exceptions import BufferUnavailable
from runs import ids
from runs.exceptions import BatchNotFound, InvalidRequest, ServiceUnavailable
from runs.models import BatchTaskRun, BatchTaskRunItem, BatchTaskRunPendingItem, RuntimeEnvironment
from runs.options import TriggerOptions
from runs.services.batch_items import batch_link_pending, batch_refresh_status
from runs.services.flags import mollifier_enrolled
from runs.services.keyed_markers import KeyedMarkerNeeded, keyed_marker_make_sure
from runs.services.packets import PACKET_TYPE, packets_use
from runs.services.trigger import MARKER_ATTEMPTS, run_parent, task_run_commit, task_run_prepare

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchItem:
    index: int
    task_identifier: str
    options: TriggerOptions


@dataclass(frozen=True)
class BatchItemsOutcome:
    batch: BatchTaskRun
    accepted: int
    deduplicated: int
    sealed: bool
    stored: int  # distinct items the batch holds now


def batch_create(
    *,
    environment: RuntimeEnvironment,
    run_count: int,
    task_identifiers: list[str],
    idempotency_key: str | None = None,
    idempotency_key_options: dict | None = None,
    parent_run_id: str | None = None,
    resume_parent_on_completion: bool = False,
    request_key: str | None = None,
) -> tuple[BatchTaskRun, bool]:
    """Create a batch, or return the one this call repeats; the bool says "cached" (skip the items).

    A retried call (the same request key) gets its first batch back, not cached, as the official
    server answers; the request key is kept on the batch's row."""
    if request_key is not None:
        if batch := BatchTaskRun.objects.filter(environment=environment, request_key=request_key).first():
            return batch, False
    if idempotency_key is not None:
        if batch := BatchTaskRun.objects.filter(environment=environment, idempotency_key=idempotency_key).first():
            return batch, True
    if parent_run_id is not None:
        run_parent(environment=environment, parent_run_id=parent_run_id)  # InvalidRequest when unknown
    batch = BatchTaskRun(
        environment=environment,
        run_count=run_count,
        task_identifiers=sorted(set(task_identifiers)),
        idempotency_key=idempotency_key,
        idempotency_key_options=idempotency_key_options if idempotency_key else None,
        parent_run_id=parent_run_id,
        resume_parent_on_completion=resume_parent_on_completion,
        request_key=request_key,
    )
    try:
        with transaction.atomic():
            batch.save(force_insert=True)
    except IntegrityError:
        # A concurrent create won: the same request (retried), or the same idempotency key.
        if request_key is not None and (
            first := BatchTaskRun.objects.filter(environment=environment, request_key=request_key).first()
        ):
            return first, False
        return BatchTaskRun.objects.get(environment=environment, idempotency_key=idempotency_key), True
    return batch, False


def batch_get(*, environment: RuntimeEnvironment, batch_id: str) -> BatchTaskRun:
    internal = ids.from_friendly(ids.BATCH, batch_id)
    batch = (
        BatchTaskRun.objects.filter(environment=environment, id=internal).select_related("environment").first()
        if internal
        else None
    )
    if batch is None:
        raise BatchNotFound("Batch not found")
    return batch


def batch_add_items(
    *, environment: RuntimeEnvironment, batch_id: str, items: list[BatchItem], now: datetime | None = None
) -> BatchItemsOutcome:
    """Trigger every item not yet in the batch. Items are checked before anything is written."""
    now = now or timezone.now()
    batch = batch_get(environment=environment, batch_id=batch_id)
    if (bad := next((item for item in items if item.index >= batch.run_count), None)) is not None:
        raise InvalidRequest(f"Item index {bad.index} is out of range: the batch has {batch.run_count} runs.")
    packets_use(
        environment=environment,
        paths=[item.options.payload for item in items if item.options.payload_type == PACKET_TYPE],
        now=now,
    )
    stored_before: set[int] | None = None  # what the batch held before this call's first attempt
    for _ in range(MARKER_ATTEMPTS):
        try:
            return _add_items(environment=environment, batch=batch, items=items, now=now, stored_before=stored_before)
        except KeyedMarkerNeeded as needed:
            # A keyed item was to be buffered, and the environment's keyed marker must be committed
            # before it can be: outside the batch's transaction, which rolled back. Items it buffered
            # are kept (the buffer's batch slots) and not triggered again, but still counted as this
            # call's.
            stored_before = needed.stored_before
            keyed_marker_make_sure(environment, refused=needed.refused)
    raise ServiceUnavailable("The run buffer's keyed marker is changing hands; retry")


def _add_items(
    *,
    environment: RuntimeEnvironment,
    batch: BatchTaskRun,
    items: list[BatchItem],
    now: datetime,
    stored_before: set[int] | None,
) -> BatchItemsOutcome:
    with transaction.atomic():
        # One stream at a time per batch: the row lock serialises resent streams.
        batch = BatchTaskRun.objects.select_for_update().select_related("environment").get(pk=batch.pk)
        seen = _stored_indexes(batch)
        if stored_before is None:
            stored_before = set(seen)
        accepted = len({item.index for item in items} - stored_before)
        new: dict[int, BatchItem] = {}
        for item in items:
            if item.index not in seen:
                new.setdefault(item.index, item)
        # Every new item is checked before any is written, in either store: all or nothing.
        prepared = [
            (
                item,
                task_run_prepare(
                    environment=environment,
                    task_identifier=item.task_identifier,
                    options=item.options,
                    now=now,
                    batch=batch,
                ),
            )
            for item in new.values()
        ]
        try:
            for item, run in prepared:
                task_run_commit(run=run, options=item.options, now=now, batch=batch, batch_index=item.index)
        except KeyedMarkerNeeded as needed:
            needed.stored_before = stored_before
            raise
        seen |= set(new)
        sealed = len(seen) >= batch.run_count
        if sealed and not batch.sealed:
            batch.sealed = True
            batch_refresh_status(batch=batch, now=now)
            batch.save(update_fields=["sealed", "status", "completed_at", "updated_at"])
    return BatchItemsOutcome(
        batch=batch, accepted=accepted, deduplicated=len(items) - accepted, sealed=sealed, stored=len(seen)
    )


def _stored_indexes(batch: BatchTaskRun) -> set[int]:
    """Indexes the batch already holds: items, pending items, and buffered members."""
    seen = set(BatchTaskRunItem.objects.filter(batch=batch).values_list("index", flat=True))
    seen |= set(BatchTaskRunPendingItem.objects.filter(batch=batch).values_list("index", flat=True))
    return seen | set(_buffered_items(batch))


def _buffered_items(batch: BatchTaskRun) -> dict[int, str]:
    """index → friendly run id of the batch's items still in the mollifier buffer."""
    if not conf.enabled():
        return {}
    try:
        return buffer.batch_buffered_items(org_id=str(batch.environment.organization_id), batch_id=batch.id)
    except BufferUnavailable:
        if not mollifier_enrolled(batch.environment.organization):
            # Its triggers never go to the buffer: an organisation that is not enrolled does not
            # fail with Redis. Only members buffered before it left the mollifier could be missed
            # (a resent stream would trigger them again), and only while Redis is out.
            logger.warning("runs.batch.buffer_unread batch=%s (not enrolled: answered without it)", batch.id)
            return {}
        # Without the buffer's half, resent items could be triggered twice: let the SDK retry.
        raise ServiceUnavailable("Run buffer unavailable, retry later") from None


def batch_retrieve(*, environment: RuntimeEnvironment, batch_id: str) -> tuple[BatchTaskRun, list[str]]:
    """The batch and its runs' ids. Items waiting for a run that has been written meanwhile are
    linked first, so the status read is current."""
    batch = batch_get(environment=environment, batch_id=batch_id)
    if batch.status != BatchTaskRun.Status.COMPLETED and batch_link_pending(batch_ids=[batch.id]):
        batch.refresh_from_db()
    return batch, batch_run_ids(batch=batch)


def batch_run_ids(*, batch: BatchTaskRun) -> list[str]:
    """The batch's runs as friendly ids, in item order, wherever each run lives."""
    linked = BatchTaskRunItem.objects.filter(batch=batch).values_list("index", "task_run_id")
    pending = BatchTaskRunPendingItem.objects.filter(batch=batch).values_list("index", "run_internal_id")
    by_index = {index: ids.to_friendly(ids.RUN, internal_id) for index, internal_id in [*linked, *pending]}
    for index, run_id in _buffered_items(batch).items():
        by_index.setdefault(index, run_id)
    return [by_index[index] for index in sorted(by_index)]
