"""SDK-shaped load from `wrk` (Debian's package), a compiled generator that leaves the CPU to the
server it measures: ``run(url, path, key, connections=16, seconds=10)`` or ``requests=5000``.

Every request is what SDK 4.8.3 sends for ``tasks.trigger`` (/work/shared/API.md §2 and §4; the
capture in reference/sdk-wire-capture-4.8.3.jsonl): its headers in its wire order, a fresh
``x-trigger-request-idempotency-key`` per request, and its body shape, a superjson payload string
with ``payloadType`` and ``payloadSize``; with ``keyed=True`` also a fresh ``idempotencyKey`` (and
its ``idempotencyKeyOptions``) per request. bench/sdk.lua fills those per request; this module
writes the request template, runs wrk, and reads the summary sdk.lua prints.

Each figure comes with the generator's own CPU-seconds (the wrk process's rusage), so that a reader
sees what the generator took from the machine beside what the server did with the rest.
"""

import json
import math
import os
import resource
import secrets
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

from bench.load import SDK_HEADERS

SCRIPT = Path(__file__).resolve().parent / "sdk.lua"
REQUEST_KEY = "{request_key}"  # sdk.lua's slots, and the length of what it puts there
IDEMPOTENCY_KEY = "{idempotency_key}"
SLOT_LENGTHS = {REQUEST_KEY: 36, IDEMPOTENCY_KEY: 64}
THREAD_DONE = b"sdk.lua: thread done\n"
SUMMARY = "sdk.lua summary: "


class WrkMissing(RuntimeError):
    """wrk is not installed: `make bench` installs it (apt-get install wrk)."""


def available() -> bool:
    return shutil.which("wrk") is not None


def sdk_body(value: object, **options: object) -> dict:
    """The body ``tasks.trigger(task, value, options)`` sends: the payload serialised by superjson
    (a plain JSON value needs no ``meta``), its type and UTF-8 size, then the other options."""
    payload = json.dumps({"json": value}, separators=(",", ":"), ensure_ascii=False)
    return {
        "payload": payload,
        "options": {"payloadType": "application/super+json", "payloadSize": len(payload.encode()), **options},
    }


def request_template(url: str, path: str, key: str, body: dict, *, keyed: bool) -> bytes:
    """One HTTP request as the SDK writes it, with sdk.lua's slots for the per-request keys."""
    if keyed:
        options = body.get("options", {})
        # The SDK sends the sha256 of the user's key as idempotencyKey and the key itself in
        # idempotencyKeyOptions; a fresh 64-hex value per request stands for both.
        body = {
            **body,
            "options": {
                **options,
                "idempotencyKey": IDEMPOTENCY_KEY,
                "idempotencyKeyOptions": {"key": IDEMPOTENCY_KEY, "scope": "run"},
            },
        }
    text = json.dumps(body, separators=(",", ":"), ensure_ascii=False)
    length = len(text.encode())
    for slot, filled in SLOT_LENGTHS.items():
        length += text.count(slot) * (filled - len(slot))
    parts = urlsplit(url)
    headers = [
        ("host", parts.netloc),
        ("connection", "keep-alive"),
        ("Authorization", f"Bearer {key}"),
    ]
    for name, value in SDK_HEADERS.items():
        headers.append((name, value))
        if name == "x-trigger-source":  # where the SDK puts it (the capture's order)
            headers.append(("x-trigger-request-idempotency-key", REQUEST_KEY))
    headers.append(("content-length", str(length)))
    head = f"POST {path} HTTP/1.1\r\n" + "".join(f"{name}: {value}\r\n" for name, value in headers)
    return (head + "\r\n" + text).encode()


def run(
    url: str,
    path: str,
    key: str,
    *,
    connections: int,
    seconds: float | None = None,
    requests: int | None = None,
    keyed: bool = False,
    body: dict,
    ids: bool = False,
    records: bool = False,
    timeout_s: int = 60,
) -> dict:
    """Send SDK-shaped triggers to ``url + path`` on ``connections`` connections (kept alive when
    the server allows; gunicorn's sync workers do not), one wrk thread each, for
    ``seconds`` or until exactly ``requests`` have been answered (a burst). Either way every request
    sent is answered before wrk stops (no run the server made is missing from ``ids``).

    Returns requests, seconds, throughput (req/s), statuses, non_2xx, socket_errors, buffered
    (answers with ``x-mollifier: buffered``), p50/p90/p99/mean/max_ms (each request timed by
    sdk.lua), wrk_p50/p99_ms (wrk's own histogram, which adds samples for coordinated omission),
    latencies_ms, ids (the run ids of 200 answers, with ``ids=True``), records (with
    ``records=True``: per response, as bench/load.py gives them, (seconds from the first request
    to its request, latency ms, status, "", buffered?), in order of the request), and the generator's
    generator_cpu_s, generator_cpu_share (of the whole machine's CPU over the run) and
    generator_cpu_ms_per_request. Raises WrkMissing when wrk is not installed.
    """
    if not available():
        raise WrkMissing("wrk is not installed (apt-get install wrk; `make bench` does it)")
    if (seconds is None) == (requests is None):
        raise ValueError("give seconds or requests, not both")
    if requests is not None:
        if requests < 1:
            raise ValueError("a burst needs at least one request")
        connections = min(connections, requests)
    template = request_template(url, path, key, body, keyed=keyed)
    # Where each wrk thread's last reconnect goes (sdk.lua's response()): the kernel completes the
    # connection, nothing reads it, and it closes when wrk exits.
    with tempfile.TemporaryDirectory(prefix="bench-wrk-") as folder, socket.create_server(("127.0.0.1", 0)) as sink:
        template_path = Path(folder) / "request"
        template_path.write_bytes(template)
        stdout_path = Path(folder) / "stdout"
        # sdk.lua stops each thread after a response, so that the server answered every request
        # it received; this process then interrupts wrk's main thread (SIGINT), which sleeps for
        # its whole --duration. That duration, and the wait here, are only backstops.
        # (A server that never answers: wrk counts a timeout but keeps waiting on that connection.)
        backstop_s = math.ceil(seconds) + timeout_s + 10 if seconds is not None else 3600
        args = [
            "wrk",
            "--threads",
            str(connections),
            "--connections",
            str(connections),
            "--duration",
            f"{backstop_s}s",
            "--timeout",
            f"{timeout_s}s",
            "--script",
            str(SCRIPT),
            url + path,
            "--",
            str(template_path),
            secrets.token_hex(8)[:15],
            # Each thread's share of a burst: equal, the first (requests % connections) one more.
            f"requests:{requests // connections}:{requests % connections}" if requests else f"seconds:{seconds}",
            "1" if ids else "0",
            str(sink.getsockname()[1]),
            "1" if records else "0",
        ]
        with stdout_path.open("wb") as stdout:
            started = time.perf_counter()
            process = subprocess.Popen(args, stdout=stdout, stderr=subprocess.PIPE)
            assert process.stderr is not None
            seen = _wait(process, threads=connections, backstop_s=backstop_s)
            status, usage = _interrupt(process)
            process.returncode = os.waitstatus_to_exitcode(status)
            wall_s = time.perf_counter() - started
            stderr = (seen + process.stderr.read()).replace(THREAD_DONE, b"").decode(errors="replace")
        output = stdout_path.read_text()
    summary = next((line for line in output.splitlines() if line.startswith(SUMMARY)), None)
    if process.returncode != 0 or summary is None:
        raise RuntimeError(f"wrk failed (exit {process.returncode}):\n{output}\n{stderr}")
    return _figures(json.loads(summary.removeprefix(SUMMARY)), usage=usage, wall_s=wall_s)


def _wait(process: subprocess.Popen, *, threads: int, backstop_s: float) -> bytes:
    """Read wrk's stderr until its ``threads`` threads said they stopped (or ``backstop_s`` passed:
    a server that never answers); returns what was read."""
    assert process.stderr is not None
    fd = process.stderr.fileno()
    deadline = time.monotonic() + backstop_s
    seen = b""
    while True:
        readable, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not readable:
            break  # the backstop
        chunk = os.read(fd, 65536)
        if not chunk:
            break  # wrk exited on its own: an error, reported by the caller
        seen += chunk
        if seen.count(THREAD_DONE) >= threads:
            break
    return seen


def _interrupt(process: subprocess.Popen) -> tuple[int, "resource.struct_rusage"]:
    """Interrupt wrk's main thread (SIGINT), which then prints its report and sdk.lua's summary, and
    reap it: returns its wait status and its own rusage. Sent again each second: wrk ignores SIGINT
    until its threads are started, and a short burst can be over by then. (os.kill, not
    Popen.send_signal, which polls first and would reap the process, rusage and all.)"""
    while True:
        os.kill(process.pid, signal.SIGINT)  # harmless to a process that exited and waits to be reaped
        deadline = time.monotonic() + 1
        while time.monotonic() < deadline:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                return status, usage
            time.sleep(0.02)


def _percentile(ordered: list[float], q: float) -> float:
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def _figures(summary: dict, *, usage, wall_s: float) -> dict:
    threads = summary["threads"]
    if None in threads:
        raise RuntimeError(f"{threads.count(None)} of wrk's {len(threads)} threads never stopped: the server hung")
    latencies = [latency for thread in threads for latency in thread["latencies_ms"]]
    ordered = sorted(latencies)
    seconds = summary["duration_us"] / 1e6
    statuses: dict[int, int] = {}
    for thread in threads:
        for status, count in thread["statuses"].items():
            statuses[int(status)] = statuses.get(int(status), 0) + count
    starts = [record for thread in threads for record in thread["records"]]
    cpu_s = usage.ru_utime + usage.ru_stime
    requests = summary["requests"]
    wrk_latency = summary["wrk_latency_us"]
    first = min((record[0] for record in starts), default=0.0)
    rows = sorted(
        (round((start - first) / 1000, 4), latency, status, "", bool(buffered))
        for start, status, buffered, latency in starts
    )
    return {
        "requests": requests,
        "seconds": round(seconds, 3),
        "throughput": round(requests / seconds, 1) if seconds else 0.0,
        "statuses": statuses,
        "non_2xx": sum(count for status, count in statuses.items() if not 200 <= status < 300),
        "socket_errors": summary["socket_errors"],
        "buffered": sum(thread["buffered"] for thread in threads),
        "p50_ms": round(_percentile(ordered, 50), 2),
        "p90_ms": round(_percentile(ordered, 90), 2),
        "p99_ms": round(_percentile(ordered, 99), 2),
        "mean_ms": round(sum(latencies) / len(latencies), 2) if latencies else 0.0,
        "max_ms": round(ordered[-1], 2) if ordered else 0.0,
        "wrk_p50_ms": round(wrk_latency["p50"] / 1000, 2),
        "wrk_p99_ms": round(wrk_latency["p99"] / 1000, 2),
        "latencies_ms": latencies,
        "ids": [run_id for thread in threads for run_id in thread["ids"]],
        "records": rows,
        "generator_cpu_s": round(cpu_s, 3),
        "generator_cpu_share": round(cpu_s / (wall_s * (os.cpu_count() or 1)), 4),
        "generator_cpu_ms_per_request": round(cpu_s * 1000 / requests, 4) if requests else 0.0,
    }
