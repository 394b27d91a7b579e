"""Bodies only a real server sees: chunked JSON, and chunked bodies that are malformed, sent over a
raw socket to the real gunicorn process."""

import json
import socket
from urllib.parse import urlsplit

import pytest

from runs.models import TaskRun
from tests.factories import EnvironmentFactory
from tests.server import running_server

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def raw_post(
    base_url: str, path: str, key: str, chunks: bytes, content_type: str = "application/json"
) -> tuple[int, dict]:
    parts = urlsplit(base_url)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: {content_type}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    ).encode()
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(head + chunks)
        response = b""
        while chunk := sock.recv(65536):
            response += chunk
    status = int(response.split(b" ", 2)[1])
    body = response.split(b"\r\n\r\n", 1)[1]
    return status, json.loads(body) if body.strip().startswith(b"{") else {"raw": body.decode(errors="replace")}


def chunked(payload: bytes, size: int = 7) -> bytes:
    pieces = [payload[i : i + size] for i in range(0, len(payload), size)]
    return b"".join(f"{len(piece):x}\r\n".encode() + piece + b"\r\n" for piece in pieces) + b"0\r\n\r\n"


def test_a_chunked_json_trigger_is_read_not_called_empty():
    environment = EnvironmentFactory()
    body = json.dumps({"payload": '{"json":{"a":1}}', "options": {"payloadType": "application/super+json"}}).encode()
    with running_server() as base_url:
        status, answer = raw_post(base_url, "/api/v1/tasks/hello-world/trigger", environment.secret_key, chunked(body))

    assert status == 200, answer
    assert TaskRun.objects.get().friendly_id == answer["id"]


@pytest.mark.parametrize(
    "broken",
    [
        b"zz\r\n{}\r\n0\r\n\r\n",  # a chunk size that is not hexadecimal
        b"5\r\n{}\r\n0\r\n\r\n",  # a chunk shorter than announced
        b"2\r\n{}XX0\r\n\r\n",  # no CRLF after the chunk
    ],
)
def test_a_malformed_chunked_body_is_a_400_in_the_api_error_shape(broken):
    environment = EnvironmentFactory()
    with running_server() as base_url:
        status, answer = raw_post(base_url, "/api/v1/tasks/hello-world/trigger", environment.secret_key, broken)
        batch = raw_post(
            base_url, "/api/v3/batches/batch_x/items", environment.secret_key, broken, "application/x-ndjson"
        )

    assert status == 400 and "Malformed request body" in answer["error"], answer
    assert batch[0] in (400, 404) and "error" in batch[1]
    assert not TaskRun.objects.exists()


def raw_request(base_url: str, head: str) -> tuple[int, bytes, bytes]:
    parts = urlsplit(base_url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(head.encode())
        response = b""
        while chunk := sock.recv(65536):
            response += chunk
    headers, body = response.split(b"\r\n\r\n", 1)
    return int(headers.split(b" ", 2)[1]), headers, body


@pytest.mark.parametrize(
    "head, status",
    [
        ("GET /api/v3/runs/run_{long} HTTP/1.1\r\nHost: x\r\n\r\n", 414),  # past gunicorn's request line
        ("GET /api/v3/runs/run_x HTTP/1.1\r\nHost: x\r\nx-trigger-request-idempotency-key: {long}\r\n\r\n", 431),
        ("GET /api/v3/runs/run_x HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer a\x01b\r\n\r\n", 400),
    ],
)
def test_what_gunicorn_refuses_itself_is_answered_in_the_api_error_shape(head, status):
    """Refused before Django sees them (a request line or a header over gunicorn's limits, a control
    character in a header), these were HTML pages; a client reads ``error`` as from any answer."""
    with running_server() as base_url:
        answered, headers, body = raw_request(base_url, head.replace("{long}", "x" * 10_000))

    assert answered == status
    assert b"content-type: application/json" in headers.lower()
    assert f"content-length: {len(body)}".encode() in headers.lower()
    assert isinstance(json.loads(body)["error"], str) and json.loads(body)["error"]
