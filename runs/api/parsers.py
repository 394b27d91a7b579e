"""Request bodies, bounded: JSON for most endpoints, NDJSON (possibly chunked) for batch items."""

from django.conf import settings
from gunicorn.http.errors import ParseException as GunicornParseError
from rest_framework import exceptions
from rest_framework.parsers import JSONParser

from runs import json_values

# A broken chunked body surfaces when it is read: gunicorn (the server here) raises its own parse
# errors (InvalidChunkSize, ChunkMissingTerminator, …); other servers raise OSErrors.
BROKEN_BODY = (OSError, GunicornParseError)


class PayloadTooLarge(exceptions.APIException):
    status_code = 413
    default_detail = "Request body too large"
    default_code = "payload_too_large"


def loads_strict(raw: bytes):
    """JSON both stores can hold: no NaN or Infinity, valid UTF-8 without lone surrogates or NUL,
    bounded nesting (runs/json_values.py); ParseError (400) otherwise."""
    try:
        return json_values.loads(raw)
    except json_values.UnsafeJSON as error:
        raise exceptions.ParseError(f"Invalid JSON: {error}") from None


def read_bounded(stream, limit: int) -> bytes:
    try:
        raw = stream.read(limit + 1) if stream is not None else b""
    except BROKEN_BODY as error:
        raise exceptions.ParseError(f"Malformed request body ({type(error).__name__})") from None
    if len(raw) > limit:
        raise PayloadTooLarge(f"Request body is larger than {limit} bytes")
    return raw


def is_chunked(request) -> bool:
    meta = request.META
    return meta.get("HTTP_TRANSFER_ENCODING", "").lower() == "chunked" and not meta.get("CONTENT_LENGTH")


def read_body(request, limit: int) -> bytes:
    """The raw body, also when it was sent chunked: under gunicorn a chunked body is only in
    ``wsgi.input`` (Django's ``request.body`` and DRF's stream see nothing without Content-Length)."""
    if is_chunked(request):
        return read_bounded(request.META["wsgi.input"], limit)
    return read_bounded(request, limit)


class BoundedJSONParser(JSONParser):
    def parse(self, stream, media_type=None, parser_context=None):
        raw = read_bounded(stream, int(settings.TRIGGER["MAX_BODY_BYTES"]))
        if not raw.strip():
            raise exceptions.ParseError("Request body is empty")
        return loads_strict(raw)


def parse_chunked_json(request):
    """A JSON body sent chunked (DRF skips parsing without Content-Length)."""
    media_type = request.META.get("CONTENT_TYPE", "").split(";")[0].strip().lower()
    if media_type != "application/json":
        raise exceptions.UnsupportedMediaType(media_type or "none")
    raw = read_body(request, int(settings.TRIGGER["MAX_BODY_BYTES"]))
    if not raw.strip():
        raise exceptions.ParseError("Request body is empty")
    return loads_strict(raw)


def read_ndjson(request) -> list:
    """The JSON values of an NDJSON body, one per non-empty line.

    Not a DRF parser: DRF skips parsing when there is no Content-Length, and the SDK streams this
    body chunked.
    """
    media_type = request.META.get("CONTENT_TYPE", "").split(";")[0].strip().lower()
    if media_type != "application/x-ndjson":
        raise exceptions.UnsupportedMediaType(media_type or "none")
    raw = read_body(request, int(settings.TRIGGER["MAX_BATCH_BODY_BYTES"]))
    items = []
    for number, line in enumerate(raw.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            items.append(json_values.loads(line))
        except json_values.UnsafeJSON as error:
            raise exceptions.ParseError(f"Invalid JSON on line {number}: {error}") from None
    return items
