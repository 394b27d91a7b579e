"""Input serializers: the wire shapes of API.md, validated into plain Python values.

Option fields the server does not use (``payloadSize``, ``context``, …) are accepted and ignored,
as the SDK sends many. Optional fields may be absent or ``null``; both mean "not given".
"""

import copy
import json
from datetime import UTC, datetime

from django.conf import settings
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers
from rest_framework.fields import empty

from runs import durations, json_values
from runs.exceptions import TooLarge, Unprocessable
from runs.models import TaskRun
from runs.options import TriggerOptions

MACHINES = ["micro", "small-1x", "small-2x", "medium-1x", "medium-2x", "large-1x", "large-2x"]
JSON_PAYLOAD_TYPES = frozenset({"application/json", "application/super+json"})


column = TaskRun.column_length  # a validator and its column cannot disagree


MAX_KEY_LENGTH = column("idempotency_key")
# The unique index on (environment, task, key) holds at most ~2,700 bytes per entry: a key is
# bounded in bytes too, so that a long key of wide characters is a 400, not a database error.
MAX_KEY_BYTES = 2048
MAX_TASK_LENGTH = column("task_identifier")


class LeanFields:
    """DRF deep-copies and binds every declared field for each serializer instance, then runs every
    field on every validation, the absent optional ones too (which then skip). The trigger options
    are 23 fields of which the SDK sends three or four, and building and running all of them was the
    largest cost of a trigger (issue 15). Here validation copies, binds and runs only the fields
    present in the data, the required ones and those with a default: an absent optional field
    without one contributes nothing either way, so the result and the errors are DRF's. ``fields``
    (the schema, anything else that asks) is the full set, built when first asked for."""

    _declared_fields: dict

    def get_fields(self):
        return {name: _copy_field(field) for name, field in self._declared_fields.items()}

    def to_internal_value(self, data):
        self._incoming = data  # read by _writable_fields, which DRF calls without the data
        try:
            return super().to_internal_value(data)  # type: ignore[misc]
        finally:
            self._incoming = None

    @property
    def _writable_fields(self):
        data = self._incoming
        bound: dict = self.__dict__.setdefault("_bound_fields", {})
        for name, declared in self._declared_fields.items():
            if declared.read_only or not (name in data or declared.required or declared.default is not empty):
                continue
            if (field := bound.get(name)) is None:
                field = bound[name] = _copy_field(declared)
                field.bind(field_name=name, parent=self)
            yield field

    def _read_only_defaults(self):
        # DRF builds every field after validating to look for read-only ones with a default.
        if any(field.read_only and field.default is not empty for field in self._declared_fields.values()):
            return super()._read_only_defaults()  # type: ignore[misc]
        return {}


def _copy_field(field):
    # A simple field's only per-instance state is its binding, which bind() sets on the copy; a
    # field holding a bound child (lists, dicts) is deep-copied.
    return copy.deepcopy(field) if hasattr(field, "child") else copy.copy(field)


class StringField(serializers.CharField):
    """A string, as the SDK's schema has it: DRF's CharField would take a number or a boolean and
    keep its text (``idempotencyKey: 12345`` would become the key "12345"), where upstream answers 400."""

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


@extend_schema_field({"oneOf": [{"type": "string"}, {"type": "number"}]})
class ScalarStringField(serializers.Field):
    """A string, or a number sent where a string is meant (the SDK keeps `concurrencyKey: 42` a number)."""

    def __init__(self, *, max_length: int, **kwargs):
        self.max_length = max_length
        super().__init__(**kwargs)

    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, (str, int, float)):
            raise serializers.ValidationError("Must be a string or a number.")
        value = str(data)
        if "\x00" in value:
            raise serializers.ValidationError("Null characters are not allowed.")
        if not value or len(value) > self.max_length:
            raise serializers.ValidationError(f"Must be 1 to {self.max_length} characters.")
        return value

    def to_representation(self, value):
        return value


@extend_schema_field({"oneOf": [{"type": "string"}, {"type": "number", "description": "epoch milliseconds"}]})
class DelayField(StringField):
    """``delay``: a duration or an ISO 8601 date, or a number, read as upstream's ``z.coerce.date()``
    reads it: epoch milliseconds. A number becomes that instant's ISO string, so that everything
    after the serializer reads one form."""

    def __init__(self, **kwargs):
        super().__init__(max_length=64, **kwargs)

    def to_internal_value(self, data):
        if isinstance(data, (int, float)) and not isinstance(data, bool):
            try:
                return datetime.fromtimestamp(data / 1000, UTC).isoformat()
            except (OverflowError, ValueError, OSError):  # past the years a datetime can hold
                raise serializers.ValidationError(durations.DELAY_HELP) from None
        return super().to_internal_value(data)


@extend_schema_field({"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]})
class TagsField(serializers.Field):
    """One tag or a list of them, each 1-128 characters, as sent: how many a run may have is the
    caller's to decide (a trigger counts them as sent, adding tags counts the run's tags after)."""

    def to_internal_value(self, data):
        items = [data] if isinstance(data, str) else data
        if not isinstance(items, list) or not all(isinstance(t, str) for t in items):
            raise serializers.ValidationError("Must be a string or a list of strings.")
        if any(not tag or len(tag) > column("tags") for tag in items):
            raise serializers.ValidationError(f"Each tag must be 1 to {column('tags')} characters.")
        return items

    def to_representation(self, value):
        return value


@extend_schema_field({"oneOf": [{"type": "string"}, {"type": "integer", "minimum": 0}]})
class TtlField(serializers.Field):
    """Run TTL: a duration string (``10m``, ``1h30m``) or non-negative whole seconds."""

    def to_internal_value(self, data):
        if isinstance(data, int) and not isinstance(data, bool):
            if data < 0 or data > durations.MAX_DURATION.total_seconds():
                raise serializers.ValidationError("Must be between 0 and 3650 days in seconds.")
            return f"{data}s"
        if isinstance(data, str) and durations.parse_natural_duration(data) is not None:
            value = data.strip()
            if len(value) > column("ttl"):
                raise serializers.ValidationError(f"Must be at most {column('ttl')} characters.")
            return value
        raise serializers.ValidationError('Must be a duration like "10m" or "1h30m", or whole seconds.')

    def to_representation(self, value):
        return value


def storable_json(value):
    """A value both stores can hold and give back (runs/json_values.py). The request parser checks
    whole bodies; this also covers bodies built by the server (a replay)."""
    try:
        return json_values.check(value)
    except json_values.UnsafeJSON as error:
        raise serializers.ValidationError(str(error)) from None


def key_in_bytes(value):
    if value is not None and len(value.encode("utf-8")) > MAX_KEY_BYTES:
        raise serializers.ValidationError(f"Must be at most {MAX_KEY_BYTES} bytes in UTF-8.")
    return value


class QueueSerializer(LeanFields, serializers.Serializer):
    name = StringField(max_length=column("queue"))


class IdempotencyKeyOptionsSerializer(LeanFields, serializers.Serializer):
    key = StringField(max_length=MAX_KEY_LENGTH)
    scope = serializers.ChoiceField(choices=["run", "attempt", "global"], required=False)


class TriggerOptionsSerializer(LeanFields, serializers.Serializer):
    payloadType = StringField(max_length=column("payload_type"), required=False, allow_null=True)
    idempotencyKey = StringField(max_length=MAX_KEY_LENGTH, required=False, allow_null=True, validators=[key_in_bytes])
    idempotencyKeyTTL = StringField(max_length=32, required=False, allow_null=True)
    idempotencyKeyOptions = IdempotencyKeyOptionsSerializer(required=False, allow_null=True)
    delay = DelayField(required=False, allow_null=True)
    ttl = TtlField(required=False, allow_null=True)
    tags = TagsField(required=False, allow_null=True)
    queue = QueueSerializer(required=False, allow_null=True)
    concurrencyKey = ScalarStringField(max_length=column("concurrency_key"), required=False, allow_null=True)
    maxAttempts = serializers.IntegerField(min_value=1, max_value=100, required=False, allow_null=True)
    maxDuration = serializers.IntegerField(min_value=0, max_value=30 * 86400, required=False, allow_null=True)
    metadata = serializers.JSONField(required=False, allow_null=True, validators=[storable_json])
    metadataType = StringField(max_length=column("metadata_type"), required=False, allow_null=True)
    machine = serializers.ChoiceField(choices=MACHINES, required=False, allow_null=True)
    priority = serializers.IntegerField(min_value=0, max_value=30 * 86400, required=False, allow_null=True)
    region = StringField(max_length=column("region"), required=False, allow_null=True)
    lockToVersion = StringField(max_length=column("task_version"), required=False, allow_null=True)
    test = serializers.BooleanField(required=False, allow_null=True)
    parentRunId = StringField(max_length=64, required=False, allow_null=True)
    resumeParentOnCompletion = serializers.BooleanField(required=False, allow_null=True)
    debounce = serializers.DictField(required=False, allow_null=True)
    oneTimeUseToken = StringField(max_length=4096, required=False, allow_null=True)

    def validate_idempotencyKeyTTL(self, value):
        if value is not None and durations.parse_idempotency_ttl(value) is None:
            raise serializers.ValidationError('Must be a number and one unit of s, m, h or d, like "1h" or "30d".')
        return value

    def validate_delay(self, value):
        if value is not None and durations.parse_delay(value, now=datetime.now().astimezone()) is None:
            raise serializers.ValidationError(durations.DELAY_HELP)
        return value

    def validate_metadata(self, value):
        if value is None:
            return value
        if not isinstance(value, dict):
            raise serializers.ValidationError("Must be a JSON object.")
        limit = settings.TRIGGER["MAX_METADATA_BYTES"]
        if len(json_values.dumps(value).encode()) > limit:
            raise TooLarge(f"options.metadata: Metadata is larger than {limit} bytes.")  # as on PUT: 413
        return value

    def validate_debounce(self, value):
        if value is not None:
            # Debounce needs a scheduler that holds and replaces runs; this service stores runs and
            # executes none. Refused rather than ignored: an ignored debounce would quietly
            # trigger every call, and skip the gate besides.
            raise Unprocessable("options.debounce: Debounced triggers are not supported by this server.")
        return value

    def validate_oneTimeUseToken(self, value):
        if value is not None:
            # One-time tokens come from public trigger tokens, which this service does not issue.
            raise Unprocessable("options.oneTimeUseToken: One-time-use tokens are not supported by this server.")
        return value


class PayloadChecks:
    """A payload declared JSON text (``payloadType`` ``application/json`` or
    ``application/super+json``, as the SDK sends) must be JSON the stores can hold: it is parsed
    back on every read. A string without a declared type is kept as text when it is not JSON."""

    def validate(self, attrs):
        payload = attrs.get("payload")
        payload_type = (attrs.get("options") or {}).get("payloadType")
        if isinstance(payload, str) and payload_type in JSON_PAYLOAD_TYPES:
            try:
                json_values.loads(payload)
            except json_values.UnsafeJSON as error:
                raise serializers.ValidationError({"payload": f"Not valid JSON for {payload_type}: {error}"}) from None
        return attrs


class TriggerBodySerializer(PayloadChecks, LeanFields, serializers.Serializer):
    payload = serializers.JSONField(required=False, allow_null=True, validators=[storable_json])
    options = TriggerOptionsSerializer(required=False, allow_null=True)


class BatchItemSerializer(PayloadChecks, LeanFields, serializers.Serializer):
    index = serializers.IntegerField(min_value=0, max_value=1_000_000)
    task = StringField(max_length=MAX_TASK_LENGTH)
    payload = serializers.JSONField(required=False, allow_null=True, validators=[storable_json])
    options = TriggerOptionsSerializer(required=False, allow_null=True)


class BatchCreateSerializer(serializers.Serializer):
    runCount = serializers.IntegerField(min_value=1)
    taskIdentifiers = serializers.ListField(
        child=StringField(max_length=MAX_TASK_LENGTH), required=False, allow_null=True, max_length=1000
    )
    parentRunId = StringField(max_length=64, required=False, allow_null=True)
    resumeParentOnCompletion = serializers.BooleanField(required=False, allow_null=True)
    idempotencyKey = StringField(max_length=MAX_KEY_LENGTH, required=False, allow_null=True, validators=[key_in_bytes])
    idempotencyKeyOptions = IdempotencyKeyOptionsSerializer(required=False, allow_null=True)

    def validate_runCount(self, value):
        limit = settings.TRIGGER["MAX_BATCH_ITEMS"]
        if value > limit:
            raise serializers.ValidationError(f"At most {limit} items per batch.")
        return value


class AddTagsSerializer(serializers.Serializer):
    tags = TagsField()


class RescheduleSerializer(serializers.Serializer):
    delay = DelayField()


class MetadataOperationSerializer(serializers.Serializer):
    """One of the SDK's metadata operations: ``update`` takes an object, every other one a key, and
    ``increment`` a number (an operation that cannot apply is a 400, not silently skipped)."""

    type = serializers.ChoiceField(choices=["update", "set", "delete", "append", "remove", "increment"])
    key = StringField(max_length=1024, required=False)
    value = serializers.JSONField(required=False)

    def validate(self, attrs):
        kind, value = attrs["type"], attrs.get("value")
        if kind == "update":
            if not isinstance(value, dict):
                raise serializers.ValidationError({"value": "An update takes an object."})
        elif not attrs.get("key"):
            raise serializers.ValidationError({"key": f"A {kind} operation takes a key."})
        if kind == "increment" and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise serializers.ValidationError({"value": "An increment takes a number."})
        return attrs


class UpdateMetadataSerializer(serializers.Serializer):
    metadata = serializers.DictField(required=False, allow_null=True)
    operations = MetadataOperationSerializer(many=True, required=False)
    parentOperations = MetadataOperationSerializer(many=True, required=False)
    rootOperations = MetadataOperationSerializer(many=True, required=False)


class ResetIdempotencyKeySerializer(serializers.Serializer):
    taskIdentifier = StringField(max_length=MAX_TASK_LENGTH)


def trigger_options_from(validated: dict, *, now: datetime) -> TriggerOptions:
    """Turn a validated trigger (or batch item) body into TriggerOptions."""
    opts = {k: v for k, v in (validated.get("options") or {}).items() if v is not None}
    payload = validated.get("payload")
    payload_type = opts.get("payloadType") or "application/json"
    if payload is not None and not isinstance(payload, str):
        # A client that is not the SDK sent a JSON value rather than a serialised string.
        payload = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
        payload_type = "application/json"
    ttl = opts.get("idempotencyKeyTTL")
    metadata = opts.get("metadata")
    tags = opts.get("tags") or []
    limit = settings.TRIGGER["MAX_TAGS_PER_RUN"]
    if len(tags) > limit:  # counted as sent, duplicates too, as upstream counts them (and answers 422)
        raise Unprocessable(f"Runs can only have {limit} tags, you're trying to set {len(tags)}.")
    return TriggerOptions(
        payload=payload,
        payload_type=payload_type,
        idempotency_key=opts.get("idempotencyKey") or None,
        idempotency_key_ttl=durations.parse_idempotency_ttl(ttl) if ttl else None,
        idempotency_key_options=dict(opts["idempotencyKeyOptions"]) if "idempotencyKeyOptions" in opts else None,
        delay_until=durations.parse_delay(opts["delay"], now=now) if "delay" in opts else None,
        ttl=opts.get("ttl"),
        tags=list(dict.fromkeys(tags)),
        queue=opts["queue"]["name"] if "queue" in opts else None,
        concurrency_key=opts.get("concurrencyKey"),
        max_attempts=opts.get("maxAttempts"),
        max_duration=opts.get("maxDuration"),
        metadata=json.dumps(metadata, separators=(",", ":"), ensure_ascii=False) if metadata is not None else None,
        metadata_type=opts.get("metadataType") or "application/json",
        machine=opts.get("machine"),
        priority=opts.get("priority") or 0,
        region=opts.get("region"),
        lock_to_version=opts.get("lockToVersion"),
        is_test=bool(opts.get("test")),
        parent_run_id=opts.get("parentRunId"),
        resume_parent_on_completion=bool(opts.get("resumeParentOnCompletion")),
    )
