"""`make bench` (full) / `make bench QUICK=1` (about eight minutes on 2 cores, P8 half of it): figures P1–P10 with their baselines.

Runs the server as `make run` serves it (gunicorn sync workers, one per core, DEBUG off) on this
machine's Postgres and Redis (or the embedded ones), in a database and a Redis DB of its own, with
load generators in separate processes. Writes docs/bench/results[-quick].json and PNG plots, and
prints the targets table.
"""

import json
import os
import platform
import sys
import time

from bench import stores

QUICK = os.environ.get("QUICK") == "1"
# BENCH_ONLY=P2,P5 re-measures those figures only and keeps the others from the last results file.
ONLY = {name.strip().upper() for name in os.environ.get("BENCH_ONLY", "").split(",") if name.strip()}
SIZES = {
    # P8, the adaptive drain (bench/adaptive.py): a backlog per environment, the slowdown's start and end (s).
    "p8_per_env": 20_000 if QUICK else 40_000,
    "p8_slowdown": (5.0, 15.0) if QUICK else (10.0, 30.0),
    "p8_max_s": 80 if QUICK else 150,
    # P1: seconds per mode per round; the modes take turns within each round (median of the rounds).
    "p1_seconds": 3 if QUICK else 10,
    "p1_rounds": 2 if QUICK else 3,
    "p1_concurrency": 16,
    "p2_entries": 30_000 if QUICK else 50_000,  # a round is up to 8,000 rows, and the first is not timed
    "p2_single_rows": 1000 if QUICK else 3000,
    "p2_rounds": 2 if QUICK else 3,  # one drainer, two drainers and COPY take turns in each
    "p3_burst": 3_000 if QUICK else 10_000,
    "p3_concurrency": 32,
    "p3_neighbour_rate": 20,
    "p3_db_neighbour_rate": 50,
    "p3_idle_s": 5 if QUICK else 10,
    "p4_triggers": 200,
    "p5_small": 1_000,
    "p5_large": 20_000 if QUICK else 100_000,
    "p5_redis_entries": 5_000,
    "p6_seconds": 30 if QUICK else 180,
    "p6_concurrency": 16,
    # P7, the buffer on a Redis Cluster (bench/cluster.py): organisations, triggers each, wrk connections each.
    "p7_orgs": 6,
    "p7_per_org": 500 if QUICK else 2_000,
    "p7_connections": 4,
    "p7_backlog": 20_000 if QUICK else 60_000,
    "p7_rounds": 2 if QUICK else 3,
    "p9_seconds": 8 if QUICK else 10,
    "p9_rounds": 1 if QUICK else 5,
    "p9_concurrency": 8,
    "p9_warmup_s": 3,
    "p10_paused_s": 10 if QUICK else 20,
}


def main() -> int:
    started = time.monotonic()

    def say(message: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {message}", flush=True)

    from bench import wrk

    if not wrk.available():  # `make bench` installs it
        print("bench: wrk, the load generator, is missing: `make bench` installs it (apt-get install wrk)")
        return 1
    where = stores.configure()
    import django

    django.setup()
    from django.core.management import call_command

    from bench import adaptive, burst, cluster, measures, postgres_outage, report

    say(
        f"bench {'QUICK' if QUICK else 'full'}: Postgres {where['postgres']}, Redis {where['redis']}, {os.cpu_count()} cores"
    )
    call_command("migrate", verbosity=0)
    tenants = measures.Tenants()
    suffix = "-quick" if QUICK else ""
    previous = report.OUT / f"results{suffix}.json"
    results = json.loads(previous.read_text()) if ONLY and previous.exists() else {}
    results.update(
        machine={
            "cores": os.cpu_count(),
            "usable_cores": len(os.sched_getaffinity(0)),  # what this process may run on (a container's share)
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        quick=QUICK,
        sizes=SIZES,
    )
    p1_latencies = {}
    figures = {
        "P8": lambda: adaptive.p8_adaptive(
            per_env=SIZES["p8_per_env"],
            ceiling=4000,
            target_ms=50,
            slowdown=SIZES["p8_slowdown"],
            max_s=SIZES["p8_max_s"],
            drainers=2,
            competitors=10,
            say=say,
        ),
        "P4": lambda: measures.p4_round_trips(tenants, triggers=SIZES["p4_triggers"], say=say),
        "P2": lambda: measures.p2_drain(
            tenants,
            entries=SIZES["p2_entries"],
            single_rows=SIZES["p2_single_rows"],
            rounds=SIZES["p2_rounds"],
            say=say,
        ),
        "P5": lambda: measures.p5_memory(
            tenants, small=SIZES["p5_small"], large=SIZES["p5_large"], redis_entries=SIZES["p5_redis_entries"], say=say
        ),
        "P1": lambda: measures.p1_throughput(
            tenants,
            seconds=SIZES["p1_seconds"],
            concurrency=SIZES["p1_concurrency"],
            rounds=SIZES["p1_rounds"],
            say=say,
        ),
        "P3": lambda: burst.p3_burst(
            tenants,
            burst=SIZES["p3_burst"],
            concurrency=SIZES["p3_concurrency"],
            neighbour_rate=SIZES["p3_neighbour_rate"],
            db_neighbour_rate=SIZES["p3_db_neighbour_rate"],
            idle_s=SIZES["p3_idle_s"],
            say=say,
        ),
        "P6": lambda: measures.p6_soak(
            tenants, seconds=SIZES["p6_seconds"], concurrency=SIZES["p6_concurrency"], say=say
        ),
        "P7": lambda: cluster.p7_cluster(
            orgs=SIZES["p7_orgs"],
            per_org=SIZES["p7_per_org"],
            connections=SIZES["p7_connections"],
            backlog=SIZES["p7_backlog"],
            rounds=SIZES["p7_rounds"],
            say=say,
        ),
        "P9": lambda: measures.p9_degraded(
            tenants,
            seconds=SIZES["p9_seconds"],
            rounds=SIZES["p9_rounds"],
            concurrency=SIZES["p9_concurrency"],
            warmup_s=SIZES["p9_warmup_s"],
            say=say,
        ),
        "P10": lambda: postgres_outage.p10_postgres_hung(
            healthy_s=5, paused_s=SIZES["p10_paused_s"], after_s=5, concurrency=8, say=say
        ),
    }
    for name, measure in figures.items():
        if ONLY and name not in ONLY:
            continue
        if name == "P1":
            results["P1"], results["P1_latencies"] = measure()
        else:
            results[name] = measure()
        # Kept as each figure ends: a later figure that fails leaves these (BENCH_ONLY resumes).
        previous.write_text(json.dumps({k: v for k, v in results.items() if k != "P1_latencies"}, default=str))
    p1_latencies = results.pop("P1_latencies", {})
    results["seconds"] = round(time.monotonic() - started, 1)
    adaptive_paths = (
        adaptive.write(results["P8"], report.OUT, suffix, machine=results["machine"], sizes=SIZES)
        if "timeline" in results.get("P8", {}).get("adaptive", {})
        else []
    )
    paths = report.write(results, p1_latencies, suffix=suffix) + adaptive_paths
    print()
    if report.targets(results):
        print(report.table(results))
    if "P8" in results:
        print(
            "\n".join(
                f"{'yes' if met else 'NO ':<4} {target}: {measured}"
                for target, measured, met in adaptive.targets(results["P8"])
            )
        )
        print(adaptive.markdown(results["P8"]))
    print()
    say(
        f"wrote docs/bench/results{suffix}.json"
        + "".join(f", {p.relative_to(report.OUT.parent.parent)}" for p in paths)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
