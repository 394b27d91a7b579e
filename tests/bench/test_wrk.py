"""The bench's load generator (bench/wrk.py driving wrk with bench/sdk.lua) sends what SDK 4.8.3
sends: checked on the wire against a captured SDK request, and on the real server by the runs it
creates."""

import json
import os
import re
import socket
import threading
from pathlib import Path

import pytest

from bench import wrk
from runs.models import TaskRun
from tests.factories import EnvironmentFactory
from tests.server import running_server

# Two trigger requests of the capture the SDK acceptance run recorded (/work/shared/reference): a
# plain one, and one with an idempotency key.
CAPTURE = [json.loads(line) for line in (Path(__file__).parent / "sdk-trigger-capture-4.8.3.jsonl").open()]
UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


@pytest.fixture(autouse=True)
def wrk_installed():
    """CI installs wrk (.ci/run), so there a missing wrk fails instead of skipping."""
    if wrk.available():
        return
    if os.environ.get("CI"):
        pytest.fail("wrk is missing, and CI must run this test: .ci/run installs it")
    pytest.skip("wrk is missing: `apt-get install wrk` (`make bench` and CI install it)")


class CaptureServer:
    """A loopback HTTP/1.1 server that keeps every request it reads, as (header pairs in wire order,
    body), and answers each as the trigger API does, on keep-alive connections like the SDK's."""

    def __init__(self):
        self.requests: list[tuple[list[tuple[str, str]], bytes]] = []
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket):
        buffer = b""
        with conn:
            while True:
                while b"\r\n\r\n" not in buffer:
                    try:
                        chunk = conn.recv(65536)
                    except ConnectionResetError:
                        chunk = b""  # wrk exiting may reset its connections
                    if not chunk:
                        return  # also: wrk checks the address with a connection it closes at once
                    buffer += chunk
                head, buffer = buffer.split(b"\r\n\r\n", 1)
                request_line, *lines = head.decode().split("\r\n")
                headers = [(name, value) for name, value in (line.split(": ", 1) for line in lines)]
                length = int(next(value for name, value in headers if name.lower() == "content-length"))
                while len(buffer) < length:
                    buffer += conn.recv(65536)
                body, buffer = buffer[:length], buffer[length:]
                with self._lock:
                    self.requests.append(([("request-line", request_line), *headers], body))
                    answer = json.dumps({"id": f"run_capture{len(self.requests)}", "isCached": False}).encode()
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                    + f"content-length: {len(answer)}\r\n\r\n".encode()
                    + answer
                )

    def close(self):
        self._listener.close()


@pytest.fixture
def capture_server():
    server = CaptureServer()
    yield server
    server.close()


def captured_headers(record: dict) -> list[tuple[str, str]]:
    return [(name, value) for name, value in record["headers"]]


@pytest.mark.parametrize("keyed", [False, True], ids=["plain", "keyed"])
def test_every_request_is_the_sdks_trigger_request(capture_server, keyed):
    reference = CAPTURE[1 if keyed else 0]
    reference_body = json.loads(reference["body"])
    key = reference["headers"][2][1].removeprefix("Bearer ")
    value = json.loads(reference_body["payload"])["json"]

    result = wrk.run(
        capture_server.url,
        reference["path"],
        key,
        connections=3,
        requests=10,  # not a multiple of the connections: the burst is still exact
        body=wrk.sdk_body(value),
        keyed=keyed,
        ids=True,
    )

    assert result["requests"] == 10 and result["statuses"] == {200: 10} and result["non_2xx"] == 0
    assert len(result["ids"]) == 10 and len(result["latencies_ms"]) == 10
    assert result["generator_cpu_s"] >= 0 and "generator_cpu_share" in result
    assert len(capture_server.requests) == 10
    request_keys = set()
    idempotency_keys = set()
    for headers, body in capture_server.requests:
        assert headers[0] == ("request-line", f"POST {reference['path']} HTTP/1.1")
        sent = headers[1:]
        # The SDK's header names in its wire order; its values, but for those that differ per call.
        assert [name for name, _ in sent] == [name for name, _ in captured_headers(reference)]
        per_call = {"host", "x-trigger-request-idempotency-key", "content-length"}
        assert [(n, v) for n, v in sent if n not in per_call] == [
            (n, v) for n, v in captured_headers(reference) if n not in per_call
        ]
        fields = dict(sent)
        assert fields["host"] == capture_server.url.removeprefix("http://")
        assert int(fields["content-length"]) == len(body)
        assert UUID4.match(fields["x-trigger-request-idempotency-key"])
        request_keys.add(fields["x-trigger-request-idempotency-key"])
        sent_body = json.loads(body)
        if not keyed:
            assert body.decode() == reference["body"]  # byte for byte
            continue
        # The same fields in the same order; the keys are fresh per request, shaped as the SDK's.
        assert list(sent_body) == list(reference_body)
        assert list(sent_body["options"]) == list(reference_body["options"])
        assert sent_body["payload"] == reference_body["payload"]
        assert sent_body["options"]["payloadSize"] == reference_body["options"]["payloadSize"]
        assert SHA256_HEX.match(sent_body["options"]["idempotencyKey"])
        assert sent_body["options"]["idempotencyKeyOptions"]["scope"] == "run"
        idempotency_keys.add(sent_body["options"]["idempotencyKey"])
    assert len(request_keys) == 10  # a fresh request key per request, across wrk's threads
    assert len(idempotency_keys) == (10 if keyed else 0)


def test_a_run_for_a_time_reports_its_requests_and_the_generators_cpu(capture_server):
    result = wrk.run(
        capture_server.url, "/t", "tr_dev_x", connections=2, seconds=0.5, body=wrk.sdk_body({}), records=True
    )

    # Stopped on the clock, but after a response: every request the server read was answered.
    assert result["requests"] == len(capture_server.requests) > 0
    keys = {dict(headers)["x-trigger-request-idempotency-key"] for headers, _ in capture_server.requests}
    assert len(keys) == len(capture_server.requests)
    assert result["generator_cpu_s"] >= 0
    # One record per answer, as bench/load.py's: (start s, latency ms, status, "", buffered?), by start.
    records = result["records"]
    assert len(records) == result["requests"]
    assert records == sorted(records) and records[0][0] == 0
    assert {(status, run_id, buffered) for _, _, status, run_id, buffered in records} == {(200, "", False)}
    assert sorted(latency for _, latency, *_ in records) == sorted(result["latencies_ms"])


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("keyed", [False, True], ids=["plain", "keyed"])
def test_a_burst_on_the_real_server_creates_one_run_per_request_with_its_request_key(keyed):
    environment = EnvironmentFactory()
    body = wrk.sdk_body({"user": "u_1", "items": [1, 2, 3]}, tags=["bench"])

    with running_server() as base_url:
        result = wrk.run(
            base_url,
            "/api/v1/tasks/bench/trigger",
            environment.secret_key,
            connections=4,
            requests=30,
            body=body,
            keyed=keyed,
            ids=True,
        )

    assert result["statuses"] == {200: 30}
    runs = list(TaskRun.objects.filter(environment=environment))
    assert sorted(run.friendly_id for run in runs) == sorted(result["ids"])
    assert len({run.request_key for run in runs}) == 30
    assert all(UUID4.match(run.request_key or "") for run in runs)
    assert {(run.payload, run.payload_type, tuple(run.tags)) for run in runs} == {
        (body["payload"], "application/super+json", ("bench",))
    }
    if keyed:
        assert len({run.idempotency_key for run in runs}) == 30
    else:
        assert {run.idempotency_key for run in runs} == {None}
