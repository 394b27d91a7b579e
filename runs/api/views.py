"""The REST API the trigger.dev SDK speaks (API.md). Views parse and render; services decide."""

import re

from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.exceptions import ParseError, ValidationError
from rest_framework.response import Response
from rest_framework.views import APIView

from runs.api import presenters, presigned, serializers
from runs.api.errors import error_response
from runs.api.filters import environment_names, run_list_filters
from runs.api.pagination import RunCursorPagination
from runs.api.parsers import is_chunked, parse_chunked_json, read_ndjson
from runs.api.schema import (
    LIST_PARAMETERS,
    BatchCreatedSchema,
    BatchItemsSchema,
    BatchSchema,
    IdSchema,
    MessageSchema,
    MetadataSchema,
    RunListSchema,
    RunSchema,
    TriggerResponseSchema,
    responses,
)
from runs.api.tokens import public_token
from runs.exceptions import RunNotFound
from runs.models import RuntimeEnvironment
from runs.selectors import (
    environment_in_project,
    environment_matches,
    task_run_buffered_estimate,
    task_run_get,
    task_run_list,
)
from runs.services.batches import BatchItem, batch_add_items, batch_create, batch_get, batch_retrieve
from runs.services.cancel import task_run_cancel
from runs.services.idempotency import idempotency_key_reset
from runs.services.mutations import (
    metadata_of,
    task_run_add_tags,
    task_run_replay_body,
    task_run_reschedule,
    task_run_update_metadata_and_related,
)
from runs.services.trigger import task_run_trigger

REQUEST_KEY_HEADER = "x-trigger-request-idempotency-key"
_PRINTABLE = re.compile(r"^[\x21-\x7e]{1,128}$")


class EnvironmentApi(APIView):
    """Base: every endpoint acts inside the environment of the caller's secret key."""

    @property
    def environment(self) -> RuntimeEnvironment:
        return self.request.user.environment  # type: ignore[union-attr]  # SecretKeyAuthentication's user

    def request_key(self) -> str | None:
        value = self.request.headers.get(REQUEST_KEY_HEADER)
        if value is None:
            return None
        if not _PRINTABLE.match(value):
            raise ParseError(f"{REQUEST_KEY_HEADER} must be 1 to 128 printable characters")
        return value

    def json_object(self, *, required: bool = True) -> dict:
        """The JSON object body (also sent chunked); 400 when it is not an object, or missing and
        ``required`` (else an empty dict)."""
        if is_chunked(self.request):
            data = parse_chunked_json(self.request)
        elif not self.request.META.get("CONTENT_LENGTH", "0").strip("0"):
            if required:
                raise ParseError("Request body is empty")
            return {}
        else:
            data = self.request.data
        if not isinstance(data, dict):
            raise ParseError("Request body must be a JSON object")
        return data

    def body(self, serializer_class) -> dict:
        """The validated JSON object body; 400 when it is missing, not an object, or invalid."""
        serializer = serializer_class(data=self.json_object())
        serializer.is_valid(raise_exception=True)
        return serializer.validated_data


def _task_identifier(value: str) -> str:
    if not value or len(value) > serializers.MAX_TASK_LENGTH:
        raise ValidationError({"taskId": f"Must be 1 to {serializers.MAX_TASK_LENGTH} characters."})
    if "\x00" in value:
        raise ValidationError({"taskId": "Null characters are not allowed."})
    return value


class TaskTriggerApi(EnvironmentApi):
    @extend_schema(
        operation_id="trigger_task",
        summary="Trigger a task run",
        description=(
            "`tasks.trigger`: creates a run of `taskId` in the key's environment and answers its id. During a "
            "burst the run may wait in the mollifier buffer (answered the same, plus `x-mollifier: buffered`); "
            "it reads, lists and changes at once either way. An idempotency key or a retried "
            "`x-trigger-request-idempotency-key` answers the existing run with `isCached: true`. The "
            "`x-trigger-jwt` header is a public token that reads this run."
        ),
        request=serializers.TriggerBodySerializer,
        responses=responses(200, TriggerResponseSchema, 404, 413, 415, 429),
    )
    def post(self, request, task_id: str):
        task_identifier = _task_identifier(task_id)
        request_key = self.request_key()
        options = serializers.trigger_options_from(self.body(serializers.TriggerBodySerializer), now=timezone.now())
        outcome = task_run_trigger(
            environment=self.environment, task_identifier=task_identifier, options=options, request_key=request_key
        )
        run_id = outcome.run.friendly_id
        headers = {
            "x-trigger-jwt": public_token(
                secret_key=request.auth, environment=self.environment, scopes=[f"read:runs:{run_id}"]
            )
        }
        if outcome.buffered:
            headers["x-mollifier"] = "buffered"  # harmless to the SDK, useful to humans
        return Response({"id": run_id, "isCached": outcome.is_cached}, headers=headers)


class RunRetrieveApi(EnvironmentApi):
    @extend_schema(
        operation_id="retrieve_run",
        summary="Retrieve a run",
        description=(
            "`runs.retrieve`: the run, wherever it is (written, waiting in the buffer, or being drained), with "
            "its decoded payload or a `payloadPresignedUrl`. An unknown run is `404` with `x-should-retry: true`."
        ),
        responses=responses(200, RunSchema, 404),
    )
    def get(self, request, run_id: str):
        try:
            run = task_run_get(environment=self.environment, run_id=run_id)
        except RunNotFound as error:
            # Tell the SDK to retry: a run accepted a moment ago may not be readable yet.
            return error_response(error.message, status.HTTP_404_NOT_FOUND, headers={"x-should-retry": "true"})
        return Response(
            presenters.run_detail(
                run, payload_url=presigned.payload_url(request, run), estimate=task_run_buffered_estimate(run=run)
            )
        )


class RunCancelApi(EnvironmentApi):
    @extend_schema(
        operation_id="cancel_run",
        summary="Cancel a run",
        description=(
            "`runs.cancel`: the run becomes CANCELED, also while it waits in the buffer (it is then written "
            "CANCELED). A run that has already finished is left as it is."
        ),
        request=None,
        responses=responses(200, IdSchema, 404),
    )
    def post(self, request, run_id: str):
        run = task_run_cancel(run=task_run_get(environment=self.environment, run_id=run_id))
        return Response({"id": run.friendly_id})


class RunTagsApi(EnvironmentApi):
    @extend_schema(
        operation_id="add_run_tags",
        summary="Add tags to a run",
        description="Adds the tags the run does not have yet; `422` past the per-run limit (10 by default).",
        request=serializers.AddTagsSerializer,
        responses=responses(200, MessageSchema, 404, 413, 415, 422),
    )
    def post(self, request, run_id: str):
        run = task_run_get(environment=self.environment, run_id=run_id)
        added = task_run_add_tags(run=run, tags=self.body(serializers.AddTagsSerializer)["tags"])
        return Response({"message": f"Successfully set {added} new tags."})


class RunMetadataApi(EnvironmentApi):
    @extend_schema(
        operation_id="get_run_metadata",
        summary="Read a run's metadata",
        description="The run's metadata object (empty when it has none), wherever the run is.",
        responses=responses(200, MetadataSchema, 404),
    )
    def get(self, request, run_id: str):
        return Response({"metadata": metadata_of(task_run_get(environment=self.environment, run_id=run_id))})

    @extend_schema(
        operation_id="update_run_metadata",
        summary="Change a run's metadata",
        description=(
            "Replaces the metadata (`metadata`) and/or applies `operations` (set, delete, append, remove, "
            "increment, update) atomically, wherever the run is; `parentOperations` and `rootOperations` apply "
            "to its parent and root runs once the run's own change has landed (a related run that cannot be "
            "changed right now (held mid-drain, a store unreachable) or whose operations would make metadata it "
            "cannot hold (past the size limit, or not JSON) has its operations skipped and logged, so that a retry never "
            "applies the run's own operations twice). Answers the run's new metadata; a 413 is the run's own."
        ),
        request=serializers.UpdateMetadataSerializer,
        responses=responses(200, MetadataSchema, 404, 413, 415),
    )
    def put(self, request, run_id: str):
        run = task_run_get(environment=self.environment, run_id=run_id)
        body = self.body(serializers.UpdateMetadataSerializer)
        metadata = task_run_update_metadata_and_related(
            run=run,
            metadata=body.get("metadata"),
            operations=body.get("operations", []),
            parent_operations=body.get("parentOperations") or [],
            root_operations=body.get("rootOperations") or [],
        )
        return Response({"metadata": metadata})


class RunRescheduleApi(EnvironmentApi):
    @extend_schema(
        operation_id="reschedule_run",
        summary="Reschedule a delayed run",
        description=(
            "`runs.reschedule`: moves a DELAYED run's start to `delay` (a duration from now such as `30s`, or an "
            "ISO 8601 date) and answers the run; `400` unless the run still reads DELAYED. `0s` makes it QUEUED."
        ),
        request=serializers.RescheduleSerializer,
        responses=responses(200, RunSchema, 404, 413, 415),
    )
    def post(self, request, run_id: str):
        run = task_run_get(environment=self.environment, run_id=run_id)
        task_run_reschedule(run=run, delay=self.body(serializers.RescheduleSerializer)["delay"])
        run = task_run_get(environment=self.environment, run_id=run_id)
        return Response(presenters.run_detail(run, payload_url=presigned.payload_url(request, run)))


class RunReplayApi(EnvironmentApi):
    @extend_schema(
        operation_id="replay_run",
        summary="Replay a run",
        description=(
            "`runs.replay`: triggers a new run of the same task with the run's payload and options, changed by "
            "any overrides in the body; it passes the gate like any trigger. Answers the new run's id."
        ),
        request=OpenApiTypes.OBJECT,
        responses=responses(200, IdSchema, 404, 413, 415, 429),
    )
    def post(self, request, run_id: str):
        run = task_run_get(environment=self.environment, run_id=run_id)
        overrides = self.json_object(required=False)
        serializer = serializers.TriggerBodySerializer(data=task_run_replay_body(run=run, overrides=overrides))
        serializer.is_valid(raise_exception=True)
        outcome = task_run_trigger(
            environment=self.environment,
            task_identifier=run.task_identifier,
            options=serializers.trigger_options_from(serializer.validated_data, now=timezone.now()),
            request_key=self.request_key(),
        )
        return Response({"id": outcome.run.friendly_id})


class RunListApi(EnvironmentApi):
    pagination_class = RunCursorPagination

    @extend_schema(
        operation_id="list_runs",
        summary="List runs",
        description=(
            "`runs.list`: the environment's runs, newest first, from both stores (buffered runs merged in, each "
            "run once), filtered by `filter[…]` and paged by cursor (`page[after]`, `page[before]`)."
        ),
        parameters=LIST_PARAMETERS,
        responses=responses(200, RunListSchema),
    )
    def get(self, request):
        return self.render_page(run_list_filters(request.query_params))

    def render_page(self, filters: dict):
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(task_run_list(environment=self.environment, filters=filters), self.request)
        return paginator.get_paginated_response([presenters.run_list_item(run) for run in page])


class ProjectRunListApi(RunListApi):
    """``runs.list("proj_…", …)``: a secret key sees its own environment of its own project only."""

    @extend_schema(
        operation_id="list_project_runs",
        summary="List a project's runs",
        description=(
            '`runs.list("proj_…")`: as List runs, for the key\'s own project only (`404` for another). A secret '
            "key sees its own environment; `filter[env]` naming another environment answers an empty page."
        ),
        parameters=LIST_PARAMETERS,
        responses=responses(200, RunListSchema, 404),
    )
    def get(self, request, project_ref: str):  # type: ignore[override]  # the project route's extra argument
        if not environment_in_project(environment=self.environment, project_ref=project_ref):
            return error_response("Project not found", status.HTTP_404_NOT_FOUND)
        filters = run_list_filters(request.query_params)
        if not environment_matches(environment=self.environment, names=environment_names(request.query_params)):
            filters["nothing"] = True  # filter[env] names another environment
        return self.render_page(filters)


class IdempotencyKeyResetApi(EnvironmentApi):
    @extend_schema(
        operation_id="reset_idempotency_key",
        summary="Reset an idempotency key",
        description=(
            "`idempotencyKeys.reset`: releases `key` of task `taskIdentifier` from the run that holds it, in "
            "Postgres or in the buffer, so the next trigger with it makes a new run; `404` when no run holds it."
        ),
        request=serializers.ResetIdempotencyKeySerializer,
        responses=responses(200, IdSchema, 404, 413, 415),
    )
    def post(self, request, key: str):
        body = self.body(serializers.ResetIdempotencyKeySerializer)
        if not key or len(key) > serializers.MAX_KEY_LENGTH:
            raise ValidationError({"key": f"Must be 1 to {serializers.MAX_KEY_LENGTH} characters."})
        idempotency_key_reset(environment=self.environment, task_identifier=body["taskIdentifier"], key=key)
        return Response({"id": key})


class BatchCreateApi(EnvironmentApi):
    @extend_schema(
        operation_id="create_batch",
        summary="Create a batch",
        description=(
            "`batch.trigger`, phase 1: opens a batch of `runCount` items, answered `202` with its id; the items "
            "follow with Stream batch items. An idempotency key answers the existing batch with `isCached: true`."
        ),
        request=serializers.BatchCreateSerializer,
        responses=responses(202, BatchCreatedSchema, 413, 415),
    )
    def post(self, request):
        body = {k: v for k, v in self.body(serializers.BatchCreateSerializer).items() if v is not None}
        batch, is_cached = batch_create(
            environment=self.environment,
            run_count=body["runCount"],
            task_identifiers=body.get("taskIdentifiers", []),
            idempotency_key=body.get("idempotencyKey"),
            idempotency_key_options=dict(body["idempotencyKeyOptions"]) if "idempotencyKeyOptions" in body else None,
            parent_run_id=body.get("parentRunId"),
            resume_parent_on_completion=bool(body.get("resumeParentOnCompletion")),
            request_key=self.request_key(),
        )
        data = {"id": batch.friendly_id, "runCount": batch.run_count, "isCached": is_cached}
        if batch.idempotency_key:
            data["idempotencyKey"] = batch.idempotency_key
        token = public_token(
            secret_key=request.auth, environment=self.environment, scopes=[f"read:batch:{batch.friendly_id}"]
        )
        return Response(data, status=status.HTTP_202_ACCEPTED, headers={"x-trigger-jwt": token})


class BatchItemsApi(EnvironmentApi):
    @extend_schema(
        operation_id="stream_batch_items",
        summary="Stream batch items",
        description=(
            "`batch.trigger`, phase 2: one BatchItem JSON object per line (index, task, payload, options), may be "
            "sent chunked. Each item is triggered like a single run (through the gate); a retried item is "
            "deduplicated by its index. The batch is sealed once every item has arrived."
        ),
        request={"application/x-ndjson": OpenApiTypes.STR},
        responses=responses(200, BatchItemsSchema, 404, 413, 415),
    )
    def post(self, request, batch_id: str):
        batch_get(environment=self.environment, batch_id=batch_id)  # 404 before reading a large body
        now = timezone.now()
        items = []
        for line, raw in enumerate(read_ndjson(request), start=1):
            serializer = serializers.BatchItemSerializer(data=raw)
            if not serializer.is_valid():
                raise ValidationError({f"line {line}": serializer.errors})
            validated = serializer.validated_data
            items.append(
                BatchItem(
                    index=validated["index"],
                    task_identifier=validated["task"],
                    options=serializers.trigger_options_from(validated, now=now),
                )
            )
        outcome = batch_add_items(environment=self.environment, batch_id=batch_id, items=items, now=now)
        return Response(
            {
                "id": outcome.batch.friendly_id,
                "itemsAccepted": outcome.accepted,
                "itemsDeduplicated": outcome.deduplicated,
                "sealed": outcome.sealed,
                "enqueuedCount": outcome.stored,
                "expectedCount": outcome.batch.run_count,
            }
        )


class BatchRetrieveApi(EnvironmentApi):
    @extend_schema(
        operation_id="retrieve_batch",
        summary="Retrieve a batch",
        description="`batch.retrieve`: the batch's status, its run count and the ids of its runs so far.",
        responses=responses(200, BatchSchema, 404),
    )
    def get(self, request, batch_id: str):
        batch, run_ids = batch_retrieve(environment=self.environment, batch_id=batch_id)
        return Response(presenters.batch_detail(batch, run_ids))
