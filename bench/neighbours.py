"""The burst's neighbours, each a process of its own that starts on a ``go`` line on stdin and stops
on a ``stop`` line, then prints one JSON object:

- ``python -m bench.neighbours db '<json spec>'``: another service of the same database, with
  psycopg directly: reads a run by id, then updates a run's status, in turns, at ``rate_per_s``
  queries a second (``dsn``, ``run_ids``). Each query is one transaction (autocommit), counted.
  It prints its backend's pid on its first line, so the watch can leave that backend out, and
  reports the backend's CPU ticks over the window, read in /proc.
- ``python -m bench.neighbours http '<json spec>'``: another tenant triggering SDK-shaped runs at a
  steady ``rate_per_s`` (``url``, ``path``, ``key``, ``body``).

Latencies are in ms, of each query or request, with its start offset in seconds.
"""

import http.client
import json
import subprocess
import sys
import threading
import time
import uuid
from urllib.parse import urlsplit

from bench import processes
from bench.load import SDK_HEADERS


def _paced(rate_per_s: float, halt: threading.Event, step) -> list:
    """Call ``step(n)`` every 1/rate seconds until ``halt``; a late call is not made up for with a
    rush (the schedule restarts from now), so a slow server sees the rate, not a queue."""
    interval = 1 / rate_per_s
    results = []
    started = time.perf_counter()
    due = started
    n = 0
    while not halt.is_set():
        if (delay := due - time.perf_counter()) > 0:
            if halt.wait(delay):
                break
        t0 = time.perf_counter()
        ok = step(n)
        results.append((round(t0 - started, 4), round((time.perf_counter() - t0) * 1000, 3), ok))
        n += 1
        due = max(due + interval, time.perf_counter() - interval)
    return results


def _wait_for_stop(halt: threading.Event) -> None:
    for line in sys.stdin:
        if line.strip() == "stop":
            break
    halt.set()


def _run_db(spec: dict) -> dict:
    import psycopg

    from bench.pgprobe import process_ticks

    conn = psycopg.connect(spec["dsn"], autocommit=True)
    backend = conn.execute("SELECT pg_backend_pid()").fetchone()[0]  # type: ignore[index]
    print(json.dumps({"pid": backend}), flush=True)
    ids = spec["run_ids"]
    statuses = ("QUEUED", "EXECUTING")
    transactions = 1  # the pid above

    def step(n: int) -> bool:
        nonlocal transactions
        run_id = ids[(n // 2 * 7919) % len(ids)]  # a prime stride: the runs in turn, in no index order
        if n % 2 == 0:
            found = conn.execute(
                "SELECT id, status, payload, updated_at FROM runs_taskrun WHERE id = %s", [run_id]
            ).fetchone()
        else:
            found = conn.execute(
                "UPDATE runs_taskrun SET status = %s, updated_at = now() WHERE id = %s RETURNING id",
                [statuses[n // 2 % 2], run_id],
            ).fetchone()
        transactions += 1
        return found is not None

    _wait_for_go()
    halt = threading.Event()
    threading.Thread(target=_wait_for_stop, args=(halt,), daemon=True).start()
    ticks_before = process_ticks(backend) or 0
    results = _paced(spec["rate_per_s"], halt, step)
    ticks = (process_ticks(backend) or 0) - ticks_before
    conn.close()
    return {"results": results, "transactions": transactions, "backend_ticks": ticks, "pid": backend}


def _run_http(spec: dict) -> dict:
    parts = urlsplit(spec["url"])
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    body = json.dumps(spec["body"]).encode()

    def step(n: int) -> bool:
        nonlocal conn
        headers = {
            **SDK_HEADERS,
            "Authorization": f"Bearer {spec['key']}",
            "x-trigger-request-idempotency-key": str(uuid.uuid4()),
        }
        try:
            conn.request("POST", spec["path"], body=body, headers=headers)
            response = conn.getresponse()
            response.read()
            return response.status == 200
        except (OSError, http.client.HTTPException):
            conn.close()
            conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
            return False

    print(json.dumps({"pid": None}), flush=True)
    _wait_for_go()
    halt = threading.Event()
    threading.Thread(target=_wait_for_stop, args=(halt,), daemon=True).start()
    return {"results": _paced(spec["rate_per_s"], halt, step)}


def _wait_for_go() -> None:
    for line in sys.stdin:
        if line.strip() == "go":
            return


class Neighbour:
    """One neighbour process, started and waiting for ``go``."""

    def __init__(self, kind: str, spec: dict):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.neighbours", kind, json.dumps(spec)],
            cwd=processes.ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdin is not None and self.process.stdout is not None
        self.pid = json.loads(self.process.stdout.readline())["pid"]

    def go(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write("go\n")
        self.process.stdin.flush()

    def stop(self) -> dict:
        assert self.process.stdin is not None
        self.process.stdin.write("stop\n")
        self.process.stdin.flush()
        output, _ = self.process.communicate(timeout=60)
        return json.loads(output)


if __name__ == "__main__":
    kind, spec = sys.argv[1], json.loads(sys.argv[2])
    json.dump(_run_db(spec) if kind == "db" else _run_http(spec), sys.stdout)
