"""A 503 (a store that does not answer; the SDK retries it) is logged on one line of ours, with the
request and the error, not a traceback per request plus Django's own ERROR line: during an outage
every request meets it."""

import logging

import pytest

from runs.services.keyed_markers import keyed_marker_make_sure
from tests.helpers import trigger

pytestmark = pytest.mark.django_db


def unavailable_records(caplog):
    return [record for record in caplog.records if record.levelno >= logging.WARNING]


def test_a_keyed_trigger_that_cannot_be_checked_is_one_warning_line(api, enrolled, dead_redis, caplog):
    keyed_marker_make_sure(enrolled)  # keyed runs may wait in the buffer: the key cannot be checked
    with caplog.at_level(logging.INFO):
        response = trigger(api, idempotencyKey="k")

    assert response.status_code == 503
    (record,) = [r for r in unavailable_records(caplog) if r.name.startswith("runs.")]
    assert record.getMessage().startswith("runs.api.unavailable POST /api/v1/tasks/")
    assert "The run buffer is not answering" in record.getMessage() and record.exc_info is None
    assert not [r for r in caplog.records if r.name == "django.request"]
    # The claim's own line names the error, without a traceback either.
    (claim,) = [r for r in unavailable_records(caplog) if r.name == "mollifier.claims"]
    assert "mollifier.claim.redis_unavailable" in claim.getMessage() and "error=" in claim.getMessage()
    assert all(r.exc_info is None for r in unavailable_records(caplog))


def test_a_read_the_buffer_cannot_answer_is_one_warning_line(api, enrolled, dead_redis, caplog):
    with caplog.at_level(logging.INFO):
        response = api.get("/api/v3/runs/run_doesnotexist1234567890")

    assert response.status_code == 503
    (record,) = [r for r in unavailable_records(caplog) if r.name == "runs.api.errors"]
    assert record.getMessage().startswith("runs.api.buffer_unavailable GET /api/v3/runs/run_doesnotexist")
    assert "error=BufferUnavailable" in record.getMessage() and record.exc_info is None
    assert not [r for r in caplog.records if r.name == "django.request"]


def test_django_still_logs_server_errors():
    """Only 503s are left to our own line: a 500 keeps Django's ERROR record."""
    django_request = logging.getLogger("django.request")

    def kept(status_code: int) -> bool:
        record = django_request.makeRecord("django.request", logging.ERROR, __file__, 1, "x", (), None)
        record.status_code = status_code
        return bool(django_request.filter(record))

    assert kept(500) and kept(502) and not kept(503)
