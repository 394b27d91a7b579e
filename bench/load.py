"""A load generator, run as its own process: ``python -m bench.load '<json spec>'``.

Spec: url, path, key, body (JSON), total requests (or duration_s with rate_per_s for a steady
trickle), concurrency, and an optional idempotency-key prefix; ``sdk``: send the headers SDK 4.8.3
sends with every call, with a fresh ``x-trigger-request-idempotency-key`` per request (as the SDK
does per call). Prints one JSON object: per request [start offset s, latency ms, status, run id,
buffered?]. Keep-alive connections, one per thread.
"""

import http.client
import json
import sys
import threading
import time
import uuid
from urllib.parse import urlsplit

# Every JSON call of SDK 4.8.3, in wire order (/work/shared/API.md §2; the capture in
# reference/sdk-wire-capture-4.8.3.jsonl), besides Authorization and the request key.
SDK_HEADERS = {
    "content-type": "application/json",
    "trigger-version": "4.8.3",
    "x-trigger-api-version": "2025-07-16",
    "x-trigger-realtime-streams-version": "v2",
    "x-trigger-source": "sdk",
    "accept": "*/*",
    "accept-language": "*",
    "sec-fetch-mode": "cors",
    "user-agent": "node",
    "cache-control": "max-age=0",
    "accept-encoding": "gzip, deflate",
}


def _worker(spec, counter, lock, results, started):
    parts = urlsplit(spec["url"])
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    headers = {"Authorization": f"Bearer {spec['key']}", "Content-Type": "application/json"}
    body = json.dumps(spec["body"]).encode()
    deadline = started + spec["duration_s"] if spec.get("duration_s") else None
    while True:
        with lock:
            if counter[0] >= spec.get("total", float("inf")) or (deadline and time.perf_counter() >= deadline):
                return
            counter[0] += 1
            n = counter[0]
        if spec.get("idempotency_prefix"):
            payload = dict(spec["body"])
            payload["options"] = {**payload.get("options", {}), "idempotencyKey": f"{spec['idempotency_prefix']}-{n}"}
            body = json.dumps(payload).encode()
        if spec.get("sdk"):
            headers = {
                **SDK_HEADERS,
                "Authorization": f"Bearer {spec['key']}",
                "x-trigger-request-idempotency-key": str(uuid.uuid4()),
            }
        t0 = time.perf_counter()
        try:
            conn.request("POST", spec["path"], body=body, headers=headers)
            response = conn.getresponse()
            data = response.read()
            status = response.status
            buffered = response.getheader("x-mollifier") == "buffered"
        except (OSError, http.client.HTTPException):
            conn.close()
            conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
            status, data, buffered = 0, b"", False
        t1 = time.perf_counter()
        run_id = ""
        if status == 200 and data.startswith(b'{"id"'):
            run_id = json.loads(data)["id"]
        results.append((round(t0 - started, 4), round((t1 - t0) * 1000, 3), status, run_id, buffered))


def run(spec: dict) -> list:
    results: list = []
    lock = threading.Lock()
    counter = [0]
    started = time.perf_counter()
    if spec.get("rate_per_s"):
        # A steady trickle (the neighbour tenant): one request every 1/rate seconds.
        spec = {**spec, "total": int(spec["rate_per_s"] * spec["duration_s"])}
        interval = 1 / spec["rate_per_s"]
        parts = urlsplit(spec["url"])
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
        headers = {"Authorization": f"Bearer {spec['key']}", "Content-Type": "application/json"}
        body = json.dumps(spec["body"]).encode()
        for i in range(spec["total"]):
            due = started + i * interval
            if (delay := due - time.perf_counter()) > 0:
                time.sleep(delay)
            t0 = time.perf_counter()
            conn.request("POST", spec["path"], body=body, headers=headers)
            response = conn.getresponse()
            response.read()
            results.append(
                (round(t0 - started, 4), round((time.perf_counter() - t0) * 1000, 3), response.status, "", False)
            )
        return results
    threads = [
        threading.Thread(target=_worker, args=(spec, counter, lock, results, started))
        for _ in range(spec["concurrency"])
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


if __name__ == "__main__":
    json.dump(run(json.loads(sys.argv[1])), sys.stdout)
