"""How the run API's exceptions become HTTP answers (DRF's EXCEPTION_HANDLER): always
``{"error": "<message>"}``. Views that answer an error themselves use ``error_response`` from here;
outside the API, ``/metrics`` and the JSON 404 of ``trigger_project/urls.py`` keep the same shape.

Domain errors map by class; DRF's own errors keep their status; Redis or a database that cannot be
reached is a 503 (the SDK retries it); anything else is logged and answered 500 without internals.
"""

import logging
import math

from django.db import DataError, InterfaceError, OperationalError
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler
from rest_framework.views import set_rollback

from mollifier.clock import now_ms
from mollifier.exceptions import BufferUnavailable, SinkUnavailable
from runs import exceptions as domain
from trigger_project.postgres.breaker import PostgresBreakerOpen

logger = logging.getLogger(__name__)

DOMAIN_STATUS = {
    domain.RunNotFound: status.HTTP_404_NOT_FOUND,
    domain.BatchNotFound: status.HTTP_404_NOT_FOUND,
    domain.IdempotencyKeyNotFound: status.HTTP_404_NOT_FOUND,
    domain.InvalidRequest: status.HTTP_400_BAD_REQUEST,
    domain.ServiceUnavailable: status.HTTP_503_SERVICE_UNAVAILABLE,
    domain.Unprocessable: status.HTTP_422_UNPROCESSABLE_ENTITY,
    domain.TooLarge: status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
    domain.PacketNotFound: status.HTTP_404_NOT_FOUND,
    domain.PacketAccessDenied: status.HTTP_403_FORBIDDEN,
    domain.PacketInUse: status.HTTP_409_CONFLICT,
}


def _messages(detail, path: str = ""):
    if isinstance(detail, dict):
        for key, value in detail.items():
            name = "" if key == "non_field_errors" else str(key)
            yield from _messages(value, f"{path}.{name}" if path and name else path or name)
    elif isinstance(detail, list):
        for item in detail:
            yield from _messages(item, path)
    else:
        yield f"{path}: {detail}" if path else str(detail)


def error_response(message: str, status_code: int, headers: dict | None = None, **extra) -> Response:
    return Response({"error": message, **extra}, status=status_code, headers=headers)


def _buffer_full(exc: domain.BufferFull) -> Response:
    reset_ms = now_ms() + exc.retry_after_ms
    headers = {
        "x-ratelimit-reset": str(reset_ms),  # epoch milliseconds: what the SDK's 429 handling reads
        "Retry-After": str(math.ceil(exc.retry_after_ms / 1000)),
    }
    return error_response(exc.message, status.HTTP_429_TOO_MANY_REQUESTS, headers=headers)


def _where(context) -> str:
    request = context.get("request")
    return f"{request.method} {request.path}" if request is not None else "-"


def _first_line(exc: Exception) -> str:
    """A store that does not answer is named by its error's first line: during an outage every
    request meets it, and a traceback each time (a network wait, not a fault in our code) would
    bury the log."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def exception_handler(exc, context):
    if isinstance(exc, domain.BufferFull):
        set_rollback()
        return _buffer_full(exc)
    for error_class, status_code in DOMAIN_STATUS.items():
        if isinstance(exc, error_class):
            set_rollback()
            if status_code == status.HTTP_503_SERVICE_UNAVAILABLE:
                logger.warning("runs.api.unavailable %s error=%s", _where(context), exc.message)
            headers = getattr(exc, "headers", None)
            return error_response(exc.message, status_code, headers=headers, **getattr(exc, "extra", {}))
    if isinstance(exc, BufferUnavailable):
        set_rollback()
        logger.warning("runs.api.buffer_unavailable %s error=%s", _where(context), _first_line(exc))
        return error_response("Run buffer unavailable, retry later", status.HTTP_503_SERVICE_UNAVAILABLE)
    if isinstance(exc, DataError):
        # Input Postgres cannot store (a NUL character, a number out of range) that validation let
        # through: the client's input, answered as such; the transaction is rolled back.
        set_rollback()
        logger.info("runs.api.data_rejected", exc_info=exc)
        return error_response("Invalid characters or values in the request", status.HTTP_400_BAD_REQUEST)
    # SinkUnavailable: Postgres could not settle a pin that a change met (mid_drain.settle_pin).
    if isinstance(exc, (OperationalError, InterfaceError, SinkUnavailable)):
        set_rollback()
        if isinstance(exc.__cause__, PostgresBreakerOpen):  # one line: the breaker logged why it opened
            logger.info("runs.api.database_skipped error=%s", exc)
        else:
            logger.warning("runs.api.database_unavailable %s error=%s", _where(context), _first_line(exc))
        return error_response("Database unavailable, retry later", status.HTTP_503_SERVICE_UNAVAILABLE)
    response = drf_exception_handler(exc, context)
    if response is None:
        set_rollback()
        logger.error("runs.api.unhandled_error", exc_info=exc)
        return error_response("Something went wrong", status.HTTP_500_INTERNAL_SERVER_ERROR)
    if isinstance(exc, exceptions.ValidationError):
        message = "; ".join(_messages(exc.detail)) or "Invalid request body"
    else:
        message = str(exc.detail) if isinstance(exc.detail, str) else "; ".join(_messages(exc.detail))
    response.data = {"error": message}
    return response
