"""The validated options of one trigger, shared by single triggers and batch items."""

from dataclasses import dataclass, field
from datetime import datetime, timedelta


@dataclass(frozen=True, kw_only=True)
class TriggerOptions:
    payload: str | None = None
    payload_type: str = "application/json"
    idempotency_key: str | None = None
    idempotency_key_ttl: timedelta | None = None  # None: the default (30 days)
    idempotency_key_options: dict | None = None
    delay_until: datetime | None = None
    ttl: str | None = None
    tags: list[str] = field(default_factory=list)
    queue: str | None = None
    concurrency_key: str | None = None
    max_attempts: int | None = None
    max_duration: int | None = None
    metadata: str | None = None  # JSON text
    metadata_type: str = "application/json"
    machine: str | None = None
    priority: int = 0
    region: str | None = None
    lock_to_version: str | None = None
    is_test: bool = False
    parent_run_id: str | None = None  # friendly id (run_…)
    resume_parent_on_completion: bool = False
