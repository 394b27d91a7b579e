"""gunicorn's own answers in the API's error shape.

A request gunicorn refuses before Django sees it (a request line or a header over its limits, a
malformed header line, an unsupported transfer coding: 400, 414, 431, 501 and the like) was
answered with an HTML page, where every other refusal is ``{"error": "…"}``. gunicorn writes those
answers with ``gunicorn.util.write_error``, which a worker looks up each time it answers one: the
application replaces it when a worker loads it (trigger_project/wsgi.py), however gunicorn was
started.
"""

import json

from gunicorn import util


def write_error(sock, status_int: int, reason: str, mesg: str) -> None:
    body = json.dumps({"error": f"{reason}: {mesg}" if mesg else reason}).encode()
    head = (
        f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    util.write_nonblock(sock, head.encode("latin-1") + body)


def install() -> None:
    util.write_error = write_error
