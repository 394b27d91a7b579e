"""Request bodies, bounded: JSON for most endpoints, NDJSON (possibly chunked) for batch items."""

import json

from django.conf import settings
from rest_framework import exceptions
from rest_framework.parsers import JSONParser


class PayloadTooLarge(exceptions.APIException):
    status_code = 413
    default_detail = "Request body too large"
    default_code = "payload_too_large"


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def loads_strict(raw: bytes):
    """json.loads that refuses NaN/Infinity, bad UTF-8 and nesting deep enough to exhaust the stack."""
    try:
        return json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except (ValueError, RecursionError, UnicodeDecodeError):
        raise exceptions.ParseError("Invalid JSON") from None


def read_bounded(stream, limit: int) -> bytes:
    raw = stream.read(limit + 1) if stream is not None else b""
    if len(raw) > limit:
        raise PayloadTooLarge(f"Request body is larger than {limit} bytes")
    return raw


class BoundedJSONParser(JSONParser):
    def parse(self, stream, media_type=None, parser_context=None):
        raw = read_bounded(stream, settings.TRIGGER["MAX_BODY_BYTES"])
        if not raw.strip():
            raise exceptions.ParseError("Request body is empty")
        return loads_strict(raw)


def read_ndjson(request) -> list:
    """The JSON values of an NDJSON body, one per non-empty line.

    Not a DRF parser: DRF skips parsing when there is no Content-Length, and the SDK streams this
    body chunked. Under gunicorn the de-chunked body is in ``wsgi.input`` (Django's ``request.body``
    is empty there); under the test client and ASGI it is the ordinary body.
    """
    meta = request.META
    media_type = meta.get("CONTENT_TYPE", "").split(";")[0].strip().lower()
    if media_type != "application/x-ndjson":
        raise exceptions.UnsupportedMediaType(media_type or "none")
    limit = settings.TRIGGER["MAX_BATCH_BODY_BYTES"]
    if meta.get("HTTP_TRANSFER_ENCODING", "").lower() == "chunked" and not meta.get("CONTENT_LENGTH"):
        raw = read_bounded(meta["wsgi.input"], limit)
    else:
        raw = read_bounded(request, limit)
    items = []
    for number, line in enumerate(raw.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            items.append(loads_strict(line))
        except exceptions.ParseError:
            raise exceptions.ParseError(f"Invalid JSON on line {number}") from None
    return items
