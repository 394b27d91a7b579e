"""Runs and batches in the SDK's response shapes (API.md §6, §7).

Optional fields are omitted, never ``null``: the SDK's schemas throw on ``null`` for most of them.
A buffered run (an unsaved TaskRun built from its snapshot) renders through the same functions.
"""

from datetime import UTC, datetime
from typing import Any

from django.utils import timezone

from mollifier.estimate import Estimate
from runs import json_values
from runs.models import BatchTaskRun, RunStatus, TaskRun

QUEUED_LIKE = {RunStatus.QUEUED, RunStatus.DELAYED, RunStatus.PENDING_VERSION}
EXECUTING_LIKE = {RunStatus.EXECUTING, RunStatus.DEQUEUED}
COMPLETED_LIKE = {
    RunStatus.COMPLETED,
    RunStatus.CANCELED,
    RunStatus.FAILED,
    RunStatus.CRASHED,
    RunStatus.SYSTEM_FAILURE,
}


def iso(value) -> str:
    return value.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def status_flags(status: str) -> dict:
    completed = status in COMPLETED_LIKE
    return {
        "isQueued": status in QUEUED_LIKE,
        "isExecuting": status in EXECUTING_LIKE,
        "isWaiting": status == RunStatus.WAITING,
        "isCompleted": completed,
        "isSuccess": status == RunStatus.COMPLETED,
        "isFailed": completed and status != RunStatus.COMPLETED,
        "isCancelled": status == RunStatus.CANCELED,
    }


def decode_payload(payload: str | None, payload_type: str) -> tuple[bool, object]:
    """(present, value) of a stored payload, decoded the way the SDK expects to read it back."""
    if payload is None or payload_type == "application/store":
        return False, None
    if payload_type in ("application/super+json", "application/json"):
        try:
            value = json_values.loads(payload)
        except json_values.UnsafeJSON:
            return True, payload  # not JSON we can give back: the text as stored
        if payload_type == "application/super+json":
            return ("json" in value, value.get("json")) if isinstance(value, dict) else (True, value)
        return True, value
    return True, payload


def decode_metadata(metadata: str | None) -> dict | None:
    if metadata is None:
        return None
    try:
        value = json_values.loads(metadata)
    except json_values.UnsafeJSON:
        return None
    return value if isinstance(value, dict) else None


def _idempotency_key(run: TaskRun) -> str | None:
    if not run.idempotency_key:
        return None
    options = run.idempotency_key_options or {}
    return options.get("key") or run.idempotency_key  # the user's own key when the SDK told us it


def _common(run: TaskRun) -> dict:
    data = {
        "id": run.friendly_id,
        "status": (status := run.status_at(timezone.now())),
        "taskIdentifier": run.task_identifier,
        **status_flags(status),
        "isTest": run.is_test,
        "createdAt": iso(run.created_at),
        "updatedAt": iso(run.updated_at),
        "tags": sorted(run.tags),
        "costInCents": 0,
        "baseCostInCents": 0,
        "durationMs": 0,
        "depth": run.depth,
    }
    optional = {
        "idempotencyKey": _idempotency_key(run),
        "version": run.task_version,
        "ttl": run.ttl,
        "region": run.region,
        "finishedAt": iso(run.completed_at) if run.completed_at else None,
        "delayedUntil": iso(run.delay_until) if run.delay_until else None,
        "metadata": decode_metadata(run.metadata),
    }
    data.update({key: value for key, value in optional.items() if value is not None})
    return data


def _trigger_function(run: TaskRun) -> str:
    wait = "AndWait" if run.resume_parent_on_completion else ""
    return ("batchTrigger" if run.batch_id else "trigger") + wait


def run_detail(run: TaskRun, *, payload_url: str | None = None, estimate: Estimate | None = None) -> dict:
    """``payload_url``: the presigned download URL of an offloaded payload (runs.api.presigned).
    ``estimate``: for a run still in the mollifier buffer, when its row should be written (a key
    the SDK drops: ``mollifier: {position, estimatedWriteAt}``)."""
    data = _common(run)
    data["triggerFunction"] = _trigger_function(run)
    data["relatedRuns"] = {}  # the SDK requires the object; nested run summaries are not kept here
    data["attemptCount"] = 0
    if run.batch_id:
        data["batchId"] = f"batch_{run.batch_id}"
    present, payload = decode_payload(run.payload, run.payload_type)
    if present:
        data["payload"] = payload
    if payload_url:
        data["payloadPresignedUrl"] = payload_url  # the SDK downloads it in place of the payload
    if run.error:
        data["error"] = run.error
    if estimate is not None:
        data["mollifier"] = buffered_estimate(estimate)
    return data


def buffered_estimate(estimate: Estimate) -> dict:
    data: dict[str, Any] = {"position": estimate.position}
    if estimate.write_at_ms is not None:
        data["estimatedWriteAt"] = iso(datetime.fromtimestamp(estimate.write_at_ms / 1000, tz=UTC))
    return data


def run_list_item(run: TaskRun) -> dict:
    data = _common(run)
    environment = run.environment
    data["env"] = {"id": str(environment.pk), "name": environment.slug}
    return data


def batch_detail(batch: BatchTaskRun, run_ids: list[str]) -> dict:
    data: dict[str, Any] = {
        "id": batch.friendly_id,
        "status": batch.status,
        "createdAt": iso(batch.created_at),
        "updatedAt": iso(batch.updated_at),
        "runCount": batch.run_count,
        "runs": run_ids,
        "processing": {"errors": []},
    }
    if batch.completed_at:
        data["processing"]["completedAt"] = iso(batch.completed_at)
    if batch.idempotency_key:
        data["idempotencyKey"] = (batch.idempotency_key_options or {}).get("key") or batch.idempotency_key
    return data
