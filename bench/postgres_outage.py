"""P10: triggers while Postgres hangs (SIGSTOP), with the web tier's Postgres breaker off and on.

A Postgres of the bench's own (pgserver, so the machine's is never frozen), every timeout at its
production default (``DB_CONNECT_TIMEOUT`` 5 s, ``DB_ANSWER_TIMEOUT_MS`` 12 s), the server as `make
run` serves it. An enrolled organisation that never trips by its rate sends SDK-shaped triggers from
wrk (healthy, every one passes through to Postgres); after ``healthy_s`` Postgres is paused for ``paused_s``,
then resumed. Beside the load, one client asks ``/healthz`` every 200 ms. Afterwards a drainer writes
what was buffered, and every answered run is counted in Postgres.
"""

import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import psycopg

from bench import processes, wrk
from bench.measures import BODY, percentile, reset_stores

MODES = {"breaker_off": "0", "breaker_on": "1"}


def p10_postgres_hung(*, healthy_s: float, paused_s: float, after_s: float, concurrency: int, say) -> dict:
    from tests.faults import PostgresProcess

    results = {}
    for mode, failures in MODES.items():
        reset_stores()  # the bench's Redis: the drainer below writes all it holds into this Postgres
        with tempfile.TemporaryDirectory(prefix="bench-p10-") as folder:
            pg = PostgresProcess(Path(folder) / "pg")
            try:
                results[mode] = _measure(pg, failures, healthy_s, paused_s, after_s, concurrency)
            finally:
                pg.cleanup()
        figures = results[mode]
        say(
            f"P10 {mode:<11} paused {paused_s:g} s: {figures['paused']['answered_200']:,} answered 200 "
            f"({figures['paused']['buffered']:,} buffered), {figures['paused']['errors']} errors, "
            f"p50 {figures['paused']['p50_ms']:.0f} ms p99 {figures['paused']['p99_ms']:.0f} ms; healthz max "
            f"{figures['healthz_paused_max_ms']:.0f} ms; rows = answered: {figures['exactly_once']}"
        )
    return {"healthy_s": healthy_s, "paused_s": paused_s, "concurrency": concurrency, **results}


def _measure(pg, failures: str, healthy_s: float, paused_s: float, after_s: float, concurrency: int) -> dict:
    env = {
        "DATABASE_URL": pg.url,
        "MOLLIFIER_ENABLED": "1",
        "MOLLIFIER_TRIP_THRESHOLD": "1000000",  # never tripped by its rate: healthy, every trigger is a row
        "DB_BREAKER_FAILURES": failures,
    }

    def manage(*args: str) -> str:
        return subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=processes.ROOT,
            env=processes._env(**env),
            capture_output=True,
            text=True,
            check=True,
        ).stdout

    manage("migrate", "--noinput")
    key = manage("create_environment", "--org", "p10", "--project", "p", "--env", "prod").split()[-1]
    manage(
        "shell",
        "-c",
        "from runs.models import Organization as O; o=O.objects.get(slug='p10'); "
        "o.feature_flags={'mollifierEnabled': True}; o.save()",
    )
    health: list[tuple[float, float]] = []  # (seconds from the load's start, latency ms)
    stop = threading.Event()
    with processes.server(**env) as url:
        warm = wrk.run(url, "/api/v1/tasks/bench/trigger", key, seconds=2, connections=concurrency, body=BODY, ids=True)
        started = time.monotonic()

        def healthz() -> None:
            while not stop.is_set():
                begun = time.monotonic()
                try:
                    urllib.request.urlopen(f"{url}/healthz", timeout=60).read()
                except OSError:
                    pass
                health.append((begun - started, (time.monotonic() - begun) * 1000))
                time.sleep(0.2)

        def outage() -> None:
            time.sleep(healthy_s)
            with pg.paused():
                time.sleep(paused_s)

        threads = [threading.Thread(target=healthz, daemon=True), threading.Thread(target=outage)]
        for thread in threads:
            thread.start()
        load = wrk.run(
            url,
            "/api/v1/tasks/bench/trigger",
            key,
            seconds=healthy_s + paused_s + after_s,
            connections=concurrency,
            body=BODY,
            records=True,
            ids=True,
            timeout_s=int(healthy_s + paused_s + after_s + 60),
        )
        threads[1].join()
        stop.set()
        threads[0].join(60)
    drainer = subprocess.run(
        [sys.executable, "manage.py", "mollifier_drain", "--once", "--quiet"],
        cwd=processes.ROOT,
        env=processes._env(**env),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert drainer.returncode == 0, drainer.stdout + drainer.stderr
    with psycopg.connect(pg.url) as conn:
        rows = {f"run_{row[0]}" for row in conn.execute("SELECT id FROM runs_taskrun")}
    # wrk's first request starts a moment after `started`: its clock is close enough for phases.
    phases = {
        "healthy": [r for r in load["records"] if r[0] < healthy_s],
        "paused": [r for r in load["records"] if healthy_s <= r[0] < healthy_s + paused_s],
        "after": [r for r in load["records"] if r[0] >= healthy_s + paused_s],
    }
    answered = set(load["ids"]) | set(warm["ids"])
    return {
        **{
            name: _summary(records, seconds)
            for (name, records), seconds in zip(phases.items(), (healthy_s, paused_s, after_s), strict=True)
        },
        "healthz_paused_p50_ms": round(
            statistics.median([ms for at, ms in health if healthy_s <= at < healthy_s + paused_s] or [0]), 1
        ),
        "healthz_paused_max_ms": round(
            max([ms for at, ms in health if healthy_s <= at < healthy_s + paused_s] or [0]), 1
        ),
        "answered": len(answered),
        "rows": len(rows),
        # A 503 whose statement reached the frozen server may still commit when it resumes.
        "exactly_once": answered <= rows and len(rows) <= len(answered) + load["non_2xx"] + warm["non_2xx"],
        "generator_cpu_share": load["generator_cpu_share"],
    }


def _summary(records: list, seconds: float) -> dict:
    latencies = [r[1] for r in records]
    return {
        "requests": len(records),
        "answered_200": sum(1 for r in records if r[2] == 200),
        "buffered": sum(1 for r in records if r[4]),
        "errors": sum(1 for r in records if r[2] != 200),
        "answered_per_s": round(sum(1 for r in records if r[2] == 200) / seconds, 1) if seconds else 0,
        "p50_ms": round(percentile(latencies, 50), 1) if latencies else 0,
        "p99_ms": round(percentile(latencies, 99), 1) if latencies else 0,
        "max_ms": round(max(latencies, default=0), 1),
    }


def targets(p10: dict) -> list[tuple[str, str, bool]]:
    on, off = p10["breaker_on"], p10["breaker_off"]
    paused, healthy = on["paused"], on["healthy"]
    return [
        (
            "P10 Postgres hung, breaker on: >= 99% of an enrolled tenant's triggers answered 200 (buffered)",
            f"{paused['answered_200']:,} of {paused['requests']:,} (off: {off['paused']['answered_200']:,} "
            f"of {off['paused']['requests']:,})",
            paused["requests"] > 0 and paused["answered_200"] >= 0.99 * paused["requests"],
        ),
        (
            "P10 Postgres hung, breaker on: trigger p50 <= 2 x healthy",
            f"{paused['p50_ms']:.1f} vs {healthy['p50_ms']:.1f} ms (off: {off['paused']['p50_ms']:,.0f} ms)",
            paused["p50_ms"] <= 2 * healthy["p50_ms"],
        ),
        (
            "P10 Postgres hung, breaker on: /healthz p50 <= 50 ms",
            f"{on['healthz_paused_p50_ms']:.1f} ms (off: {off['healthz_paused_p50_ms']:,.0f} ms)",
            on["healthz_paused_p50_ms"] <= 50,
        ),
        (
            "P10 every answered run written once (both modes)",
            f"on {on['rows']:,} rows for {on['answered']:,} answered, off {off['rows']:,} for {off['answered']:,}",
            on["exactly_once"] and off["exactly_once"],
        ),
    ]
