"""Large payloads: the SDK's packet offload over the API, wherever the run lives."""

import json
from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from mollifier import buffer
from mollifier.clock import now_ms
from runs.models import Packet, TaskRun
from runs.services.packets import packet_url
from tests.buffering import write_round
from tests.helpers import ndjson
from tests.packets import (
    STORE,
    big_payload,
    get_url,
    presign_upload,
    put_bytes,
    trigger_packet,
    upload,
)
from tests.runs.test_buffered_everywhere import drain, lease

pytestmark = pytest.mark.django_db


def test_the_handshake_answers_a_presigned_url_and_a_path_in_the_environment(api, environment):
    response = presign_upload(api, "trigger/packet_abc123/payload.json")

    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"presignedUrl", "storagePath"}
    assert body["storagePath"] == f"env_{environment.pk}/trigger/packet_abc123/payload.json"
    url = urlsplit(body["presignedUrl"])
    assert url.scheme == "http" and url.netloc == "testserver"  # absolute: the SDK fetches it as it is
    assert url.path == f"/api/packet-store/{body['storagePath']}"
    assert set(parse_qs(url.query)) == {"expires", "signature"}
    assert not Packet.objects.exists()  # nothing is recorded before the bytes arrive


def test_the_sdk_flow_round_trips_a_300_kib_payload_through_a_written_run(api, environment, packets_root):
    data = big_payload(300, n=1)
    path = upload(api, data)

    triggered = trigger_packet(api, path)
    assert triggered.status_code == 200
    run_id = triggered.json()["id"]
    run = TaskRun.objects.get(id=run_id.removeprefix("run_"))
    assert run.payload == path and run.payload_type == STORE
    retrieved = api.get(f"/api/v3/runs/{run_id}").json()
    assert "payload" not in retrieved
    downloaded = get_url(retrieved["payloadPresignedUrl"])
    assert downloaded.status_code == 200
    assert downloaded["Content-Type"] == "application/super+json"  # exactly: the SDK parses by it
    assert b"".join(downloaded.streaming_content).decode() == data
    assert (packets_root / path).read_text() == data


def test_a_text_packet_keeps_its_content_type(api):
    path = upload(api, "é" * 70_000, filename="trigger/packet_t/payload.txt", content_type="text/plain")
    run_id = trigger_packet(api, path).json()["id"]

    downloaded = get_url(api.get(f"/api/v3/runs/{run_id}").json()["payloadPresignedUrl"])

    assert downloaded["Content-Type"] == "text/plain"
    assert b"".join(downloaded.streaming_content).decode() == "é" * 70_000


def test_a_buffered_run_holds_only_the_path_and_retrieves_its_packet_buffered_mid_drain_and_written(
    api, enrolled, redis_client
):
    data = big_payload(300)
    path = upload(api, data)
    for i in range(5):
        api.post("/api/v1/tasks/warm/trigger", {"payload": str(i)}, format="json")

    triggered = trigger_packet(api, path)
    assert triggered.headers["x-mollifier"] == "buffered"
    run_id = triggered.json()["id"]
    entry = buffer.get(org_id=str(enrolled.organization_id), run_id=run_id)
    assert entry.snapshot["payload"] == path
    assert len(entry.raw_snapshot or json.dumps(entry.snapshot)) < 2_000  # Redis stays small
    urls = [api.get(f"/api/v3/runs/{run_id}").json()["payloadPresignedUrl"]]  # buffered
    entries = lease(enrolled, run_id)
    assert entries
    urls.append(api.get(f"/api/v3/runs/{run_id}").json()["payloadPresignedUrl"])  # mid-drain
    write_round(entries)  # the drainer's round, finished by hand
    buffer.ack(entries, now_ms=now_ms())
    urls.append(api.get(f"/api/v3/runs/{run_id}").json()["payloadPresignedUrl"])  # written

    assert TaskRun.objects.get(id=run_id.removeprefix("run_")).payload == path
    for url in urls:
        assert b"".join(get_url(url).streaming_content).decode() == data


def test_batch_items_each_name_their_own_packet(api, enrolled):
    for i in range(5):
        api.post("/api/v1/tasks/warm/trigger", {"payload": str(i)}, format="json")
    datas = [big_payload(150, i=i) for i in range(3)]
    paths = [upload(api, data, filename=f"trigger/packet_b{i}/payload.json") for i, data in enumerate(datas)]
    batch = api.post("/api/v3/batches", {"runCount": 3}, format="json").json()["id"]
    items = [{"index": i, "task": "big", "payload": p, "options": {"payloadType": STORE}} for i, p in enumerate(paths)]

    response = api.generic("POST", f"/api/v3/batches/{batch}/items", ndjson(items), content_type="application/x-ndjson")

    assert response.status_code == 200 and response.json()["itemsAccepted"] == 3
    run_ids = api.get(f"/api/v2/batches/{batch}").json()["runs"]
    drain()
    assert api.get(f"/api/v2/batches/{batch}").json()["runs"] == run_ids
    for run_id, data in zip(run_ids, datas):
        url = api.get(f"/api/v3/runs/{run_id}").json()["payloadPresignedUrl"]
        assert b"".join(get_url(url).streaming_content).decode() == data


def test_a_batch_with_one_missing_packet_writes_no_item(api, environment):
    path = upload(api, big_payload(1))
    batch = api.post("/api/v3/batches", {"runCount": 2}, format="json").json()["id"]
    items = [
        {"index": 0, "task": "big", "payload": path, "options": {"payloadType": STORE}},
        {"index": 1, "task": "big", "payload": path.replace("abc123", "nope"), "options": {"payloadType": STORE}},
    ]

    response = api.generic("POST", f"/api/v3/batches/{batch}/items", ndjson(items), content_type="application/x-ndjson")

    assert response.status_code == 422
    assert "Packet not found" in response.json()["error"]
    assert TaskRun.objects.count() == 0


def test_replay_reuses_the_stored_packet(api, environment):
    path = upload(api, big_payload(200))
    run_id = trigger_packet(api, path).json()["id"]

    replayed = api.post(f"/api/v1/runs/{run_id}/replay")

    assert replayed.status_code == 200
    new = TaskRun.objects.get(id=replayed.json()["id"].removeprefix("run_"))
    assert new.payload == path and new.payload_type == STORE
    assert Packet.objects.count() == 1
    assert "payloadPresignedUrl" in api.get(f"/api/v3/runs/{replayed.json()['id']}").json()


def test_replay_with_a_new_payload_leaves_the_packet_behind(api, environment):
    run_id = trigger_packet(api, upload(api, big_payload(1))).json()["id"]

    replayed = api.post(f"/api/v1/runs/{run_id}/replay", {"payload": {"small": True}}, format="json")

    body = api.get(f"/api/v3/runs/{replayed.json()['id']}").json()
    assert body["payload"] == {"small": True} and "payloadPresignedUrl" not in body


def test_the_run_packet_endpoint_presigns_the_runs_payload_wherever_it_lives(api, enrolled):
    path = upload(api, big_payload(1))
    for i in range(5):
        api.post("/api/v1/tasks/warm/trigger", {"payload": str(i)}, format="json")
    run_id = trigger_packet(api, path).json()["id"]  # buffered
    plain_id = api.post("/api/v1/tasks/warm/trigger", {"payload": "small"}, format="json").json()["id"]

    payload = api.get(f"/api/v1/runs/{run_id}/packets/payload")
    output = api.get(f"/api/v1/runs/{run_id}/packets/output")
    plain = api.get(f"/api/v1/runs/{plain_id}/packets/payload")

    assert payload.status_code == 200 and set(payload.json()) == {"presignedUrl"}
    assert get_url(payload.json()["presignedUrl"]).status_code == 200
    assert output.status_code == 404 and plain.status_code == 404  # the SDK then falls back to v1
    by_path = api.get(f"/api/v1/packets/{path}")
    assert by_path.status_code == 200 and get_url(by_path.json()["presignedUrl"]).status_code == 200


def test_a_retried_upload_replaces_the_bytes_until_a_trigger_names_the_packet(api, environment, packets_root):
    handshake = presign_upload(api).json()
    put_bytes(handshake["presignedUrl"], b'{"json":1}')
    assert put_bytes(handshake["presignedUrl"], b'{"json":2}').status_code == 200
    assert (packets_root / handshake["storagePath"]).read_bytes() == b'{"json":2}'
    assert Packet.objects.get().size == len(b'{"json":2}')
    trigger_packet(api, handshake["storagePath"])

    again = put_bytes(handshake["presignedUrl"], b'{"json":3}')
    presign_again = presign_upload(api)

    assert again.status_code == 409 and again.headers["x-should-retry"] == "false"
    assert presign_again.status_code == 409
    assert (packets_root / handshake["storagePath"]).read_bytes() == b'{"json":2}'


def test_the_oversize_limit_answers_413_and_stores_nothing(api, settings, packets_root):
    settings.PACKETS = {**settings.PACKETS, "MAX_BYTES": 1000}
    handshake = presign_upload(api).json()

    too_big = put_bytes(handshake["presignedUrl"], b"x" * 1001)
    just_right = put_bytes(presign_upload(api, "trigger/packet_ok/payload.json").json()["presignedUrl"], b"x" * 1000)

    assert too_big.status_code == 413 and "1000 bytes" in too_big.json()["error"]
    assert just_right.status_code == 200
    assert list(Packet.objects.values_list("path", flat=True)) == [just_right.json()["storagePath"]]
    assert not (packets_root / handshake["storagePath"]).exists()


def test_an_upload_without_a_length_is_cut_off_while_streaming(environment, settings, packets_root):
    """A chunked upload declares no length: the limit is checked as the bytes arrive, and reading
    stops just past it rather than after the whole body."""
    from runs.exceptions import TooLarge
    from runs.services.packets import packet_path_for, packet_store

    settings.PACKETS = {**settings.PACKETS, "MAX_BYTES": 256 * 1024}

    class EndlessBody:
        read_bytes = 0

        def read(self, size: int) -> bytes:
            self.read_bytes += size
            return b"x" * size

    body = EndlessBody()
    path = packet_path_for(environment=environment, filename="trigger/packet_big/payload.json")

    with pytest.raises(TooLarge):
        packet_store(path=path, body=body, content_length=None, content_type="text/plain", now=timezone.now())

    assert body.read_bytes <= 256 * 1024 + 64 * 1024
    assert not Packet.objects.exists() and not (packets_root / path).exists()


def test_a_trigger_naming_a_packet_never_uploaded_is_422_and_writes_nothing(api, enrolled, environment):
    for i in range(5):
        api.post("/api/v1/tasks/warm/trigger", {"payload": str(i)}, format="json")
    presigned_only = presign_upload(api).json()["storagePath"]

    response = trigger_packet(api, presigned_only)

    assert response.status_code == 422
    assert response.json() == {
        "error": f"Packet not found: {presigned_only}. Upload it through PUT /api/v2/packets/… before triggering."
    }
    assert buffer.buffered_count(str(environment.organization_id)) == 0
    assert TaskRun.objects.filter(task_identifier="hello-world").count() == 0


@pytest.mark.parametrize("payload", [None, 42, "", "../etc/passwd", "/env_1/x.json", "env_1/../x.json"])
def test_a_packet_payload_that_is_not_a_path_is_400(api, payload):
    body = {"options": {"payloadType": STORE}}
    if payload is not None:
        body["payload"] = payload if isinstance(payload, str) else json.dumps(payload)

    response = api.post("/api/v1/tasks/t/trigger", body, format="json")

    assert response.status_code == 400, response.content
    assert "packet" in response.json()["error"].lower()
    assert TaskRun.objects.count() == 0


# -- isolation -----------------------------------------------------------------------------------


def test_another_environment_cannot_read_or_name_a_packet(api, other_api, environment, other_environment):
    path = upload(api, big_payload(1))
    run_id = trigger_packet(api, path).json()["id"]

    assert other_api.get(f"/api/v1/packets/{path}").status_code == 404
    assert other_api.get(f"/api/v1/runs/{run_id}/packets/payload").status_code == 404
    named = trigger_packet(other_api, path)
    assert named.status_code == 400
    assert f"its packets are under env_{other_environment.pk}/" in named.json()["error"]
    assert TaskRun.objects.filter(environment=other_environment).count() == 0


def test_another_environments_upload_lands_in_its_own_prefix(api, other_api, environment, other_environment):
    path = upload(api, b'{"json":"mine"}')
    theirs = presign_upload(other_api).json()

    put_bytes(theirs["presignedUrl"], b'{"json":"theirs"}')

    assert theirs["storagePath"] == path.replace(f"env_{environment.pk}/", f"env_{other_environment.pk}/")
    assert b"".join(get_url(api.get(f"/api/v1/packets/{path}").json()["presignedUrl"]).streaming_content) == (
        b'{"json":"mine"}'
    )


def test_the_handshakes_need_the_secret_key(environment):
    anonymous = APIClient()

    assert anonymous.put("/api/v2/packets/trigger/p/payload.json").status_code == 401
    assert anonymous.get(f"/api/v1/packets/env_{environment.pk}/trigger/p/payload.json").status_code == 401


# -- signatures ----------------------------------------------------------------------------------


def _with_query(url: str, **changes) -> str:
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    query.update(changes)
    query = {k: v for k, v in query.items() if v is not None}
    return f"{parts.path}?{'&'.join(f'{k}={v}' for k, v in query.items())}"


def test_a_tampered_signature_path_or_expiry_is_403_and_writes_nothing(api, environment, packets_root):
    url = presign_upload(api).json()["presignedUrl"]
    expires = int(parse_qs(urlsplit(url).query)["expires"][0])
    other_path = urlsplit(url).path.replace("packet_abc123", "packet_zzz")

    attempts = [
        _with_query(url, signature="A" * 43),
        _with_query(url, signature=None),
        _with_query(url, expires=str(expires + 3600)),
        _with_query(url, expires="1e12"),
        other_path + "?" + urlsplit(url).query,
    ]
    for attempt in attempts:
        response = put_bytes(attempt, b"{}")
        assert response.status_code == 403, attempt
        assert "error" in response.json()

    assert not Packet.objects.exists() and not packets_root.exists()


def test_an_upload_url_does_not_download_and_a_download_url_does_not_upload(api):
    path = upload(api, b'{"json":1}')
    upload_url = presign_upload(api).json()["presignedUrl"]
    download_url = api.get(f"/api/v1/packets/{path}").json()["presignedUrl"]

    assert get_url(upload_url).status_code == 403
    assert put_bytes(download_url, b'{"json":2}').status_code == 403


def test_an_expired_url_is_403(api, environment, packets_root):
    path = f"env_{environment.pk}/trigger/packet_old/payload.json"
    long_ago = timezone.now() - timedelta(hours=1)

    upload_response = put_bytes(packet_url(method="PUT", path=path, now=long_ago), b"{}")

    assert upload_response.status_code == 403
    assert upload_response.json() == {"error": "The packet URL has expired: ask the API for a new one"}
    assert not Packet.objects.exists()


def test_a_url_signed_with_another_secret_is_403(api, settings):
    url = presign_upload(api).json()["presignedUrl"]
    settings.SECRET_KEY = "another-secret-entirely-0123456789-abcdefghijklmnop"

    assert put_bytes(url, b"{}").status_code == 403


def test_a_url_signed_before_a_key_rotation_still_works(api, settings):
    url = presign_upload(api).json()["presignedUrl"]
    settings.SECRET_KEY_FALLBACKS = [settings.SECRET_KEY]
    settings.SECRET_KEY = "the-rotated-secret-0123456789-abcdefghijklmnopqrstu"

    assert put_bytes(url, b"{}").status_code == 200


# -- path traversal and odd names ----------------------------------------------------------------

BAD_FILENAMES = [
    "..%2Fescape.json",  # ../escape.json
    "%2e%2e/escape.json",  # Django decodes it to ../escape.json
    "a/%2E%2E/%2E%2E/escape.json",
    "%252e%252e/escape.json",  # a literal %2e%2e: no percent sign is allowed at all
    "%2Fetc%2Fpasswd",  # absolute
    "a%5Cb.json",  # backslash
    "a%00b.json",  # NUL
    "a//b.json",
    "./a.json",
    ".hidden",
    "a/./b.json",
    "caf%C3%A9.json",  # non-ASCII
    "a%20b.json",
    "a%0Ab.json",
    "x" * 501,
    "/".join(["a"] * 17),
]


@pytest.mark.parametrize("filename", BAD_FILENAMES)
def test_a_bad_filename_is_400_and_presigns_nothing(api, filename, packets_root):
    response = api.put(f"/api/v2/packets/{filename}")

    assert response.status_code == 400, (filename, response.content)
    assert response.json()["error"].startswith("Invalid packet filename")
    assert not packets_root.exists()


@pytest.mark.parametrize("filename", BAD_FILENAMES)
def test_a_bad_path_is_refused_by_the_download_handshake_and_the_presigned_views(api, environment, filename):
    read = api.get(f"/api/v1/packets/env_{environment.pk}/{filename}")
    direct = put_bytes(f"/api/packet-store/env_{environment.pk}/{filename}?expires=99999999999&signature=x", b"{}")

    assert read.status_code == 400, read.content
    assert direct.status_code == 403
    assert not Packet.objects.exists()


def test_the_sdks_own_filenames_are_accepted(api):
    for filename in ("trigger/packet_cm4z8k2l90000abcd1234efgh/payload.json", "run_abc-1/output.txt", "a.b-c_d"):
        assert presign_upload(api, filename).status_code == 200


def test_a_downloaded_packet_whose_object_vanished_is_404(api, packets_root):
    path = upload(api, b'{"json":1}')
    url = api.get(f"/api/v1/packets/{path}").json()["presignedUrl"]
    (packets_root / path).unlink()

    response = get_url(url)

    assert response.status_code == 404 and response.json() == {"error": "Packet not found"}


def test_the_run_packet_endpoint_names_only_payload_or_output(api):
    run_id = trigger_packet(api, upload(api, big_payload(1))).json()["id"]

    response = api.get(f"/api/v1/runs/{run_id}/packets/metadata")

    assert response.status_code == 400
    assert response.json() == {"error": "field: Must be one of payload, output."}


def test_the_openapi_schema_describes_the_handshakes_but_not_the_presigned_urls(api):
    schema = api.get("/api/schema", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()
    paths = schema["paths"]

    assert paths["/api/v2/packets/{filename}"]["put"]["operationId"] == "create_packet_upload_url"
    assert paths["/api/v1/packets/{path}"]["get"]["summary"] == "Presign a packet download"
    assert "get" in paths["/api/v1/runs/{run_id}/packets/{field}"]
    assert not [path for path in paths if "packet-store" in path]
    assert "payloadPresignedUrl" in schema["components"]["schemas"]["RunSchema"]["properties"]


def test_a_download_is_an_attachment_that_a_browser_will_not_run(api):
    path = upload(api, b"<script>alert(1)</script>", content_type="text/html")
    url = api.get(f"/api/v1/packets/{path}").json()["presignedUrl"]

    response = APIClient().get(url, HTTP_ACCEPT="text/html")

    assert response.status_code == 200 and response["Content-Type"] == "text/html"
    assert response["Content-Disposition"] == 'attachment; filename="payload.json"'
    assert response["Content-Security-Policy"] == "default-src 'none'; sandbox"
    assert response["X-Content-Type-Options"] == "nosniff"


def test_presigned_urls_answer_whatever_the_client_accepts(api):
    handshake = presign_upload(api).json()

    uploaded = APIClient().generic(
        "PUT", handshake["presignedUrl"], b"{}", content_type="application/super+json", HTTP_ACCEPT="text/plain"
    )
    refused = APIClient().get(handshake["presignedUrl"], HTTP_ACCEPT="application/super+json")

    assert uploaded.status_code == 200
    assert refused.status_code == 403 and json.loads(refused.content)["error"]
