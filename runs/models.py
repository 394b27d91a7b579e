import hashlib
import secrets

from django.contrib.postgres.fields import ArrayField
from django.db import models
from django.utils import timezone

from runs import ids
from runs.managers import TaskRunManager


class Organization(models.Model):
    slug = models.SlugField(max_length=64, unique=True)
    title = models.CharField(max_length=200)
    # Read strictly: only JSON `true` counts for boolean flags (see runs.services.flags).
    feature_flags = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["slug"]

    def __str__(self) -> str:
        return self.title or self.slug


class Project(models.Model):
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="projects")
    name = models.CharField(max_length=200)
    slug = models.SlugField(max_length=64)
    external_ref = models.CharField(max_length=64, unique=True)  # proj_…, what the SDK calls projectRef
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["organization", "slug"], name="project_org_slug_uniq")]

    def __str__(self) -> str:
        return f"{self.organization.slug}/{self.slug}"


class EnvironmentQuerySet(models.QuerySet):
    def by_ids(self, env_ids) -> dict[str, "RuntimeEnvironment"]:
        """Environments by the string ids the buffer carries (one query; other strings skipped)."""
        numbers = {int(env_id) for env_id in env_ids if str(env_id).isdigit()}
        return {str(pk): environment for pk, environment in self.in_bulk(numbers).items()}  # type: ignore[misc]


class RuntimeEnvironment(models.Model):
    class Type(models.TextChoices):
        DEVELOPMENT = "DEVELOPMENT"
        STAGING = "STAGING"
        PRODUCTION = "PRODUCTION"
        PREVIEW = "PREVIEW"

    KEY_PREFIXES = {Type.DEVELOPMENT: "dev", Type.STAGING: "stg", Type.PRODUCTION: "prod", Type.PREVIEW: "preview"}

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="environments")
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="environments")
    type = models.CharField(max_length=16, choices=Type.choices)
    slug = models.SlugField(max_length=64)
    # The secret key is shown once, when made; only its SHA-256 and a short prefix are kept.
    api_key_hash = models.CharField(max_length=64, unique=True)
    api_key_prefix = models.CharField(max_length=24)
    created_at = models.DateTimeField(default=timezone.now)

    objects = EnvironmentQuerySet.as_manager()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["project", "slug"], name="env_project_slug_uniq")]

    def __str__(self) -> str:
        return f"{self.project}/{self.slug}"

    @staticmethod
    def hash_api_key(key: str) -> str:
        return hashlib.sha256(key.encode()).hexdigest()

    def rotate_api_key(self) -> str:
        """Set a fresh secret key and return it in clear; the caller shows it once and forgets it."""
        # Not the `tr_<env>_sk_…` shape: the SDK takes that for a key that cannot sign JWTs.
        key = f"tr_{self.KEY_PREFIXES[self.Type(self.type)]}_{secrets.token_urlsafe(24)}"
        self.api_key_hash = self.hash_api_key(key)
        self.api_key_prefix = key[: key.index("_", 3) + 5]  # "tr_dev_" + 4 characters, for display
        return key


class RunStatus(models.TextChoices):
    """The SDK's `RunStatus` (x-trigger-api-version 2025-07-16), stored as is."""

    PENDING_VERSION = "PENDING_VERSION"
    QUEUED = "QUEUED"
    DEQUEUED = "DEQUEUED"
    EXECUTING = "EXECUTING"
    WAITING = "WAITING"
    COMPLETED = "COMPLETED"
    CANCELED = "CANCELED"
    FAILED = "FAILED"
    CRASHED = "CRASHED"
    SYSTEM_FAILURE = "SYSTEM_FAILURE"
    DELAYED = "DELAYED"
    EXPIRED = "EXPIRED"
    TIMED_OUT = "TIMED_OUT"


class KeyedBufferMarker(models.Model):
    """Runs with an idempotency key may be waiting in this environment's mollifier buffer.

    Made sure of (runs/services/keyed_markers.py) before the buffer takes the environment's first
    keyed run, and deleted once nothing of the environment waits there. While Redis does not answer,
    a keyed trigger can check its key against rows only: with no marker, no buffered run can hold
    the key and the trigger writes its row; with one, it answers 503 (the SDK retries). Generations
    come from one sequence, so a newer marker is always a larger number (mollifier/lua/lib/accept.lua)."""

    environment = models.OneToOneField(
        RuntimeEnvironment, on_delete=models.CASCADE, primary_key=True, related_name="keyed_buffer_marker"
    )
    generation = models.BigIntegerField()
    set_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"keyed runs may be buffered in {self.environment_id} (generation {self.generation})"


class BatchTaskRun(models.Model):
    class Status(models.TextChoices):
        PENDING = "PENDING"  # waiting for its items
        PROCESSING = "PROCESSING"  # sealed, some runs not yet written
        COMPLETED = "COMPLETED"  # every run exists
        PARTIAL_FAILED = "PARTIAL_FAILED"
        ABORTED = "ABORTED"

    id = models.CharField(max_length=32, primary_key=True, default=ids.new_internal_id, editable=False)
    environment = models.ForeignKey(RuntimeEnvironment, on_delete=models.CASCADE, related_name="batches")
    run_count = models.PositiveIntegerField()
    task_identifiers = ArrayField(models.CharField(max_length=128), default=list, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    sealed = models.BooleanField(default=False)
    idempotency_key = models.CharField(max_length=2048, null=True, blank=True)
    idempotency_key_options = models.JSONField(null=True, blank=True)
    request_key = models.CharField(max_length=128, null=True, blank=True)  # the SDK's, of the create call
    parent_run_id = models.CharField(max_length=64, null=True, blank=True)
    resume_parent_on_completion = models.BooleanField(default=False)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["environment", "idempotency_key"], name="batch_env_idem_uniq"),
            models.UniqueConstraint(
                fields=["environment", "request_key"],
                condition=models.Q(request_key__isnull=False),
                name="batch_env_request_uniq",
            ),
        ]

    def __str__(self) -> str:
        return self.friendly_id

    @property
    def friendly_id(self) -> str:
        return ids.to_friendly(ids.BATCH, self.id)


class TaskRun(models.Model):
    id = models.CharField(max_length=32, primary_key=True, editable=False)
    environment = models.ForeignKey(RuntimeEnvironment, on_delete=models.CASCADE, related_name="runs")
    # Denormalised for filtering without joins.
    organization_id = models.BigIntegerField(db_index=True)
    project_id = models.BigIntegerField()

    task_identifier = models.CharField(max_length=128)
    status = models.CharField(max_length=20, choices=RunStatus.choices, default=RunStatus.QUEUED)
    payload = models.TextField(null=True, blank=True)  # as sent on the wire; decoded on read
    payload_type = models.CharField(max_length=64, default="application/json")
    metadata = models.TextField(null=True, blank=True)
    metadata_type = models.CharField(max_length=64, default="application/json")
    idempotency_key = models.CharField(max_length=2048, null=True, blank=True)
    idempotency_key_expires_at = models.DateTimeField(null=True, blank=True)
    idempotency_key_options = models.JSONField(null=True, blank=True)
    # The SDK's x-trigger-request-idempotency-key of the trigger that made the run (written directly;
    # a buffered run's is resolved in Redis): a retried request finds its first run by it.
    request_key = models.CharField(max_length=128, null=True, blank=True)
    task_version = models.CharField(max_length=128, null=True, blank=True)  # lockToVersion
    queue = models.CharField(max_length=256, null=True, blank=True)
    concurrency_key = models.CharField(max_length=256, null=True, blank=True)
    ttl = models.CharField(max_length=64, null=True, blank=True)
    max_attempts = models.PositiveIntegerField(null=True, blank=True)
    max_duration = models.PositiveIntegerField(null=True, blank=True)  # seconds
    machine = models.CharField(max_length=32, null=True, blank=True)
    priority = models.IntegerField(default=0)
    region = models.CharField(max_length=64, null=True, blank=True)
    tags = ArrayField(models.CharField(max_length=128), default=list, blank=True)
    is_test = models.BooleanField(default=False)
    delay_until = models.DateTimeField(null=True, blank=True)
    depth = models.PositiveIntegerField(default=0)
    # No database constraint: a child may reach Postgres before its parent leaves the buffer.
    parent_run = models.ForeignKey(
        "self", on_delete=models.DO_NOTHING, null=True, blank=True, related_name="+", db_constraint=False
    )
    root_run = models.ForeignKey(
        "self", on_delete=models.DO_NOTHING, null=True, blank=True, related_name="+", db_constraint=False
    )
    resume_parent_on_completion = models.BooleanField(default=False)
    batch = models.ForeignKey(BatchTaskRun, on_delete=models.SET_NULL, null=True, blank=True, related_name="runs")
    trace_id = models.CharField(max_length=64, blank=True, default="")
    span_id = models.CharField(max_length=32, blank=True, default="")

    created_at = models.DateTimeField(default=timezone.now)  # the trigger time, also for buffered runs
    updated_at = models.DateTimeField(default=timezone.now)
    completed_at = models.DateTimeField(null=True, blank=True)
    cancelled_at = models.DateTimeField(null=True, blank=True)
    cancel_reason = models.CharField(max_length=256, null=True, blank=True)
    error = models.JSONField(null=True, blank=True)
    # Buffer provenance: both null for runs that never waited in the mollifier buffer.
    buffered_at = models.DateTimeField(null=True, blank=True)
    materialised_at = models.DateTimeField(null=True, blank=True)

    objects = TaskRunManager()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["environment", "task_identifier", "idempotency_key"], name="run_env_task_idem_uniq"
            ),
            models.UniqueConstraint(
                fields=["environment", "task_identifier", "request_key"],
                condition=models.Q(request_key__isnull=False),
                name="run_env_task_request_uniq",
            ),
        ]
        indexes = [
            # Listing: newest first within an environment, keyset-paginated on (created_at, id).
            models.Index(fields=["environment", "-created_at", "-id"], name="run_env_created_idx"),
            models.Index(fields=["batch"], name="run_batch_idx"),
        ]

    def __str__(self) -> str:
        return self.friendly_id

    @property
    def friendly_id(self) -> str:
        return ids.to_friendly(ids.RUN, self.id)

    @classmethod
    def column_length(cls, name: str) -> int:
        """A text column's length (an array's: its elements'): validators and cut-offs read it here,
        so they cannot disagree with the column."""
        field = cls._meta.get_field(name)
        length = getattr(getattr(field, "base_field", field), "max_length", None)
        if length is None:
            raise ValueError(f"TaskRun.{name} has no length")
        return int(length)

    def status_at(self, now) -> str:
        """The status a reader sees at ``now``: a DELAYED run whose delay has passed is QUEUED
        (the same rule for a row and a buffered run; its ``delay_until`` is kept)."""
        if self.status == RunStatus.DELAYED and self.delay_until is not None and self.delay_until <= now:
            return RunStatus.QUEUED
        return self.status

    @property
    def is_buffered(self) -> bool:
        """True for a run read from the mollifier buffer (built from its snapshot, never saved)."""
        return self._state.adding


class BatchTaskRunItem(models.Model):
    batch = models.ForeignKey(BatchTaskRun, on_delete=models.CASCADE, related_name="items")
    task_run = models.ForeignKey(TaskRun, on_delete=models.CASCADE, related_name="batch_items")
    index = models.PositiveIntegerField()
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["batch", "index"], name="batch_item_index_uniq")]
        ordering = ["batch", "index"]

    def __str__(self) -> str:
        return f"{self.batch_id}[{self.index}]"


class BatchTaskRunPendingItem(models.Model):
    """A batch item answered with a run that is still in the mollifier buffer (its idempotency key
    was held by a buffered run). BatchTaskRunItem needs the row, so the link waits here and becomes
    an item once the run is written (runs.services.batches.batch_link_pending)."""

    batch = models.ForeignKey(BatchTaskRun, on_delete=models.CASCADE, related_name="pending_items")
    index = models.PositiveIntegerField()
    run_internal_id = models.CharField(max_length=32)  # the buffered run's internal id (no row to point at yet)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["batch", "index"], name="batch_pending_index_uniq")]
        indexes = [models.Index(fields=["run_internal_id"], name="batch_pending_run_idx")]

    def __str__(self) -> str:
        return f"{self.batch_id}[{self.index}] → run_{self.run_internal_id}"


class Packet(models.Model):
    """An object the SDK uploaded through a presigned URL (a payload of 128 KiB or more).

    The bytes live in ``storages["packets"]`` at ``path``; this row, written once they are stored,
    says whose they are and what they are: a filesystem cannot keep a content type, and the SDK
    parses a download by it. runs.services.packet_cleanup removes packets no run names.
    """

    environment = models.ForeignKey(RuntimeEnvironment, on_delete=models.CASCADE, related_name="packets")
    path = models.CharField(max_length=600, unique=True)  # env_<id>/<the SDK's filename>
    content_type = models.CharField(max_length=128)
    size = models.PositiveBigIntegerField()
    uploaded_at = models.DateTimeField()
    # When a trigger last named it: the cleanup's grace period counts from here.
    used_at = models.DateTimeField(null=True, blank=True)
    # Set by the cleanup once a written run names it: from then on it is kept with its environment.
    referenced_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [
            models.Index(
                fields=["uploaded_at"], condition=models.Q(referenced_at__isnull=True), name="packet_unreferenced_idx"
            ),
        ]

    def __str__(self) -> str:
        return self.path
