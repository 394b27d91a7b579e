"""The SDK's packet offload, step by step over the test client (API.md §1; runs.services.packets)."""

from rest_framework.test import APIClient

from tests.helpers import super_json

STORE = "application/store"


def big_payload(kib: int = 300, **extra) -> str:
    """A superjson payload string of about ``kib`` KiB, as the SDK would offload it."""
    return super_json({"blob": "x" * (kib * 1024), **extra})


def presign_upload(api, filename: str = "trigger/packet_abc123/payload.json"):
    return api.put(f"/api/v2/packets/{filename}")


def put_bytes(url: str, body: bytes, content_type: str = "application/super+json"):
    """PUT to a presigned URL the way the SDK does: no secret key."""
    return APIClient().generic("PUT", url, body, content_type=content_type)


def get_url(url: str):
    return APIClient().get(url)


def upload(
    api,
    data: str | bytes,
    filename: str = "trigger/packet_abc123/payload.json",
    content_type: str = "application/super+json",
) -> str:
    """Presign, upload; returns the storage path to trigger with."""
    handshake = presign_upload(api, filename)
    assert handshake.status_code == 200, handshake.content
    body = data.encode() if isinstance(data, str) else data
    uploaded = put_bytes(handshake.json()["presignedUrl"], body, content_type)
    assert uploaded.status_code == 200, uploaded.content
    return handshake.json()["storagePath"]


def trigger_packet(api, path: str, task: str = "hello-world", **options):
    body = {"payload": path, "options": {"payloadType": STORE, "payloadSize": 300 * 1024, **options}}
    return api.post(f"/api/v1/tasks/{task}/trigger", body, format="json")
