"""Small request builders shared by the API tests (the SDK's wire shapes, API.md §4)."""

import json
import time
import urllib.error
import urllib.request
import uuid


def super_json(value) -> str:
    return json.dumps({"json": value})


def trigger(client, task="hello-world", payload=None, headers=None, **options):
    body = {"options": {"payloadType": "application/super+json", **options}}
    if payload is not None:
        body["payload"] = super_json(payload)
    return client.post(f"/api/v1/tasks/{task}/trigger", body, format="json", headers=headers or {})


def sdk_post(url: str, *, key: str, body: dict | None = None, attempts: int = 5) -> int:
    """POST to a real server as the SDK does (API.md §3): JSON, the Bearer key, one request
    idempotency key for all attempts, and 5xx/429 retried after 1, 1.6, 2.56… seconds. Returns the
    final status code."""
    headers = {
        "Authorization": f"Bearer {key}",
        "content-type": "application/json",
        "x-trigger-request-idempotency-key": str(uuid.uuid4()),
    }
    data = json.dumps(body).encode() if body is not None else b""
    status = 0
    for attempt in range(attempts):
        request = urllib.request.Request(url, data=data, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status
        except urllib.error.HTTPError as error:
            status = error.code
            if status < 500 and status != 429:
                return status
        if attempt + 1 < attempts:
            time.sleep(1.6**attempt)
    return status


def ndjson(items: list[dict]) -> bytes:
    return b"".join(json.dumps(item).encode() + b"\n" for item in items)


def send_items(api, batch, *items):
    """A batch's items, streamed as the SDK sends them (NDJSON)."""
    return api.generic(
        "POST", f"/api/v3/batches/{batch}/items", ndjson(list(items)), content_type="application/x-ndjson"
    )
