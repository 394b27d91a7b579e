"""The packet store on S3 (django-storages against moto's real S3 server): the same code, the same
answers, the bytes in a bucket."""

import http.server
import threading
import time
from contextlib import contextmanager
from datetime import timedelta

import pytest
from django.utils import timezone

from runs.models import Packet
from runs.services.packet_cleanup import packets_cleanup
from tests import s3
from tests.faults import silent_port
from tests.packets import big_payload, get_url, presign_upload, put_bytes, trigger_packet, upload

pytestmark = pytest.mark.django_db


@pytest.fixture(scope="module")
def s3_endpoint():
    with s3.s3_server() as endpoint:
        yield endpoint


@pytest.fixture
def bucket(s3_endpoint, settings):
    name = s3.new_bucket(s3_endpoint)
    settings.STORAGES = {**settings.STORAGES, "packets": s3.storage_settings(s3_endpoint, name, prefix="packets")}
    return name


def test_a_packet_round_trips_through_a_bucket(api, environment, s3_endpoint, bucket):
    data = big_payload(300)
    path = upload(api, data)

    run_id = trigger_packet(api, path).json()["id"]
    downloaded = get_url(api.get(f"/api/v3/runs/{run_id}").json()["payloadPresignedUrl"])

    assert downloaded.status_code == 200
    assert downloaded["Content-Type"] == "application/super+json"
    assert b"".join(downloaded.streaming_content).decode() == data
    assert s3.keys(s3_endpoint, bucket) == [f"packets/{path}"]
    head = s3.client(s3_endpoint).head_object(Bucket=bucket, Key=f"packets/{path}")
    assert head["ContentType"] == "application/super+json" and head["ContentLength"] == len(data)


def test_limits_and_refusals_are_the_same_on_s3(api, s3_endpoint, bucket, settings):
    settings.PACKETS = {**settings.PACKETS, "MAX_BYTES": 1000}
    url = presign_upload(api).json()["presignedUrl"]

    assert put_bytes(url, b"x" * 1001).status_code == 413
    assert put_bytes(url.replace("signature=", "signature=x"), b"{}").status_code == 403
    assert trigger_packet(api, presign_upload(api).json()["storagePath"]).status_code == 422
    assert s3.keys(s3_endpoint, bucket) == [] and not Packet.objects.exists()


def test_the_cleanup_removes_unused_objects_and_unrecorded_ones_from_the_bucket(api, environment, s3_endpoint, bucket):
    unused = upload(api, b'{"json":1}', filename="trigger/packet_unused/payload.json")
    kept = upload(api, b'{"json":2}', filename="trigger/packet_kept/payload.json")
    trigger_packet(api, kept)
    orphan = f"env_{environment.pk}/trigger/packet_orphan/payload.json"
    s3.client(s3_endpoint).put_object(Bucket=bucket, Key=f"packets/{orphan}", Body=b"{}")

    report = packets_cleanup(older_than=timedelta(days=1), now=timezone.now() + timedelta(days=2))

    assert report.deleted == [unused] and report.orphans == [orphan] and report.failed == 0
    assert s3.keys(s3_endpoint, bucket) == [f"packets/{kept}"]


@contextmanager
def failing_store(outage: str):
    """An S3 endpoint that refuses or hangs (tests/faults.py silent_port)."""
    with silent_port(outage) as port:
        yield f"http://127.0.0.1:{port}"


def packets_on(settings, endpoint: str, bucket: str) -> None:
    storage = s3.storage_settings(endpoint, bucket, prefix="packets", timeout_s=0.5)
    settings.STORAGES = {**settings.STORAGES, "packets": storage}


@pytest.mark.parametrize("outage", ["refused", "hung"])
def test_an_upload_to_a_store_that_refuses_or_hangs_answers_503_and_records_nothing(api, settings, outage):
    with failing_store(outage) as endpoint:
        packets_on(settings, endpoint, "packets")
        url = presign_upload(api).json()["presignedUrl"]
        started = time.monotonic()
        answer = put_bytes(url, b'{"json":1}')
        waited = time.monotonic() - started

    assert answer.status_code == 503 and "retry" in answer.json()["error"]
    assert waited < 20  # bounded (PACKETS_S3_TIMEOUT_SECONDS, two attempts), not boto3's minutes
    assert not Packet.objects.exists()


@pytest.mark.parametrize("outage", ["refused", "hung"])
def test_a_download_from_a_store_that_refuses_or_hangs_answers_503_before_any_byte(
    api, settings, s3_endpoint, bucket, outage
):
    path = upload(api, b'{"json":1}')
    url = api.get(f"/api/v1/packets/{path}").json()["presignedUrl"]
    with failing_store(outage) as endpoint:
        packets_on(settings, endpoint, bucket)
        answer = get_url(url)

    assert answer.status_code == 503 and "retry" in answer.json()["error"]


@contextmanager
def store_that_hangs_on_get():
    """An S3 endpoint that answers HEAD (the object is there) and never answers GET; counts the GETs."""
    release, gets = threading.Event(), []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self):
            self.send_response(200)
            for name, value in (
                ("Content-Length", "10"),
                ("Content-Type", "application/super+json"),
                ("ETag", '"0123456789abcdef0123456789abcdef"'),
                ("Last-Modified", "Mon, 07 Dec 2026 12:00:00 GMT"),
            ):
                self.send_header(name, value)
            self.end_headers()

        def do_GET(self):
            gets.append(self.path)
            release.wait(30)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", gets
    finally:
        release.set()
        server.shutdown()
        server.server_close()


def test_a_download_whose_get_hangs_answers_503_after_one_bounded_try(api, settings, s3_endpoint, bucket):
    """The object's HEAD answers, its GET does not: fetched before the answer starts, so a 503
    rather than a 200 whose body never comes, and after botocore's two attempts only (s3transfer
    alone would retry the download five times more)."""
    path = upload(api, b'{"json":1}')
    url = api.get(f"/api/v1/packets/{path}").json()["presignedUrl"]
    with store_that_hangs_on_get() as (endpoint, gets):
        packets_on(settings, endpoint, bucket)
        answer = get_url(url)

    assert answer.status_code == 503 and "retry" in answer.json()["error"]
    assert len(gets) == 2
