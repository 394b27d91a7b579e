"""Small request builders shared by the API tests (the SDK's wire shapes, API.md §4)."""

import json


def super_json(value) -> str:
    return json.dumps({"json": value})


def trigger(client, task="hello-world", payload=None, headers=None, **options):
    body = {"options": {"payloadType": "application/super+json", **options}}
    if payload is not None:
        body["payload"] = super_json(payload)
    return client.post(f"/api/v1/tasks/{task}/trigger", body, format="json", headers=headers or {})
