"""A buffered run in Python (``Entry``) and as the fields of its Redis hash.

The ``snapshot`` is what the caller needs to write the row later; the mollifier never looks inside
it. It is written once, as JSON, and never rewritten by Lua, so it round-trips exactly (empty lists
stay lists, integers of any size stay exact). The fields a run may change while it waits (tags,
metadata, delay, cancel, the idempotency key) live beside it as their own hash fields.
"""

import json
from dataclasses import dataclass, field


@dataclass(frozen=True, kw_only=True)
class Entry:
    run_id: str  # friendly id (run_…), as the caller was answered
    org_id: str
    env_id: str
    task: str
    accepted_at_ms: int
    snapshot: dict | None  # None when the stored JSON cannot be read (a poison entry)
    tags: list[str] = field(default_factory=list)
    metadata: str | None = None
    metadata_type: str | None = None
    delay_until_ms: int | None = None
    idempotency_key: str | None = None
    idempotency_expires_ms: int | None = None
    batch_id: str | None = None
    batch_index: int | None = None
    # State kept by the buffer.
    attempts: int = 0
    metadata_version: int = 0
    cancelled_at_ms: int | None = None
    cancel_reason: str | None = None
    last_error: dict | None = None
    terminal_error: dict | None = None  # set by fail(): the next drain writes a failure row
    materialised: bool = False
    raw_snapshot: str = ""


def _json(value) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def to_fields(entry: Entry) -> list[str]:
    """Flat field/value pairs for HSET (optional fields only when set)."""
    fields = {
        "run": entry.run_id,
        "org": entry.org_id,
        "env": entry.env_id,
        "task": entry.task,
        "accepted_at_ms": str(entry.accepted_at_ms),
        "attempts": str(entry.attempts),
        "metadata_version": str(entry.metadata_version),
        "tags": _json(list(entry.tags)),
        "snapshot": entry.raw_snapshot or _json(entry.snapshot),
    }
    optional = {
        "metadata": entry.metadata,
        "metadata_type": entry.metadata_type,
        "delay_until_ms": entry.delay_until_ms,
        "idem_key": entry.idempotency_key,
        "idem_expires_ms": entry.idempotency_expires_ms,
        "batch_id": entry.batch_id,
        "batch_index": entry.batch_index,
        "cancelled_at_ms": entry.cancelled_at_ms,
        "cancel_reason": entry.cancel_reason,
    }
    fields.update({name: str(value) for name, value in optional.items() if value is not None})
    return [part for pair in fields.items() for part in pair]


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except ValueError:
        return None


def _loads(value: str | None):
    if not value:
        return None
    try:
        return json.loads(value)
    except ValueError:
        return None


def _tags(value: str | None) -> list[str]:
    tags = _loads(value)
    # Lua's cjson writes an empty array as {}: anything but a list of strings reads as no tags.
    return [t for t in tags if isinstance(t, str)] if isinstance(tags, list) else []


def from_fields(raw: dict) -> Entry | None:
    """The Entry for an HGETALL reply (bytes or str), or None for an empty or foreign hash."""
    fields = {
        (k.decode() if isinstance(k, bytes) else k): (v.decode("utf-8", "replace") if isinstance(v, bytes) else v)
        for k, v in raw.items()
    }
    if not fields.get("run") or not fields.get("env") or not fields.get("org"):
        return None
    snapshot = _loads(fields.get("snapshot"))
    return Entry(
        run_id=fields["run"],
        org_id=fields["org"],
        env_id=fields["env"],
        task=fields.get("task", ""),
        accepted_at_ms=_int(fields.get("accepted_at_ms")) or 0,
        snapshot=snapshot if isinstance(snapshot, dict) else None,
        tags=_tags(fields.get("tags")),
        metadata=fields.get("metadata"),
        metadata_type=fields.get("metadata_type"),
        delay_until_ms=_int(fields.get("delay_until_ms")),
        idempotency_key=fields.get("idem_key") or None,
        idempotency_expires_ms=_int(fields.get("idem_expires_ms")),
        batch_id=fields.get("batch_id") or None,
        batch_index=_int(fields.get("batch_index")),
        attempts=_int(fields.get("attempts")) or 0,
        metadata_version=_int(fields.get("metadata_version")) or 0,
        cancelled_at_ms=_int(fields.get("cancelled_at_ms")),
        cancel_reason=fields.get("cancel_reason"),
        last_error=_loads(fields.get("last_error")),
        terminal_error=_loads(fields.get("terminal_error")),
        materialised=fields.get("materialised") == "1",
        raw_snapshot=fields.get("snapshot", ""),
    )


def error_json(code: str, message: str) -> str:
    return _json({"code": code, "message": message})
