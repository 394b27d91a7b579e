"""Keyset pages of ``runs.list``: ``page[size]``, ``page[after]``, ``page[before]`` in, opaque
``pagination.next/previous`` cursors out (API.md §7). A cursor is a position in the order (trigger
time, run id), base64 of JSON; a token this server did not make is a 400."""

import base64
import binascii
import json
from datetime import datetime

from django.http import QueryDict
from rest_framework.pagination import BasePagination
from rest_framework.response import Response

from runs import json_values
from runs.exceptions import InvalidRequest
from runs.read_fallback import MergedRuns, Page, Position

DEFAULT_PAGE_SIZE = 25
MAX_PAGE_SIZE = 100


class QueryError(InvalidRequest):
    """The official shape of a bad list query: ``{"error": "Query Error", "details": [...]}``."""

    def __init__(self, detail: str):
        super().__init__("Query Error")
        self.extra = {"details": [detail]}


def encode(position: Position) -> str:
    raw = json.dumps([position.created_at.isoformat(), position.internal_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode(token: str) -> Position:
    """The position of a cursor this server made; InvalidRequest for anything else (bounded: a
    forged token is refused before it is parsed)."""
    try:
        if len(token) > 200:
            raise ValueError("too long")
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        created_at, internal_id = json_values.loads(raw)
        if not isinstance(created_at, str) or not isinstance(internal_id, str) or len(internal_id) > 64:
            raise ValueError("not a cursor")
        moment = datetime.fromisoformat(created_at)
        if moment.tzinfo is None:
            raise ValueError("naive time")
        return Position(moment, internal_id)
    except (ValueError, TypeError, UnicodeDecodeError, binascii.Error):
        raise InvalidRequest("Invalid page cursor") from None


class RunCursorPagination(BasePagination):
    """Pages a MergedRuns by position; the page is read by ``paginate_queryset``."""

    def paginate_queryset(self, queryset: MergedRuns, request, view=None) -> list:  # type: ignore[override]
        size, after, before = self.parse(request.query_params)
        self.page: Page = queryset.page(size=size, after=after, before=before)
        return self.page.runs

    @staticmethod
    def parse(query: QueryDict) -> tuple[int, Position | None, Position | None]:
        raw_size = str(query.get("page[size]") or query.get("limit") or DEFAULT_PAGE_SIZE)
        try:
            size = int(raw_size) if len(raw_size) < 10 else 0
        except ValueError:
            size = 0
        if not 1 <= size <= MAX_PAGE_SIZE:
            raise QueryError(f"page[size] must be a whole number from 1 to {MAX_PAGE_SIZE}")
        # Both at once is what the SDK sends for a previous page after a next one (it keeps every
        # earlier parameter): page[before] wins, as upstream. A next page after that previous one
        # arrives as the very same query, so it repeats the page: no server can tell the two apart.
        before = decode(str(query["page[before]"])) if query.get("page[before]") else None
        after = decode(str(query["page[after]"])) if query.get("page[after]") and before is None else None
        return size, after, before

    def get_paginated_response(self, data) -> Response:
        pagination = {}
        if self.page.next:
            pagination["next"] = encode(self.page.next)
        if self.page.previous:
            pagination["previous"] = encode(self.page.previous)
        return Response({"data": data, "pagination": pagination})
