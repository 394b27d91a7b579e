"""Pages (the admin) when Postgres does not answer: a 503 that says so, instead of Django's bare
"Server Error (500)". The API answers its own 503 JSON (runs/api/errors.py)."""

import logging

from django.db import InterfaceError, OperationalError
from django.http import HttpResponse

logger = logging.getLogger(__name__)

PAGE = (
    "<!doctype html><html lang=en><title>Postgres did not answer</title>"
    "<h1>Postgres did not answer</h1>"
    "<p>The database is down, locked or too slow right now (a statement timeout, or no answer within "
    "<code>DB_ANSWER_TIMEOUT_MS</code>). Try again shortly; "
    "docs/OPERATIONS.md says what to look at.</p></html>"
)


class DatabaseUnavailablePage:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)

    def process_exception(self, request, exception):
        if request.path.startswith("/api/") or not isinstance(exception, (OperationalError, InterfaceError)):
            return None
        logger.warning("trigger_project.database_unavailable path=%s error=%s", request.path, str(exception)[:300])
        return HttpResponse(PAGE, status=503, content_type="text/html; charset=utf-8", headers={"Retry-After": "5"})
