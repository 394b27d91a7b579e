"""The figures P1–P6 and P9 (issues: "Benchmarks", 15), each with its baseline measured in the same run."""

import collections
import statistics
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass

from django.conf import settings
from django.db import connection

from bench import pgprobe, processes, wrk
from bench.stores import BENCH_REDIS_DB
from mollifier import buffer
from mollifier.client import get as redis_client
from mollifier.codec import snapshot_text
from runs.models import TaskRun
from runs.services.environments import environment_create, environment_rotate_key
from runs.services.flags import MOLLIFIER_ENABLED, organization_set_flag
from runs.services.materialise import COLUMNS
from tests.buffering import fill_buffer

# A realistic trigger: a superjson payload of ~600 bytes, a few options.
PAYLOAD = {
    "json": {
        "user": "u_12345",
        "order": 987654,
        "items": [{"sku": f"SKU-{i:04d}", "qty": i, "price": 19.99} for i in range(10)],
        "note": "x" * 120,
    }
}
# What SDK 4.8.3 sends for tasks.trigger(task, PAYLOAD["json"], {ttl, tags}): the payload string
# with payloadType and payloadSize first, then the options (bench/wrk.py).
BODY = wrk.sdk_body(PAYLOAD["json"], ttl="10m", tags=["bench"])


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def latency_summary(results: list, wall_s: float | None = None) -> dict:
    latencies = [r[1] for r in results]
    ok = [r for r in results if r[2] == 200]
    span = wall_s or (max(r[0] + r[1] / 1000 for r in results) - min(r[0] for r in results)) if results else 1
    return {
        "requests": len(results),
        "errors": len(results) - len(ok),
        "throughput": round(len(results) / span, 1) if span else 0,
        "p50_ms": round(percentile(latencies, 50), 2),
        "p99_ms": round(percentile(latencies, 99), 2),
        "mean_ms": round(statistics.fmean(latencies), 2) if latencies else 0,
    }


class Tenants:
    """The burst tenant (enrolled or not, per phase) and a neighbour tenant, with fresh keys."""

    def __init__(self):
        self.burst, self.burst_key = self._make("bench-burst")
        self.neighbour, self.neighbour_key = self._make("bench-neighbour")

    @staticmethod
    def _make(slug: str):
        environment, key = environment_create(org_slug=slug, project_slug=slug, env="prod")
        return environment, key or environment_rotate_key(environment=environment)

    def enrol(self, enrolled: bool) -> None:
        organization_set_flag(organization=self.burst.organization, name=MOLLIFIER_ENABLED, enabled=enrolled)


@contextmanager
def storing_rows(on: bool):
    """Buffer runs with MOLLIFIER_STORE_ROWS ``on`` (the trigger side decides; drainers read rows
    either way), then as configured again."""
    configured = settings.MOLLIFIER["STORE_ROWS"]
    settings.MOLLIFIER = {**settings.MOLLIFIER, "STORE_ROWS": on}
    try:
        yield
    finally:
        settings.MOLLIFIER = {**settings.MOLLIFIER, "STORE_ROWS": configured}


def reset_stores() -> None:
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE runs_batchtaskrunitem, runs_taskrun CASCADE")
    redis_client().flushdb()


# -- P1 ------------------------------------------------------------------------------------------

# P1's endpoints, measured in turn within each round: (path, whose key). The pass-through tenant
# (neighbour) is never enrolled and the mollified one (burst) always is, so no mode waits for an
# enrolment to reach the server's auth cache.
P1_MODES = {
    "noop": ("/bench/noop", "burst"),
    "noop_redis": ("/bench/noop-redis", "burst"),
    "pass_through": ("/api/v1/tasks/bench/trigger", "neighbour"),
    "mollified": ("/api/v1/tasks/bench/trigger", "burst"),
}


def _spread(values: list[float]) -> list[float]:
    return [round(min(values), 3), round(max(values), 3)]


def p1_throughput(tenants: Tenants, *, seconds: float, concurrency: int, rounds: int, say) -> tuple[dict, dict]:
    """Trigger throughput and latency, SDK-shaped (wrk): the no-op DRF view, the no-op plus one
    Redis round trip, pass-through and mollified, on the same server; the modes take turns within
    each round, so that a machine whose load drifts treats them alike. Per mode, the median of the
    rounds; the ratios to the no-op, median and min–max over the rounds (each round's own ratio)."""
    samples: dict[str, list[dict]] = {mode: [] for mode in P1_MODES}
    latencies: dict[str, list[float]] = {mode: [] for mode in P1_MODES}
    server_env = {
        "MOLLIFIER_ENABLED": "1",
        "MOLLIFIER_TRIP_THRESHOLD": "1",  # the enrolled tenant is tripped at once: every trigger buffered
        "MOLLIFIER_TRIP_WINDOW_MS": "1000",
        "MOLLIFIER_HOLD_MS": "600000",
        "MOLLIFIER_ORG_BUFFER_CAP": "100000000",
        "MOLLIFIER_ORG_BUFFER_MAX_BYTES": "0",
    }
    reset_stores()
    tenants.enrol(True)
    keys = {"burst": tenants.burst_key, "neighbour": tenants.neighbour_key}
    with processes.server(**server_env) as url:
        for round_no in range(rounds):
            for mode, (path, tenant) in P1_MODES.items():
                load = {"connections": concurrency, "body": BODY}
                wrk.run(url, path, keys[tenant], seconds=1, **load)  # warm connections and caches
                result = wrk.run(url, path, keys[tenant], seconds=seconds, **load)
                samples[mode].append(result)
                latencies[mode] += result["latencies_ms"]
                say(
                    f"P1 round {round_no + 1}/{rounds} {mode:<13} {result['throughput']:>8,.0f} req/s  "
                    f"p50 {result['p50_ms']:.1f} ms  p99 {result['p99_ms']:.1f} ms  buffered {result['buffered']:,}  "
                    f"non-2xx {result['non_2xx']}  wrk CPU {result['generator_cpu_s']:.2f} s "
                    f"({result['generator_cpu_share']:.1%} of the machine)"
                )
    tenants.enrol(False)
    figures: dict = {
        mode: {
            "throughput": round(statistics.median(s["throughput"] for s in runs), 1),
            "throughput_per_round": [s["throughput"] for s in runs],
            "p50_ms": round(percentile(latencies[mode], 50), 2),
            "p99_ms": round(percentile(latencies[mode], 99), 2),
            "errors": sum(s["non_2xx"] + sum(s["socket_errors"].values()) for s in runs),
            "buffered": sum(s["buffered"] for s in runs),
            "requests": sum(s["requests"] for s in runs),
            "generator_cpu_s": round(sum(s["generator_cpu_s"] for s in runs), 2),
            "generator_cpu_share": round(statistics.fmean(s["generator_cpu_share"] for s in runs), 4),
            "generator_cpu_ms_per_request": round(statistics.fmean(s["generator_cpu_ms_per_request"] for s in runs), 4),
        }
        for mode, runs in samples.items()
    }
    noop = figures["noop"]["throughput"]
    for mode in ("noop_redis", "pass_through", "mollified"):
        per_round = [m["throughput"] / n["throughput"] for m, n in zip(samples[mode], samples["noop"])]
        figures[f"ratio_{mode}_to_noop"] = round(figures[mode]["throughput"] / noop, 3)
        figures[f"ratio_{mode}_to_noop_range"] = _spread(per_round)
    figures.update(
        concurrency=concurrency,
        seconds_per_mode_per_round=seconds,
        rounds=rounds,
        generator="wrk",
        generator_cpu_share_max=max(f["generator_cpu_share"] for f in figures.values() if isinstance(f, dict)),
    )
    return figures, latencies


# -- P2 ------------------------------------------------------------------------------------------


def p2_drain(tenants: Tenants, *, entries: int, single_rows: int, rounds: int, say) -> dict:
    """Drain throughput vs psycopg COPY of the same rows vs one row per transaction.

    One drainer, two drainers and COPY take turns within each round, so that a machine whose load
    drifts treats them alike (a single run of each moved by a third from one run to the next). Per
    writer, the median of the rounds; the ratios to COPY, median and min–max over the rounds (each
    round's own ratio); CPU per row, per part, the median of the rounds."""
    environments = [tenants.burst] + [
        environment_create(org_slug=f"bench-drain-{i}", project_slug="p", env="prod")[0] for i in range(9)
    ]
    orgs = sorted({str(environment.organization_id) for environment in environments})
    rates: dict[str, list[float]] = {"one_drainer": [], "two_drainers": [], "one_drainer_no_rows": [], "copy": []}
    cpu: dict[str, list[dict]] = {name: [] for name in rates}
    for round_no in range(rounds):
        # Rows stored at the trigger (MOLLIFIER_STORE_ROWS=1) for the goals; and one drainer without
        # (the default), building each row from its entry.
        for drainers, name, store in (
            (1, "one_drainer", True),
            (2, "two_drainers", True),
            (1, "one_drainer_no_rows", False),
        ):
            reset_stores()
            say(
                f"P2 round {round_no + 1}/{rounds}: filling the buffer with {entries:,} entries in {len(environments)} environments"
            )
            with storing_rows(store):
                for environment in environments:
                    fill_buffer(
                        environment,
                        entries // len(environments),
                        task="bench",
                        payload=BODY["payload"],
                        **BODY["options"],
                    )
            seconds, timed, used = _timed_drain(drainers, entries, orgs=orgs)
            rates[name].append(timed / seconds)
            cpu[name].append(used)
            say(
                f"P2 round {round_no + 1}/{rounds}: {drainers} drainer process(es): {timed:,} rows in {seconds:.2f}s "
                f"({timed / seconds:,.0f} rows/s; the {entries - timed:,} of the first commit not timed)"
            )
        copy_rate, copy_cpu, rows = _copy_rate()
        rates["copy"].append(copy_rate)
        cpu["copy"].append(copy_cpu)
        say(f"P2 round {round_no + 1}/{rounds}: COPY {copy_rate:,.0f} rows/s")
    single_rate = _single_rate(rows[:single_rows])
    say(f"P2 one row per transaction {single_rate:,.0f} rows/s")
    cpu_median = {name: _median_parts(used) for name, used in cpu.items()}
    say(f"P2 CPU per row (µs, median of the rounds): {cpu_median}")
    one, two, copy = (statistics.median(rates[name]) for name in ("one_drainer", "two_drainers", "copy"))
    per_round = {
        name: [rate / copied for rate, copied in zip(rates[name], rates["copy"], strict=True)]
        for name in ("one_drainer", "two_drainers", "one_drainer_no_rows")
    }
    return {
        "entries": len(rows),
        "environments": len(environments),
        "rounds": rounds,
        "drain_rows_per_s": round(one),
        "drain_rows_per_s_two_drainers": round(two),
        "copy_rows_per_s": round(copy),
        "rows_per_s_per_round": {name: [round(rate) for rate in values] for name, values in rates.items()},
        "single_row_tx_rows_per_s": round(single_rate),
        "ratio_drain_to_copy": round(statistics.median(per_round["one_drainer"]), 3),
        "ratio_drain_to_copy_range": _spread(per_round["one_drainer"]),
        "ratio_two_drainers_to_copy": round(statistics.median(per_round["two_drainers"]), 3),
        "ratio_two_drainers_to_copy_range": _spread(per_round["two_drainers"]),
        "store_rows": True,  # the drains above; the one below builds each row from its entry
        "drain_rows_per_s_no_rows": round(statistics.median(rates["one_drainer_no_rows"])),
        "ratio_no_rows_to_copy": round(statistics.median(per_round["one_drainer_no_rows"]), 3),
        "ratio_no_rows_to_copy_range": _spread(per_round["one_drainer_no_rows"]),
        "ratio_drain_to_single": round(one / single_rate, 2),
        # CPU µs per row written, by part (clients: the drainer processes, or the COPY's own process).
        "cpu_us_per_row": cpu_median,
    }


def _median_parts(readings: list[dict]) -> dict:
    """Per part, the median of the rounds' readings (None when a part has no reading: a server elsewhere)."""
    parts = {}
    for part in readings[0]:
        values = [reading[part] for reading in readings if reading[part] is not None]
        parts[part] = round(statistics.median(values), 1) if len(values) == len(readings) else None
    return parts


def _copy_target_rows() -> list[tuple]:
    """The rows the drain wrote, as psycopg COPY takes them (JSON columns wrapped)."""
    from psycopg.types.json import Jsonb

    with connection.cursor() as cursor:
        raw = cursor.cursor
        raw.execute(f"SELECT {COLUMNS} FROM runs_taskrun")
        rows = raw.fetchall()
    json_cols = [
        i
        for i, name in enumerate(c.strip('"') for c in COLUMNS.split(", "))
        if name in ("idempotency_key_options", "error")
    ]
    return [tuple(Jsonb(v) if i in json_cols and v is not None else v for i, v in enumerate(row)) for row in rows]


def _copy_rate() -> tuple[float, dict, list[tuple]]:
    """psycopg COPY of the rows the last drain wrote, into a table like runs_taskrun (same indexes):
    rows/s, CPU µs per row, and the rows."""
    rows = _copy_target_rows()
    with _copy_target() as raw:
        with CpuWindow(None) as window:
            with connection.connection.transaction():
                with raw.copy(f"COPY bench_copy_target ({COLUMNS}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
    return len(rows) / window.seconds, window.per_row_us(len(rows)), rows


def _single_rate(rows: list[tuple]) -> float:
    """One INSERT per transaction, rows/s."""
    placeholders = ", ".join(["%s"] * len(rows[0]))
    with _copy_target() as raw:
        started = time.perf_counter()
        for row in rows:
            with connection.connection.transaction():
                raw.execute(f"INSERT INTO bench_copy_target ({COLUMNS}) VALUES ({placeholders})", row)
        seconds = time.perf_counter() - started
    return len(rows) / seconds


@contextmanager
def _copy_target():
    """A fresh table like runs_taskrun (same indexes), dropped after: the baselines' target. Yields
    the psycopg cursor."""
    with connection.cursor() as cursor:
        raw = cursor.cursor
        raw.execute("DROP TABLE IF EXISTS bench_copy_target")
        raw.execute("CREATE TABLE bench_copy_target (LIKE runs_taskrun INCLUDING ALL)")
        try:
            yield raw
        finally:
            raw.execute("DROP TABLE bench_copy_target")


@dataclass
class CpuWindow:
    """CPU seconds spent over a window by the clients (the processes ``pids``, or this process when
    None), by Redis and by every Postgres process. Read from /proc: a server that runs elsewhere
    gives None."""

    pids: list[int] | None
    started: float = 0.0
    _before: tuple = ()

    def __enter__(self) -> "CpuWindow":
        connection.ensure_connection()  # the postmaster is found through this connection's backend
        self._before = self._read()
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.started
        after = self._read()
        own, redis_ticks, server = self._before
        own_after, redis_after, server_after = after
        tick = pgprobe.TICKS_PER_S
        self.clients_s = (own_after - own) / tick
        self.redis_s = None if redis_ticks is None or redis_after is None else (redis_after - redis_ticks) / tick
        self.postgres_s = None if server is None else server_after.ticks_since(server) / tick

    def _read(self) -> tuple:
        if self.pids is None:
            own = round(time.process_time() * pgprobe.TICKS_PER_S)
        else:  # a process that exits inside the window is a zombie until stopped: /proc still has its ticks
            own = sum(pgprobe.process_ticks(pid) or 0 for pid in self.pids)
        redis_pid = int(redis_client().info("server")["process_id"])
        # A server elsewhere (another host, a container) has a pid that means nothing in this /proc.
        redis_ticks = (
            pgprobe.process_ticks(redis_pid) if pgprobe.command_of(redis_pid).startswith("redis-server") else None
        )
        try:
            postmaster = pgprobe.postmaster_pid(connection.connection)
            server = (
                pgprobe.ServerTicks.read(postmaster) if pgprobe.command_of(postmaster).startswith("postgres") else None
            )
        except RuntimeError:
            server = None
        return own, redis_ticks, server

    def per_row_us(self, rows: int) -> dict:
        parts_s = {"clients": self.clients_s, "redis": self.redis_s, "postgres": self.postgres_s}
        figures = {name: None if value is None else round(value * 1e6 / rows, 1) for name, value in parts_s.items()}
        parts = [value for value in figures.values() if value is not None]
        figures["total"] = round(sum(parts), 1) if len(parts) == len(figures) else None
        return figures


def _timed_drain(drainers: int, rows: int, *, orgs: list[str]) -> tuple[float, int, dict]:
    """The drain with ``drainers`` drainer processes, timed from its first commit to its last ack
    (their start-up, Django's import time, is not the drain's): the seconds, the rows committed in
    that window (all but the first commit's), and the CPU each part spent per row meanwhile (µs:
    the drainers, Redis, Postgres).

    The end is read in Redis (nothing left buffered: every row committed, then acked), not by
    counting rows in Postgres: a count every few ms scanned the growing table and took Postgres CPU
    from the drain it timed."""
    # Not --once: a drainer that exits inside the window takes its Postgres backend with it, and a
    # backend reaped while the window's end is read had its ticks both lost and not yet added to the
    # postmaster's (Postgres CPU came out near zero, or negative). They are stopped once it is read.
    started = [processes.start_drainer(MOLLIFIER_DRAIN_MAX_ROWS_PER_SEC="10000000") for _ in range(drainers)]
    try:  # they do not stop by themselves: also not when this fails
        while not TaskRun.objects.exists():
            if any(process.poll() is not None for process in started):
                raise RuntimeError("P2: a drainer exited before it wrote anything")
            time.sleep(0.005)
        with CpuWindow([process.pid for process in started]) as window:
            untimed = TaskRun.objects.count()  # the commit that opened the window: its rounds were written before
            while buffer.buffered_total(orgs):  # one round trip a poll
                time.sleep(0.005)
    finally:
        for process in started:
            processes.stop(process)
    written = TaskRun.objects.count()
    if written != rows:
        raise RuntimeError(f"P2: {written:,} rows written of {rows:,}")
    timed = rows - untimed
    return window.seconds, timed, window.per_row_us(timed)


# -- P4 ------------------------------------------------------------------------------------------


class CommandCounter:
    """Counts the commands clients send Redis (MONITOR), leaving out those a Lua script runs: each
    counted command is one round trip on the trigger path, where nothing is pipelined. Counted as
    tests/redis_watch.py counts them."""

    MARKER = "bench-counter-end"
    # Connection set-up, and INFO: the memory guard's reading, once a second per process whatever
    # the trigger rate. Neither is a per-trigger round trip.
    IGNORED = ("SELECT", "CLIENT", "HELLO", "INFO")

    def __init__(self):
        self.count = 0
        self.commands: collections.Counter[str] = collections.Counter()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        self._ready.wait(5)

    def _watch(self):
        with redis_client().monitor() as monitor:
            self._ready.set()
            for event in monitor.listen():
                if self.MARKER in event["command"]:
                    return
                # Only our own database: other clients of a shared Redis are not our round trips.
                name = event["command"].split(" ", 1)[0].upper()
                if (
                    event.get("client_type") != "lua"
                    and int(event.get("db", -1)) == BENCH_REDIS_DB
                    and name not in self.IGNORED
                ):
                    self.count += 1
                    self.commands[name] += 1

    def stop(self) -> int:
        redis_client().echo(self.MARKER)
        self._thread.join(10)
        return self.count


# P4's cases: (server settings, whose key, keyed). The burst tenant is enrolled, the neighbour not.
_P4_ON = {"MOLLIFIER_ENABLED": "1", "MOLLIFIER_ORG_BUFFER_CAP": "100000000"}
_P4_UNTRIPPED = {**_P4_ON, "MOLLIFIER_TRIP_THRESHOLD": "10000000"}
_P4_TRIPPED = {**_P4_ON, "MOLLIFIER_TRIP_THRESHOLD": "1", "MOLLIFIER_HOLD_MS": "600000"}
P4_CASES = {
    "mollifier_off": ({"MOLLIFIER_ENABLED": "0"}, "burst", False),
    "not_enrolled": (_P4_UNTRIPPED, "neighbour", False),
    "enrolled_pass_through": (_P4_UNTRIPPED, "burst", False),
    "mollified": (_P4_TRIPPED, "burst", False),
    "keyed_mollified": (_P4_TRIPPED, "burst", True),
}
# Issue 15's goals, SDK-shaped (a request key on every call).
P4_GOALS = {"mollifier_off": 0, "not_enrolled": 0, "enrolled_pass_through": 1, "mollified": 1, "keyed_mollified": 2}


def p4_round_trips(tenants: Tenants, *, triggers: int, say) -> dict:
    """Redis round trips per SDK-shaped trigger (wrk, the SDK's request key on every call; keyed:
    options.idempotencyKey too), on the real server, counted from Redis itself (MONITOR)."""
    reset_stores()
    tenants.enrol(True)
    keys = {"burst": tenants.burst_key, "neighbour": tenants.neighbour_key}
    figures: dict = {"triggers": triggers, "commands": {}, "buffered": {}}
    servers: dict[tuple, list[str]] = {}
    for name, (server_env, _, _) in P4_CASES.items():
        servers.setdefault(tuple(sorted(server_env.items())), []).append(name)
    for server_env, names in servers.items():
        with processes.server(**dict(server_env)) as url:
            for name in names:
                _, tenant, keyed = P4_CASES[name]
                load = {"body": BODY, "keyed": keyed}
                # Both workers: connections opened, scripts loaded, the auth cache filled, the
                # tenant tripped when the case is mollified.
                wrk.run(url, "/api/v1/tasks/bench/trigger", keys[tenant], requests=40, connections=4, **load)
                counter = CommandCounter()
                result = wrk.run(
                    url, "/api/v1/tasks/bench/trigger", keys[tenant], requests=triggers, connections=2, **load
                )
                used = counter.stop()
                if result["statuses"] != {200: triggers}:
                    raise RuntimeError(f"P4 {name}: answers {result['statuses']}")
                figures[name] = round(used / triggers, 2)
                figures["commands"][name] = {command: round(n / triggers, 2) for command, n in counter.commands.items()}
                figures["buffered"][name] = result["buffered"]
                say(
                    f"P4 {name:<22} {figures[name]} Redis round trips per trigger (goal {P4_GOALS[name]}): "
                    f"{figures['commands'][name] or 'none'}, buffered {result['buffered']}/{triggers}"
                )
    tenants.enrol(False)
    return figures


# -- P5 ------------------------------------------------------------------------------------------


def p5_memory(tenants: Tenants, *, small: int, large: int, redis_entries: int, say) -> dict:
    figures = {}
    for size in (small, large):
        reset_stores()
        say(f"P5 filling {size:,} entries, then draining them in a fresh drainer process")
        fill_buffer(tenants.burst, size, task="bench", payload=BODY["payload"], **BODY["options"])
        drainer = processes.start_drainer("--once", MOLLIFIER_DRAIN_MAX_ROWS_PER_SEC="10000000")
        figures[f"drainer_peak_rss_mb_{size}"] = round(processes.peak_rss_mb(drainer), 1)
        assert TaskRun.objects.count() == size, "the drainer did not drain everything"
        say(f"P5 drainer peak RSS draining {size:,}: {figures[f'drainer_peak_rss_mb_{size}']} MB")
    figures["ratio_rss_large_to_small"] = round(
        figures[f"drainer_peak_rss_mb_{large}"] / figures[f"drainer_peak_rss_mb_{small}"], 3
    )

    reset_stores()
    redis = redis_client()
    before = int(redis.info("memory")["used_memory"])
    run_ids = fill_buffer(tenants.burst, redis_entries, task="bench", payload=BODY["payload"], **BODY["options"])
    after = int(redis.info("memory")["used_memory"])
    sample = buffer.get_many(org_id=str(tenants.burst.organization_id), run_ids=run_ids[:200])
    snapshot_bytes = statistics.fmean(len(snapshot_text(entry.snapshot).encode()) for entry in sample)
    per_entry = (after - before) / redis_entries
    reset_stores()  # the same entries with their rows stored (MOLLIFIER_STORE_ROWS=1), for the trade-off
    with storing_rows(True):
        before = int(redis.info("memory")["used_memory"])
        fill_buffer(tenants.burst, redis_entries, task="bench", payload=BODY["payload"], **BODY["options"])
        with_rows = (int(redis.info("memory")["used_memory"]) - before) / redis_entries
    figures.update(
        redis_entries=redis_entries,
        redis_bytes_per_entry=round(per_entry),
        snapshot_bytes=round(snapshot_bytes),
        ratio_entry_to_snapshot=round(per_entry / snapshot_bytes, 3),
        redis_bytes_per_entry_stored_rows=round(with_rows),
        ratio_entry_to_snapshot_stored_rows=round(with_rows / snapshot_bytes, 3),
    )
    say(
        f"P5 Redis: {per_entry:,.0f} bytes per entry for a {snapshot_bytes:,.0f}-byte snapshot ({per_entry / snapshot_bytes:.2f}x)"
    )
    return figures


# -- sampling (P6) -------------------------------------------------------------------------------


class Monitor(threading.Thread):
    """Samples rows in Postgres, active Postgres connections and the buffer depth every 100 ms."""

    def __init__(self, org_id: str):
        super().__init__(daemon=True)
        self.org_id = org_id
        self.samples: list[tuple[float, int, int, int]] = []
        self.halt = threading.Event()
        self.started = time.perf_counter()

    def run(self):
        import psycopg

        db = settings.DATABASES["default"]
        conn = psycopg.connect(
            dbname=db["NAME"],
            user=db["USER"],
            password=db["PASSWORD"] or None,
            host=db["HOST"] or None,
            port=db["PORT"] or None,
            autocommit=True,
        )
        while not self.halt.is_set():
            rows = conn.execute("SELECT count(*) FROM runs_taskrun").fetchone()[0]
            active = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND state = 'active' "
                "AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
            ).fetchone()[0]
            depth = buffer.buffered_count(self.org_id)
            self.samples.append((round(time.perf_counter() - self.started, 2), rows, active, depth))
            self.halt.wait(0.1)
        conn.close()


# -- P6 (soak) -----------------------------------------------------------------------------------


def p6_soak(tenants: Tenants, *, seconds: int, concurrency: int, say) -> dict:
    """Sustained over-threshold triggers with two drainers running: errors, buffer depth, Redis
    memory over time, and every answered run written exactly once."""
    reset_stores()
    tenants.enrol(True)
    redis = redis_client()
    base_memory = int(redis.info("memory")["used_memory"])
    server_env = {"MOLLIFIER_ENABLED": "1", "MOLLIFIER_TRIP_THRESHOLD": "20", "MOLLIFIER_ORG_BUFFER_CAP": "100000"}
    drain_env = {"MOLLIFIER_DRAIN_MAX_ROWS_PER_SEC": "2000"}
    memory: list[tuple[float, int]] = []
    with processes.server(**server_env) as url:
        drainers = [processes.start_drainer(**drain_env) for _ in range(2)]
        monitor = Monitor(str(tenants.burst.organization_id))
        monitor.start()
        started = time.perf_counter()
        done = threading.Event()

        def sample():  # wrk runs in this thread; memory and progress are read in another
            while not done.wait(5):
                memory.append(
                    (round(time.perf_counter() - started, 1), int(redis.info("memory")["used_memory"]) - base_memory)
                )
                latest = monitor.samples[-1] if monitor.samples else (0, 0, 0, 0)
                say(
                    f"P6 soak {time.perf_counter() - started:5.0f}/{seconds}s  waiting {latest[3]:,}  rows {latest[1]:,}"
                )

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        result = wrk.run(
            url,
            "/api/v1/tasks/soak/trigger",
            tenants.burst_key,
            seconds=seconds,
            connections=concurrency,
            body=BODY,
            ids=True,
        )
        done.set()
        sampler.join()
        answered = set(result["ids"])  # the run ids of the 200 answers
        deadline = time.perf_counter() + 120
        while (
            TaskRun.objects.filter(environment=tenants.burst).count() < len(answered) and time.perf_counter() < deadline
        ):
            time.sleep(0.2)
        monitor.halt.set()
        monitor.join()
        for drainer in drainers:
            processes.stop(drainer)
    ids = set(TaskRun.objects.filter(environment=tenants.burst).values_list("id", flat=True))
    tenants.enrol(False)
    figures = {
        "seconds": seconds,
        "requests": result["requests"],
        "errors": result["non_2xx"] + sum(result["socket_errors"].values()),
        "throughput": result["throughput"],
        "p50_ms": result["p50_ms"],
        "p99_ms": result["p99_ms"],
        "buffered": result["buffered"],
        "max_buffer_depth": max(s[3] for s in monitor.samples),
        "max_redis_bytes_over_baseline": max((m for _, m in memory), default=0),
        "exactly_once": ids == {run_id.removeprefix("run_") for run_id in answered}
        and len(answered) == result["statuses"].get(200, 0),
        "rows": len(ids),
        "generator": "wrk",
        "generator_cpu_s": result["generator_cpu_s"],
        "generator_cpu_share": result["generator_cpu_share"],
        "memory": memory,
        "depth": [(s[0], s[3]) for s in monitor.samples],
    }
    say(
        f"P6 soak: {figures['requests']:,} triggers, {figures['errors']} errors, max depth {figures['max_buffer_depth']:,}, "
        f"max Redis +{figures['max_redis_bytes_over_baseline'] / 1e6:.1f} MB, exactly once: {figures['exactly_once']}; "
        f"wrk CPU {figures['generator_cpu_s']:.1f} s ({figures['generator_cpu_share']:.1%} of the machine)"
    )
    return figures


# -- P9 (degraded modes) -------------------------------------------------------------------------


def _steady(rounds: list[list], warmup_s: float) -> dict:
    """Latency and throughput of the requests that started after ``warmup_s`` of their round (the
    breakers have decided by then), and how many of the first ones were slow."""
    results = [r for results in rounds for r in results]
    steady = [r for r in results if r[0] >= warmup_s]
    first = [r for r in results if r[0] < warmup_s]
    span = sum(
        max((r[0] + r[1] / 1000 for r in results if r[0] >= warmup_s), default=warmup_s) - warmup_s
        for results in rounds
    )
    whole = latency_summary(results)
    return {
        "requests": len(results),
        "errors": whole["errors"],
        "buffered": sum(1 for r in results if r[4]),
        "p50_ms": round(percentile([r[1] for r in steady], 50), 2),
        "p99_ms": round(percentile([r[1] for r in steady], 99), 2),
        "throughput": round(len(steady) / span, 1) if span else 0,
        "all_p50_ms": whole["p50_ms"],
        "all_p99_ms": whole["p99_ms"],
        "first_seconds_over_250ms": sum(1 for r in first if r[1] > 250),
        "max_ms": round(max((r[1] for r in results), default=0), 1),
    }


def p9_degraded(tenants: Tenants, *, seconds: float, rounds: int, concurrency: int, warmup_s: float, say) -> dict:
    """Triggers (SDK-shaped from wrk, a fresh request idempotency key each) with the buffer's Redis healthy,
    refused (killed) and hung (SIGSTOP), the mollifier on and the tenant enrolled and tripped, as
    ratios to pass-through with Redis healthy (a tenant that is not enrolled, same server). The
    modes take turns, ``rounds`` times, so that a machine whose load drifts treats them alike."""
    from tests.faults import RedisProcess  # a redis-server of the bench's own, to kill and pause

    reset_stores()
    tenants.enrol(True)
    store = RedisProcess("--appendfsync", "everysec")  # production's setting (README: Redis in production)
    store.start()
    server_env = {
        "REDIS_URL": store.url,
        "MOLLIFIER_ENABLED": "1",
        "MOLLIFIER_TRIP_THRESHOLD": "1",  # the enrolled tenant is tripped: healthy, it is buffered
        "MOLLIFIER_TRIP_WINDOW_MS": "1000",
        "MOLLIFIER_HOLD_MS": "600000",
        "MOLLIFIER_ORG_BUFFER_CAP": "100000000",
        "MOLLIFIER_ORG_BUFFER_MAX_BYTES": "0",
    }
    modes = ("healthy_pass_through", "healthy_mollified", "refused", "hung")
    runs: dict[str, list] = {mode: [] for mode in modes}
    cpu_shares: dict[str, list[float]] = {mode: [] for mode in modes}
    recovery: dict[str, list[float]] = {"refused": [], "hung": []}

    def load(key: str, duration_s: float) -> dict:
        """SDK-shaped triggers from wrk, each request's (start s, latency ms, status, "", buffered?)."""
        return wrk.run(
            url,
            "/api/v1/tasks/bench/trigger",
            key,
            seconds=duration_s,
            connections=concurrency,
            body=BODY,
            records=True,
        )

    def measure(mode: str, key: str) -> None:
        result = load(key, seconds)
        runs[mode].append(result["records"])
        cpu_shares[mode].append(result["generator_cpu_share"])
        p = _steady(runs[mode][-1:], warmup_s)
        say(
            f"P9 {mode:<22} p50 {p['p50_ms']:.1f} ms  p99 {p['p99_ms']:.1f} ms  {p['throughput']:,.0f} req/s "
            f"(after {warmup_s:g} s)  buffered {p['buffered']:,}  errors {p['errors']}  slow first {p['first_seconds_over_250ms']}  "
            f"wrk CPU {result['generator_cpu_share']:.1%} of the machine"
        )

    def seconds_until_buffered() -> float:
        buffered = [r[0] for r in load(tenants.burst_key, 6)["records"] if r[4]]
        return round(min(buffered), 2) if buffered else float("inf")

    try:
        with processes.server(**server_env) as url:
            for key in (tenants.neighbour_key, tenants.burst_key):  # warm up connections and caches
                load(key, 2)
            for round_no in range(rounds):
                say(f"P9 round {round_no + 1}/{rounds}")
                measure("healthy_pass_through", tenants.neighbour_key)
                measure("healthy_mollified", tenants.burst_key)
                store.kill()
                measure("refused", tenants.burst_key)
                store.start()  # same folder: the AOF brings the buffer back
                recovery["refused"].append(seconds_until_buffered())
                with store.paused():
                    measure("hung", tenants.burst_key)
                recovery["hung"].append(seconds_until_buffered())
                say(
                    f"P9 buffered again {recovery['refused'][-1]} s after a restart, {recovery['hung'][-1]} s after SIGCONT"
                )
    finally:
        store.cleanup()
        tenants.enrol(False)
    phases = {mode: _steady(runs[mode], warmup_s) for mode in modes}
    for mode, seconds_list in recovery.items():
        phases[mode]["seconds_until_buffered_again"] = max(seconds_list)
    for mode, shares in cpu_shares.items():
        phases[mode]["generator_cpu_share"] = round(statistics.fmean(shares), 4)
    base = phases["healthy_pass_through"]
    for figures in phases.values():
        figures["ratio_p50"] = round(figures["p50_ms"] / base["p50_ms"], 2) if base["p50_ms"] else 0
        figures["ratio_p99"] = round(figures["p99_ms"] / base["p99_ms"], 2) if base["p99_ms"] else 0
        figures["ratio_throughput"] = round(figures["throughput"] / base["throughput"], 2) if base["throughput"] else 0
    return {
        **phases,
        "seconds_per_mode_per_round": seconds,
        "rounds": rounds,
        "warmup_s": warmup_s,
        "concurrency": concurrency,
        "series": {mode: [(r[0], r[1]) for r in runs[mode][-1]] for mode in modes},  # the last round, plotted
    }
