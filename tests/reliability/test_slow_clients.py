"""Slow clients against the real server: gunicorn (2 sync workers) behind nginx as
deploy/nginx/mollifier.conf.template ships it, and, to show the test means something, the same slow
clients against gunicorn alone. Correctness only (who is answered, who is cut off); how fast belongs
to the benchmark."""

import http.client
import json
import select
import socket
import threading
import time
import urllib.error
import urllib.request
import uuid
from urllib.parse import urlsplit

import pytest

from runs.models import TaskRun
from tests.factories import EnvironmentFactory
from tests.nginx import nginx_in_front
from tests.server import free_port, running_server

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

# The shipped template's client_header_timeout and client_body_timeout are 10 s; a slow client still
# connected after this long was not cut off.
SLOW_CLIENT_LIMIT_SECONDS = 60


class SlowClient(threading.Thread):
    """One connection that sends its request a byte a second, and records how it ended.

    ``slow="headers"`` never finishes its headers. ``slow="body"`` sends whole headers, then its body
    a byte a second until ``stall`` is set, then nothing (so that nginx's timeout between two reads
    of a body can fire). ``give_up`` closes the connection from this side.
    """

    def __init__(self, base_url: str, key: str, *, slow: str):
        super().__init__(daemon=True)
        self.address = (urlsplit(base_url).hostname, urlsplit(base_url).port)
        self.slow = slow
        request = f"POST /api/v1/tasks/slow/trigger HTTP/1.1\r\nHost: {self.address[0]}:{self.address[1]}\r\n"
        if slow == "headers":
            self.opening, self.trickle = request.encode(), b"X-Slow: " + b"a" * 10_000
        else:
            body = json.dumps({"payload": json.dumps({"json": "slow"})}).encode()
            self.opening = (
                f"{request}Authorization: Bearer {key}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n"
            ).encode()
            self.trickle = body
        self.connected, self.stall, self.give_up = threading.Event(), threading.Event(), threading.Event()
        self.outcome: str | None = None  # "closed" by the server, "reset", an HTTP status, "open", "gave up"
        self.ended_at: float | None = None

    def run(self) -> None:
        with socket.create_connection(self.address, timeout=10) as sock:
            sock.sendall(self.opening)
            self.connected.set()
            self.outcome = self._hold(sock)
        self.ended_at = time.monotonic()

    def _hold(self, sock: socket.socket) -> str:
        deadline = time.monotonic() + SLOW_CLIENT_LIMIT_SECONDS
        sent = 0
        while time.monotonic() < deadline:
            if self.give_up.is_set():
                return "gave up"
            readable, _, _ = select.select([sock], [], [], 1.0)
            try:
                if readable:
                    answer = sock.recv(4096)
                    return answer.split(b" ", 2)[1].decode() if answer.startswith(b"HTTP/") else "closed"
                if not self.stall.is_set() and sent < len(self.trickle):
                    sock.sendall(self.trickle[sent : sent + 1])
                    sent += 1
            except OSError:
                return "reset"
        return "open"


def slow_clients(base_url: str, key: str) -> list[SlowClient]:
    """Four connections with slow headers and two with slow bodies, all connected on return."""
    clients = [SlowClient(base_url, key, slow="headers") for _ in range(4)]
    clients += [SlowClient(base_url, key, slow="body") for _ in range(2)]
    for client in clients:
        client.start()
    for client in clients:
        assert client.connected.wait(10), "a slow client could not connect"
    return clients


def sdk_trigger(base_url: str, key: str, i: int, *, timeout: float) -> tuple[int, dict]:
    """A trigger as the SDK sends it; raises TimeoutError when no answer comes within ``timeout``."""
    request = urllib.request.Request(
        f"{base_url}/api/v1/tasks/hello-world/trigger",
        method="POST",
        data=json.dumps(
            {"payload": json.dumps({"json": {"i": i}}), "options": {"payloadType": "application/super+json"}}
        ).encode(),
        headers={
            "Authorization": f"Bearer {key}",
            "Content-Type": "application/json",
            "x-trigger-request-idempotency-key": str(uuid.uuid4()),
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)
    except urllib.error.URLError as error:
        if isinstance(error.reason, TimeoutError):
            raise error.reason from None
        raise


def raw(base_url: str, method: str, path: str, *, body: bytes | None = None, headers: dict | None = None):
    """One request with nothing added or followed (no redirects); returns (status, headers, body)."""
    parts = urlsplit(base_url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, dict(response.headers), response.read()
    finally:
        connection.close()


@pytest.fixture(scope="module")
def web(django_db_setup):
    """gunicorn with 2 sync workers, told (as in production) to trust X-Forwarded-Proto."""
    with running_server(workers=2, SECURE_PROXY_SSL_HEADER="HTTP_X_FORWARDED_PROTO,https") as base_url:
        yield base_url


@pytest.fixture(scope="module")
def proxied(web):
    with nginx_in_front(web) as base_url:
        yield base_url


def test_slow_clients_do_not_stall_the_api_behind_nginx(proxied):
    environment = EnvironmentFactory()
    key = environment.secret_key
    slow = slow_clients(proxied, key)

    answers = [sdk_trigger(proxied, key, i, timeout=30) for i in range(20)]
    still_connected = [client.ended_at is None for client in slow]
    for client in slow:
        client.stall.set()
    for client in slow:
        client.join(SLOW_CLIENT_LIMIT_SECONDS + 10)

    assert [status for status, _ in answers] == [200] * 20
    assert TaskRun.objects.filter(environment=environment).count() == 20
    assert all(still_connected), "a slow client was cut off before the normal triggers were answered"
    # nginx, not the client, ended every slow connection: a 408 or a closed/reset socket.
    outcomes = [client.outcome for client in slow]
    assert all(outcome in {"408", "closed", "reset"} for outcome in outcomes), outcomes


def test_without_a_proxy_the_same_slow_clients_stall_gunicorn():
    """The companion: gunicorn's 2 sync workers each wait on a slow client, and a normal trigger
    queued behind them gets no answer while they hold. Once they leave, the server answers again."""
    environment = EnvironmentFactory()
    key = environment.secret_key
    with running_server(workers=2) as base_url:
        slow = slow_clients(base_url, key)
        try:
            with pytest.raises(TimeoutError):
                sdk_trigger(base_url, key, 0, timeout=5)
        finally:
            for client in slow:
                client.give_up.set()
            for client in slow:
                client.join(15)
        assert sdk_trigger(base_url, key, 1, timeout=30)[0] == 200


def test_a_chunked_batch_body_is_buffered_and_accepted_through_nginx(proxied):
    """The SDK streams batch items chunked; nginx de-chunks and passes a Content-Length, which
    runs/api/parsers.py's read_ndjson reads like any other body."""
    environment = EnvironmentFactory()
    key = environment.secret_key
    auth = {"Authorization": f"Bearer {key}"}
    status, _, body = raw(
        proxied,
        "POST",
        "/api/v3/batches",
        body=json.dumps({"runCount": 3}).encode(),
        headers={**auth, "Content-Type": "application/json"},
    )
    assert status == 202, body
    batch = json.loads(body)["id"]
    lines = [
        json.dumps(
            {
                "index": i,
                "task": "a",
                "payload": json.dumps({"json": i}),
                "options": {"payloadType": "application/super+json"},
            }
        ).encode()
        + b"\n"
        for i in range(3)
    ]

    parts = urlsplit(proxied)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    connection.request(
        "POST",
        f"/api/v3/batches/{batch}/items",
        body=iter(lines),
        headers={**auth, "Content-Type": "application/x-ndjson", "Transfer-Encoding": "chunked"},
        encode_chunked=True,
    )
    response = connection.getresponse()
    answer = json.loads(response.read())
    connection.close()

    assert response.status == 200, answer
    assert answer["itemsAccepted"] == 3 and answer["sealed"] is True
    assert TaskRun.objects.filter(environment=environment, batch__isnull=False).count() == 3


def test_nginx_refuses_oversized_bodies_in_the_api_error_shape(proxied, settings):
    key = EnvironmentFactory().secret_key
    too_big = b"{" + b" " * settings.TRIGGER["MAX_BODY_BYTES"] + b"}"
    status, headers, body = raw(
        proxied,
        "POST",
        "/api/v1/tasks/hello-world/trigger",
        body=too_big,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    assert status == 413
    assert headers["Content-Type"].startswith("application/json") and json.loads(body) == {
        "error": "Request body too large"
    }


def test_nginx_refuses_oversized_headers_in_the_api_error_shape(proxied):
    headers = {"x-trigger-request-idempotency-key": "x" * 10_000}  # past nginx's 8 KiB header buffers
    status, answer_headers, body = raw(proxied, "GET", "/api/v3/runs/run_x", headers=headers)

    assert (status, json.loads(body)) == (431, {"error": "Request headers too large"})
    assert answer_headers["Content-Type"].startswith("application/json")


def test_metrics_are_not_served_through_the_public_entry_point(proxied, web):
    assert raw(proxied, "GET", "/metrics")[0] == 403
    assert raw(web, "GET", "/metrics")[0] == 200  # Prometheus scrapes gunicorn's own address
    assert raw(proxied, "GET", "/healthz")[0] == 200


def test_nginx_sets_x_forwarded_proto_whatever_the_client_claims(proxied, web):
    """The server trusts X-Forwarded-Proto (SECURE_PROXY_SSL_HEADER), so nginx must own it: a
    client that claims https over plain HTTP is still redirected to https for the admin."""
    spoofed = {"X-Forwarded-Proto": "https"}
    status, headers, _ = raw(proxied, "GET", "/admin/login/", headers=spoofed)
    assert status == 301 and headers["Location"].startswith("https://")
    # What a TLS-terminating proxy sends, straight to gunicorn: taken as HTTPS, no redirect.
    assert raw(web, "GET", "/admin/login/", headers=spoofed)[0] == 200


def test_gunicorn_down_is_a_503_in_the_api_error_shape():
    """What nginx answers for an upstream that refuses connections: retryable, in the API's shape."""
    with nginx_in_front(f"http://127.0.0.1:{free_port()}") as base_url:
        status, headers, body = raw(base_url, "GET", "/api/v3/runs/run_x")
    assert status == 503 and headers["Retry-After"] == "1"
    assert json.loads(body) == {"error": "The API is unavailable; retry"}


def test_a_large_packet_goes_through_nginx_up_to_the_packet_limit(proxied, settings):
    """The SDK uploads payloads of 128 KiB or more to the presigned URL: through the shipped nginx,
    a packet larger than the API's JSON body limit is accepted up to PACKETS_MAX_BYTES, triggered,
    and read back whole; past the packet limit nginx answers the API's 413."""
    key = EnvironmentFactory().secret_key
    auth = {"Authorization": f"Bearer {key}"}
    data = json.dumps({"json": {"text": "x" * (settings.TRIGGER["MAX_BODY_BYTES"] + 1024)}}).encode()
    assert settings.TRIGGER["MAX_BODY_BYTES"] < len(data) < settings.PACKETS["MAX_BYTES"]

    status, _, body = raw(proxied, "PUT", "/api/v2/packets/trigger/packet_nginx/payload.json", headers=auth)
    assert status == 200, body
    handshake = json.loads(body)
    presigned = urlsplit(handshake["presignedUrl"])
    assert presigned.netloc == urlsplit(proxied).netloc  # the SDK's next call goes through nginx too
    upload_path = f"{presigned.path}?{presigned.query}"
    content = {"Content-Type": "application/super+json"}
    status, _, body = raw(proxied, "PUT", upload_path, body=data, headers=content)
    assert status == 200, body

    trigger = {"payload": handshake["storagePath"], "options": {"payloadType": "application/store"}}
    status, _, body = raw(
        proxied,
        "POST",
        "/api/v1/tasks/hello-world/trigger",
        body=json.dumps(trigger).encode(),
        headers={**auth, "Content-Type": "application/json"},
    )
    assert status == 200, body
    status, _, body = raw(proxied, "GET", f"/api/v3/runs/{json.loads(body)['id']}", headers=auth)
    download = urlsplit(json.loads(body)["payloadPresignedUrl"])
    status, _, body = raw(proxied, "GET", f"{download.path}?{download.query}")
    assert status == 200 and body == data

    status, _, body = raw(proxied, "PUT", "/api/v2/packets/trigger/packet_huge/payload.json", headers=auth)
    huge = urlsplit(json.loads(body)["presignedUrl"])
    too_big = b"x" * (settings.PACKETS["MAX_BYTES"] + 1)
    status, headers, body = raw(proxied, "PUT", f"{huge.path}?{huge.query}", body=too_big, headers=content)
    assert status == 413 and json.loads(body) == {"error": "Request body too large"}
