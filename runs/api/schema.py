"""The OpenAPI description of the API (drf-spectacular): response shapes, errors, auth.

These serializers only describe what runs/api/presenters.py renders (the SDK's shapes); they are
never used to render. Optional fields are documented as not required and never nullable, as on the
wire. Status fields take the model's ``.choices`` (values and labels): drf-spectacular matches
``ENUM_NAME_OVERRIDES`` by both, so the two ``status`` enums get their own names (RunStatusEnum,
BatchStatusEnum) instead of colliding under a hashed one.
"""

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse
from rest_framework import serializers

from runs.models import BatchTaskRun, RunStatus


class SecretKeyScheme(OpenApiAuthenticationExtension):
    target_class = "runs.api.authentication.SecretKeyAuthentication"
    name = "secretKey"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer", "description": "An environment's secret key (tr_dev_…, tr_prod_…)."}


class ErrorSchema(serializers.Serializer):
    error = serializers.CharField()
    details = serializers.ListField(child=serializers.CharField(), required=False)


class TriggerResponseSchema(serializers.Serializer):
    id = serializers.CharField()
    isCached = serializers.BooleanField()


class IdSchema(serializers.Serializer):
    id = serializers.CharField()


class MessageSchema(serializers.Serializer):
    message = serializers.CharField()


class MetadataSchema(serializers.Serializer):
    metadata = serializers.DictField()


class _RunCommon(serializers.Serializer):
    id = serializers.CharField()
    status = serializers.ChoiceField(choices=RunStatus.choices)
    taskIdentifier = serializers.CharField()
    isQueued = serializers.BooleanField()
    isExecuting = serializers.BooleanField()
    isWaiting = serializers.BooleanField()
    isCompleted = serializers.BooleanField()
    isSuccess = serializers.BooleanField()
    isFailed = serializers.BooleanField()
    isCancelled = serializers.BooleanField()
    isTest = serializers.BooleanField()
    createdAt = serializers.DateTimeField()
    updatedAt = serializers.DateTimeField()
    tags = serializers.ListField(child=serializers.CharField())
    costInCents = serializers.IntegerField()
    baseCostInCents = serializers.IntegerField()
    durationMs = serializers.IntegerField()
    depth = serializers.IntegerField()
    idempotencyKey = serializers.CharField(required=False)
    version = serializers.CharField(required=False)
    ttl = serializers.CharField(required=False)
    region = serializers.CharField(required=False)
    finishedAt = serializers.DateTimeField(required=False)
    delayedUntil = serializers.DateTimeField(required=False)
    metadata = serializers.DictField(required=False)


class BufferedEstimateSchema(serializers.Serializer):
    """Only on a run still waiting in the mollifier buffer (the SDK drops unknown keys)."""

    position = serializers.IntegerField(help_text="Runs of its environment's queue ahead of it (0: next).")
    estimatedWriteAt = serializers.DateTimeField(
        required=False, help_text="When its row should be written to Postgres (absent while no drainer runs)."
    )


class RunSchema(_RunCommon):
    triggerFunction = serializers.ChoiceField(
        choices=["trigger", "triggerAndWait", "batchTrigger", "batchTriggerAndWait"]
    )
    relatedRuns = serializers.DictField()
    attemptCount = serializers.IntegerField()
    batchId = serializers.CharField(required=False)
    payload = serializers.JSONField(required=False)
    payloadPresignedUrl = serializers.CharField(required=False)
    error = serializers.DictField(required=False)
    mollifier = BufferedEstimateSchema(required=False)


class EnvSchema(serializers.Serializer):
    id = serializers.CharField()
    name = serializers.CharField()


class RunListItemSchema(_RunCommon):
    env = EnvSchema()


class PaginationSchema(serializers.Serializer):
    next = serializers.CharField(required=False)
    previous = serializers.CharField(required=False)


class RunListSchema(serializers.Serializer):
    data = RunListItemSchema(many=True)  # type: ignore[assignment]  # a field named like Serializer.data
    pagination = PaginationSchema()


class BatchCreatedSchema(serializers.Serializer):
    id = serializers.CharField()
    runCount = serializers.IntegerField()
    isCached = serializers.BooleanField()
    idempotencyKey = serializers.CharField(required=False)


class BatchItemsSchema(serializers.Serializer):
    id = serializers.CharField()
    itemsAccepted = serializers.IntegerField()
    itemsDeduplicated = serializers.IntegerField()
    sealed = serializers.BooleanField()
    enqueuedCount = serializers.IntegerField()
    expectedCount = serializers.IntegerField()


class BatchProcessingSchema(serializers.Serializer):
    completedAt = serializers.DateTimeField(required=False)
    errors = serializers.ListField(child=serializers.DictField())  # type: ignore[assignment]  # the wire's name


class BatchSchema(serializers.Serializer):
    id = serializers.CharField()
    status = serializers.ChoiceField(choices=BatchTaskRun.Status.choices)
    createdAt = serializers.DateTimeField()
    updatedAt = serializers.DateTimeField()
    runCount = serializers.IntegerField()
    runs = serializers.ListField(child=serializers.CharField())
    processing = BatchProcessingSchema()
    idempotencyKey = serializers.CharField(required=False)


ERRORS = {
    code: OpenApiResponse(ErrorSchema, description=text)
    for code, text in {
        400: "Invalid input",
        401: "Missing or wrong secret key",
        404: "Not found in this environment",
        413: "Too large",
        415: "Unsupported content type",
        422: "Cannot be done to this run",
        429: "The organisation's buffer is full; retry after x-ratelimit-reset (ms)",
        503: "A store is unavailable or the run is mid-drain; retry",
    }.items()
}


def responses(ok_code: int, ok_schema, *errors: int) -> dict:
    return {ok_code: ok_schema, **{code: ERRORS[code] for code in (400, 401, 503, *errors)}}


LIST_PARAMETERS = [
    OpenApiParameter(name, OpenApiTypes.STR, OpenApiParameter.QUERY, required=False, description=description)
    for name, description in [
        ("filter[status]", "comma list of run statuses"),
        ("filter[taskIdentifier]", "comma list"),
        ("filter[version]", "comma list"),
        ("filter[tag]", "comma list; runs with any of them"),
        ("filter[isTest]", "true or false"),
        ("filter[createdAt][from]", "epoch milliseconds or ISO 8601"),
        ("filter[createdAt][to]", "epoch milliseconds or ISO 8601"),
        ("filter[createdAt][period]", "a duration like 1d"),
        ("filter[batch]", "batch_…"),
        ("filter[queue]", "comma list"),
        ("filter[machine]", "comma list"),
        ("filter[region]", "comma list"),
        ("filter[env]", "project route only: environment slugs or types"),
        ("page[size]", "1 to 100 (default 25)"),
        ("page[after]", "the previous page's pagination.next"),
        ("page[before]", "the next page's pagination.previous"),
    ]
]
