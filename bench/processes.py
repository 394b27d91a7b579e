"""The processes a benchmark phase runs: the server (as `make run` serves), drainers, load generators."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PORT = int(os.environ.get("BENCH_PORT", "8799"))
URL = f"http://127.0.0.1:{PORT}"


def _env(**overrides: str) -> dict:
    return {**os.environ, **overrides}


@contextmanager
def server(*, workers: int | None = None, **env: str):
    """gunicorn sync workers, one per core unless ``workers`` says (a fleet's handlers) or
    BENCH_WEB_WORKERS does (to compare worker counts), DEBUG off, plus the bench's no-op view."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "trigger_project.wsgi",
            "--workers",
            str(workers or os.environ.get("BENCH_WEB_WORKERS") or os.cpu_count() or 2),
            "--bind",
            f"127.0.0.1:{PORT}",
            "--graceful-timeout",
            "5",
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
        env=_env(DJANGO_ROOT_URLCONF="bench.urls", **env),
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{URL}/healthz", timeout=1)
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the bench server did not start")
                time.sleep(0.1)
        yield URL
    finally:
        process.terminate()
        process.wait(timeout=20)


def start_drainer(*args: str, **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "manage.py", "mollifier_drain", "--quiet", *args],
        cwd=ROOT,
        env=_env(**env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def stop(process: subprocess.Popen) -> str:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=60)
    return output


def peak_rss_mb(process: subprocess.Popen) -> float:
    """Wait for ``process`` and return its peak RSS (the kernel's high-water mark, VmHWM, read until
    it exits). Not getrusage: a forked child's ru_maxrss starts at its parent's size."""
    peak_kb = 0
    status = Path(f"/proc/{process.pid}/status")
    while process.poll() is None:
        try:
            for line in status.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak_kb = max(peak_kb, int(line.split()[1]))
        except (FileNotFoundError, ProcessLookupError):
            break
        time.sleep(0.02)
    process.wait()
    return peak_kb / 1024


def start_load(spec: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "bench.load", json.dumps(spec)], cwd=ROOT, env=_env(), stdout=subprocess.PIPE, text=True
    )


def load_results(process: subprocess.Popen) -> list:
    output, _ = process.communicate(timeout=1800)
    return json.loads(output)


def run_load(spec: dict) -> list:
    return load_results(start_load(spec))
