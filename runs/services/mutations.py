"""Changing a run after its trigger — tags, metadata, reschedule, replay — wherever it lives.

A buffered run changes atomically in its buffer entry; a written run changes in its row; a run a
drainer holds right now is waited for briefly, then 503 (runs.services.mid_drain). Either way the
answer is the same, and a change acknowledged while buffered survives materialisation.
"""

import logging

from django.conf import settings
from django.db import InterfaceError, OperationalError, transaction
from django.utils import timezone

from mollifier import buffer
from mollifier.buffer import MutateResult, MutateStatus
from mollifier.exceptions import BufferUnavailable, SinkUnavailable
from runs import conf, durations, ids, json_values
from runs.exceptions import InvalidRequest, RunNotFound, ServiceUnavailable, TooLarge, Unprocessable
from runs.models import RunStatus, TaskRun
from runs.services.mid_drain import change_buffered_run
from runs.services.packets import PACKET_TYPE
from runs.snapshots import to_ms

logger = logging.getLogger(__name__)


def _row(run: TaskRun) -> TaskRun:
    """The row of a run that left the buffer while we looked (locked for update)."""
    row = TaskRun.objects.select_for_update().filter(environment_id=run.environment_id, id=run.id).first()
    if row is None:
        raise RunNotFound("Run not found")
    return row


def _wait_in_buffer(run: TaskRun, change) -> MutateResult | None:
    """Apply ``change`` (a buffer mutation) to a buffered run; None when it left the buffer."""
    result = change_buffered_run(
        change, org_id=str(run.organization_id), env_id=str(run.environment_id), run_id=run.friendly_id
    )
    return None if result.status in (MutateStatus.MATERIALISED, MutateStatus.NOT_FOUND) else result


# -- tags ----------------------------------------------------------------------------------------


def task_run_add_tags(*, run: TaskRun, tags: list[str]) -> int:
    """Add tags (de-duplicated); returns how many were new. Unprocessable past MAX_TAGS_PER_RUN."""
    limit = int(settings.TRIGGER["MAX_TAGS_PER_RUN"])
    if run.is_buffered:
        before = set(run.tags)
        result = _wait_in_buffer(run, lambda **kw: buffer.add_tags(tags=tags, max_tags=limit, **kw))
        if result is not None:
            if result.status == MutateStatus.LIMIT_EXCEEDED:
                raise Unprocessable(f"Runs can only have {limit} tags, this would make {result.value}.")
            return len(set(tags) - before)
    with transaction.atomic():
        row = _row(run)
        merged = list(dict.fromkeys([*row.tags, *tags]))
        if len(merged) > limit:
            raise Unprocessable(f"Runs can only have {limit} tags, this would make {len(merged)}.")
        added = len(merged) - len(row.tags)
        if added:
            row.tags, row.updated_at = sorted(merged), timezone.now()
            row.save(update_fields=["tags", "updated_at"])
        return added


# -- metadata ------------------------------------------------------------------------------------


def metadata_of(run: TaskRun) -> dict:
    """The run's metadata as an object ({} when there is none, or it cannot be read back)."""
    try:
        value = json_values.loads(run.metadata) if run.metadata else {}
    except json_values.UnsafeJSON:
        return {}
    return value if isinstance(value, dict) else {}


def apply_operations(metadata: dict, operations: list[dict]) -> dict:
    """The SDK's metadata operations (update, set, delete, append, remove, increment), in order."""
    result = dict(metadata)
    for operation in operations:
        kind, key = operation.get("type"), str(operation.get("key", "")).removeprefix("$.")
        value = operation.get("value")
        if kind == "update" and isinstance(value, dict):
            result.update(value)
        elif kind == "set":
            result[key] = value
        elif kind == "delete":
            result.pop(key, None)
        elif kind == "append":
            current = result.get(key)
            result[key] = (
                [*current, value] if isinstance(current, list) else ([current, value] if key in result else [value])
            )
        elif kind == "remove" and isinstance(result.get(key), list):
            result[key] = [item for item in result[key] if item != value]
        elif kind == "increment" and isinstance(value, (int, float)):
            current = result.get(key, 0)
            result[key] = (current if isinstance(current, (int, float)) else 0) + value
    return result


def _encode_metadata(metadata: dict) -> str:
    """The JSON text to store; refused (400) when an operation made a value no reader could take
    back (an increment past the float range or the integer digit limit), 413 past the size limit."""
    try:
        text = json_values.dumps(metadata)
    except json_values.UnsafeJSON as error:
        raise InvalidRequest(f"The metadata would not be valid JSON: {error}") from None
    limit = settings.TRIGGER["MAX_METADATA_BYTES"]
    if len(text.encode()) > limit:
        raise TooLarge(f"Metadata is larger than {limit} bytes.")
    return text


def task_run_update_metadata(*, run: TaskRun, metadata: dict | None, operations: list[dict]) -> dict:
    """Replace the metadata (when given), then apply the operations; returns the new metadata.

    A buffered run is changed by compare-and-set on its metadata version, retried under contention."""

    def change(current: dict) -> dict:
        return apply_operations(metadata if metadata is not None else current, operations)

    if run.is_buffered:
        for _ in range(conf.metadata_cas_attempts()):
            entry = buffer.get(org_id=str(run.organization_id), run_id=run.friendly_id)
            if entry is None or entry.materialised:
                break
            current = metadata_of(TaskRun(metadata=entry.metadata))
            new = change(current)
            encoded, version = _encode_metadata(new), entry.metadata_version
            result = _wait_in_buffer(
                run,
                lambda encoded=encoded, version=version, **kw: buffer.set_metadata(
                    metadata=encoded, metadata_type="application/json", expected_version=version, **kw
                ),
            )
            if result is None:
                break
            if result.status == MutateStatus.APPLIED:
                return new
        else:
            raise ServiceUnavailable("Metadata is changing too fast; retry")
    with transaction.atomic():
        row = _row(run)
        new = change(metadata_of(row))
        row.metadata, row.metadata_type, row.updated_at = _encode_metadata(new), "application/json", timezone.now()
        row.save(update_fields=["metadata", "metadata_type", "updated_at"])
        return new


def task_run_update_metadata_and_related(
    *,
    run: TaskRun,
    metadata: dict | None,
    operations: list[dict],
    parent_operations: list[dict],
    root_operations: list[dict],
) -> dict:
    """The SDK's metadata update: the run's own change, then operations on its parent and root runs
    (the SDK's ``metadata.parent`` / ``metadata.root``). A related run that is not in the run's
    environment is left alone. Returns the run's new metadata.

    Once the run's own change has landed, the answer is a success: a related run that cannot be
    changed right now (held mid-drain past the wait, a store unreachable), or whose operations
    would make metadata it cannot hold (past the size limit, not JSON), has its operations skipped
    and logged. Answered 503, the SDK's retry would apply the run's own operations (an increment,
    an append) a second time; answered 4xx, the client would be told its own change failed."""
    new = task_run_update_metadata(run=run, metadata=metadata, operations=operations)
    for related_id, related_operations in ((run.parent_run_id, parent_operations), (run.root_run_id, root_operations)):
        if related_operations and related_id:
            related_run_id = ids.to_friendly(ids.RUN, related_id)
            try:
                related = TaskRun.objects.get_with_fallback(environment=run.environment, run_id=related_run_id)
                task_run_update_metadata(run=related, metadata=None, operations=related_operations)
            except (TaskRun.DoesNotExist, RunNotFound):  # no such run, or its row deleted meanwhile
                continue
            except (
                ServiceUnavailable,
                BufferUnavailable,
                SinkUnavailable,
                OperationalError,
                InterfaceError,
                InvalidRequest,
                TooLarge,
            ) as error:
                logger.warning(
                    "runs.metadata.related_skipped run=%s related=%s operations=%d error=%s",
                    run.friendly_id,
                    related_run_id,
                    len(related_operations),
                    error,
                )
    return new


# -- reschedule ----------------------------------------------------------------------------------


def task_run_reschedule(*, run: TaskRun, delay: str) -> None:
    """Move a DELAYED run's start. InvalidRequest when it is not delayed or ``delay`` is invalid."""
    now = timezone.now()
    delay_until = durations.parse_delay(delay, now=now)
    if delay_until is None:
        raise InvalidRequest(f"delay: {durations.DELAY_HELP}")
    if (status := run.status_at(now)) != RunStatus.DELAYED:
        raise InvalidRequest(f"Cannot reschedule a run that is not delayed (it is {status}).")
    if run.is_buffered:
        result = _wait_in_buffer(run, lambda **kw: buffer.set_delay(delay_until_ms=to_ms(delay_until), **kw))
        if result is not None:
            return
    with transaction.atomic():
        row = _row(run)
        if (status := row.status_at(now)) != RunStatus.DELAYED:
            raise InvalidRequest(f"Cannot reschedule a run that is not delayed (it is {status}).")
        row.delay_until, row.updated_at = delay_until, now
        row.save(update_fields=["delay_until", "updated_at"])


# -- replay --------------------------------------------------------------------------------------

REPLAY_OVERRIDES = {
    "payloadType",
    "metadata",
    "tags",
    "queue",
    "concurrencyKey",
    "machine",
    "version",
    "region",
    "delay",
    "ttl",
    "idempotencyKey",
    "idempotencyKeyTTL",
    "maxAttempts",
    "maxDuration",
    "priority",
}


def task_run_replay_body(*, run: TaskRun, overrides: dict) -> dict:
    """The trigger body (wire shape) of a replay: the run's payload and options, with ``overrides``
    (the SDK's ReplayRunRequestBody fields) replacing them. The view validates it like any trigger,
    and the new run goes through the gate like any trigger."""
    unknown = set(overrides) - REPLAY_OVERRIDES - {"payload"}
    if unknown:
        raise InvalidRequest(f"Unknown replay fields: {', '.join(sorted(unknown))}")
    options = {
        "payloadType": run.payload_type,
        "tags": run.tags,
        "queue": {"name": run.queue} if run.queue else None,
        "concurrencyKey": run.concurrency_key,
        "machine": run.machine,
        "lockToVersion": run.task_version,
        "region": run.region,
        "ttl": run.ttl,
        "maxAttempts": run.max_attempts,
        "maxDuration": run.max_duration,
        "priority": run.priority,
        "metadata": metadata_of(run) or None,
    }
    for name, value in overrides.items():
        if name == "version":
            options["lockToVersion"] = value
        elif name == "queue":
            options["queue"] = {"name": value}
        elif name != "payload":
            options[name] = value
    payload = overrides["payload"] if "payload" in overrides else run.payload
    if "payload" in overrides and "payloadType" not in overrides and options["payloadType"] == PACKET_TYPE:
        options["payloadType"] = "application/json"  # the SDK's default; the new payload is not a packet path
    return {"payload": payload, "options": {k: v for k, v in options.items() if v is not None}}
