"""gunicorn's own answers in the API's error shape.

A request gunicorn refuses before Django sees it (a request line or a header over its limits, a
malformed header line: 400, 414, 431, 501) was answered with an HTML page, where every other
refusal is ``{"error": "…"}``. gunicorn writes those answers with ``gunicorn.util.write_error``,
which its workers look up when they answer; replacing it in the master, before it forks them
(gunicorn.conf.py), gives every worker this one.
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
