"""P3 (issue 15, item 6): a burst as the database sees it, mollifier off and then on.

The web tier runs as a fleet would, FLEET_WORKERS gunicorn sync workers, so with the mollifier off
the burst can reach Postgres as that many concurrent inserts. For the same SDK-shaped burst, off (the
tenant not enrolled) and on (enrolled, tripped, DRAINERS drainers at a fixed cap), each counted from
before the burst until every answered run is a row: Postgres CPU-seconds and transactions per 1,000
runs, WAL bytes, active connections and lock waits (sampled every 100 ms), and the insert rate
against the cap (bench/pgprobe.py says how each is read). Two neighbours run through every window:
another service reading and updating runs with psycopg, and another tenant triggering over HTTP
(bench/neighbours.py); both run alone first, for their idle latency and for the HTTP neighbour's own
cost, which is taken off the burst's.

Each mode runs on a server of its own, whose workers' connections are opened (a warm-up of the
neighbour tenant) and then left idle until their statistics are flushed before the window opens; the
server and the drainer stop before it closes, so their backends exit and flush theirs.
"""

import statistics
import time
from urllib.parse import urlsplit, urlunsplit

from django.conf import settings
from django.db import connection
from django.utils import timezone

from bench import pgprobe, processes, wrk
from bench.measures import BODY, Tenants, percentile, reset_stores
from bench.neighbours import Neighbour
from mollifier import buffer
from runs.api.serializers import trigger_options_from
from runs.models import TaskRun
from runs.services.trigger import task_run_trigger

FLEET_WORKERS = 8
DRAINERS = 1
NEIGHBOUR_RUNS = 300  # the runs the database neighbour reads and updates
# The burst's tenant, enrolled, is tripped from its first trigger and stays tripped (as P1 and P9 trip
# theirs): on these two shared cores eight workers serve one to two hundred triggers/s, so a rate
# trip would come and go with the machine's other load and let part of the burst through.
SERVER_ENV = {
    "MOLLIFIER_ENABLED": "1",
    "MOLLIFIER_ORG_BUFFER_CAP": "10000000",
    "MOLLIFIER_TRIP_THRESHOLD": "1",
    "MOLLIFIER_TRIP_WINDOW_MS": "1000",
    "MOLLIFIER_HOLD_MS": "600000",
}


def _database_url(name: str) -> str:
    db = settings.DATABASES["default"]
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    url = f"postgresql://{db['USER']}{password}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


def _seed_neighbour_runs(tenants: Tenants) -> list[str]:
    """Runs of the neighbour tenant in Postgres, for the database neighbour to read and update."""
    options = trigger_options_from(BODY, now=timezone.now())
    return [
        task_run_trigger(environment=tenants.neighbour, task_identifier="steady", options=options).run.id
        for _ in range(NEIGHBOUR_RUNS)
    ]


def _warm_up(url: str, tenants: Tenants) -> None:
    """Every web worker opens its Postgres connection (a backend's start-up is a transaction of its
    own) and caches the keys, before the window."""
    processes.run_load(
        {
            "url": url,
            "path": "/api/v1/tasks/steady/trigger",
            "key": tenants.neighbour_key,
            "body": BODY,
            "total": 20 * FLEET_WORKERS,
            "concurrency": 2 * FLEET_WORKERS,
            "sdk": True,
        }
    )


def _neighbours(url: str, tenants: Tenants, run_ids: list[str], *, http_rate: float, db_rate: float):
    db = Neighbour(
        "db", {"dsn": _database_url(settings.DATABASES["default"]["NAME"]), "run_ids": run_ids, "rate_per_s": db_rate}
    )
    web = Neighbour(
        "http",
        {
            "url": url,
            "path": "/api/v1/tasks/steady/trigger",
            "key": tenants.neighbour_key,
            "body": BODY,
            "rate_per_s": http_rate,
        },
    )
    return db, web


def _latency(results: list) -> dict:
    latencies = [r[1] for r in results]
    return {
        "count": len(results),
        "errors": sum(1 for r in results if not r[2]),
        "p50_ms": round(percentile(latencies, 50), 2),
        "p99_ms": round(percentile(latencies, 99), 2),
    }


def _insert_rate(environment_id: int) -> list[tuple[float, int]]:
    """The burst's rows written per second, by the time each reached Postgres."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT extract(epoch FROM date_trunc('second', coalesce(materialised_at, created_at))), count(*) "
            "FROM runs_taskrun WHERE environment_id = %s GROUP BY 1 ORDER BY 1",
            [environment_id],
        )
        rows = cursor.fetchall()
    first = float(rows[0][0]) if rows else 0.0
    return [(float(second) - first, int(count)) for second, count in rows]


class _Window:
    """One measured window: the watch, the neighbours, and what their own work was."""

    def __init__(self, url: str, tenants: Tenants, run_ids: list[str], *, http_rate: float, db_rate: float, depth=None):
        _warm_up(url, tenants)
        self.db, self.web = _neighbours(url, tenants, run_ids, http_rate=http_rate, db_rate=db_rate)
        time.sleep(pgprobe.STATS_SETTLE_S)
        name = settings.DATABASES["default"]["NAME"]
        self.watch = pgprobe.Watch(
            admin_url=_database_url("postgres"),
            database_url=_database_url(name),
            database=name,
            rows_sql=f"SELECT count(*) FROM runs_taskrun WHERE environment_id = {int(tenants.burst.pk)}",
            exclude={self.db.pid},
            depth=depth,
        )
        self.watch.open_window()
        self.db.go()
        self.web.go()

    def stop_neighbours(self) -> None:
        self.db_results = self.db.stop()
        self.web_results = self.web.stop()
        self.backends_cpu_s = self.watch.stop_sampling()

    def close(self) -> dict:
        """After the server and drainers have stopped: the window's figures, the neighbours' own
        transactions (the database neighbour's, counted) taken off."""
        figures = self.watch.close_window(exclude_ticks=self.db_results["backend_ticks"])
        figures["timeline"] = [(s.t, s.rows, s.active, s.depth) for s in figures.pop("samples_list")]
        figures["backends_cpu_s"] = round(self.backends_cpu_s, 3)
        figures["db_neighbour_transactions"] = self.db_results["transactions"]
        figures["http_neighbour_requests"] = len(self.web_results["results"])
        figures["transactions"] = (
            figures["xact_commit"] - figures["own_transactions"] - figures["db_neighbour_transactions"]
        )
        figures.update(self.watch.connections())
        figures["db_neighbour"] = _latency(self.db_results["results"])
        figures["http_neighbour"] = _latency(self.web_results["results"])
        return figures


def _idle(
    url_env: dict, tenants: Tenants, run_ids: list[str], *, seconds: float, http_rate: float, db_rate: float
) -> dict:
    """The neighbours alone: their latency, and what one HTTP neighbour trigger costs Postgres."""
    connection.close()  # this process's backend exits, and flushes its statistics, before the window
    with processes.server(workers=FLEET_WORKERS, **url_env) as url:
        window = _Window(url, tenants, run_ids, http_rate=http_rate, db_rate=db_rate)
        time.sleep(seconds)
        window.stop_neighbours()
    figures = window.close()
    del figures["timeline"]
    requests = max(1, figures["http_neighbour_requests"])
    figures["per_http_request"] = {
        "transactions": figures["transactions"] / requests,
        "backends_cpu_s": figures["backends_cpu_s"] / requests,
        "server_cpu_s": figures["server_cpu_s"] / requests,
    }
    # Both neighbours write (runs, status updates) at steady rates: their WAL per second of window.
    wal = figures["database_wal_bytes"]
    figures["neighbours_wal_bytes_per_s"] = wal / figures["seconds"] if wal is not None else None
    return figures


def p3_burst(
    tenants: Tenants,
    *,
    burst: int,
    concurrency: int,
    neighbour_rate: float,
    db_neighbour_rate: float,
    idle_s: float,
    say,
    cap: int | None = None,
) -> dict:
    """The same burst with the mollifier off, then on; see the module's docstring."""
    reset_stores()
    tenants.enrol(False)
    run_ids = _seed_neighbour_runs(tenants)
    rates = {"http_rate": neighbour_rate, "db_rate": db_neighbour_rate}
    idle = _idle(SERVER_ENV, tenants, run_ids, seconds=idle_s, **rates)
    per_request = idle["per_http_request"]
    say(
        f"P3 neighbours alone: database p50 {idle['db_neighbour']['p50_ms']} ms p99 {idle['db_neighbour']['p99_ms']} ms, "
        f"HTTP p50 {idle['http_neighbour']['p50_ms']} ms p99 {idle['http_neighbour']['p99_ms']} ms; "
        f"an HTTP neighbour trigger costs {per_request['transactions']:.2f} transactions"
    )
    phases: dict = {"idle": idle, "workers": FLEET_WORKERS, "drainers": DRAINERS}
    burst_org = str(tenants.burst.organization_id)
    for mode in ("off", "on"):
        with connection.cursor() as cursor:  # the burst's rows of the last mode; the neighbour's stay
            cursor.execute("DELETE FROM runs_taskrun WHERE environment_id = %s", [tenants.burst.pk])
            cursor.execute("VACUUM ANALYZE runs_taskrun")  # no dead rows for autovacuum to visit in the window
        _flush_buffer_store()
        tenants.enrol(mode == "on")
        connection.close()
        drainers = []
        with processes.server(workers=FLEET_WORKERS, **SERVER_ENV) as url:
            if mode == "on":
                cap = cap or max(100, int(round(phases["off"]["mean_insert_rate"] * 0.5, -1)))
                drainers = [
                    processes.start_drainer(
                        MOLLIFIER_DRAIN_MAX_ROWS_PER_SEC=str(cap), MOLLIFIER_DRAIN_RATE_MODE="fixed"
                    )
                    for _ in range(DRAINERS)
                ]
            window = _Window(url, tenants, run_ids, depth=lambda: buffer.buffered_count(burst_org), **rates)
            say(f"P3 {mode}: window open; a burst of {burst:,} at concurrency {concurrency}")
            started = time.perf_counter()
            sent = wrk.run(
                url,
                "/api/v1/tasks/burst/trigger",
                tenants.burst_key,
                connections=concurrency,
                requests=burst,
                body=BODY,
                ids=True,
            )
            burst_s = sent["seconds"]
            answered = set(sent["ids"])
            say(f"P3 {mode}: answered in {burst_s:.1f}s; waiting until every run is a row")
            while window.watch.rows < len(answered):
                for drainer in drainers:
                    if drainer.poll() is not None:
                        raise RuntimeError(f"the drainer exited: {processes.stop(drainer)}")
                time.sleep(0.1)
            materialised_s = time.perf_counter() - started
            window.stop_neighbours()
            for drainer in drainers:
                processes.stop(drainer)
        db = window.close()
        phases[mode] = _mode_figures(
            tenants,
            db,
            sent,
            answered,
            per_request,
            burst=burst,
            materialised_s=materialised_s,
            neighbours_per_s=idle["neighbours_wal_bytes_per_s"],
        )
        if mode == "on":
            with connection.cursor() as cursor:  # a round's rows share its materialised_at
                cursor.execute(
                    "SELECT count(DISTINCT materialised_at), count(materialised_at) FROM runs_taskrun "
                    "WHERE environment_id = %s",
                    [tenants.burst.pk],
                )
                rounds, drained_rows = cursor.fetchone()
            phases[mode]["drain_rounds"] = rounds
            phases[mode]["rows_per_drain_round"] = round(drained_rows / max(1, rounds), 1)
            drained = [count for _, count in phases[mode]["insert_rate"][1:-1]] or [
                count for _, count in phases[mode]["insert_rate"]
            ]
            phases[mode]["drain_cap"] = cap
            phases[mode]["max_drained_per_second"] = max(drained, default=0)
        say(_line(mode, phases[mode]))
    tenants.enrol(False)
    off, on = phases["off"], phases["on"]
    phases["ratios"] = {
        "cpu_per_run": round(on["pg_cpu_s_per_1000"] / off["pg_cpu_s_per_1000"], 3)
        if off["pg_cpu_s_per_1000"]
        else None,
        "server_cpu_per_run": round(on["server_cpu_s_per_1000"] / off["server_cpu_s_per_1000"], 3)
        if off["server_cpu_s_per_1000"]
        else None,
        "transactions_per_run": round(on["transactions_per_1000"] / off["transactions_per_1000"], 3)
        if off["transactions_per_1000"]
        else None,
        "wal_per_run": round(on["database_wal_bytes_per_run"] / off["database_wal_bytes_per_run"], 3)
        if off.get("database_wal_bytes_per_run") and on.get("database_wal_bytes_per_run") is not None
        else round(on["wal_bytes_per_run"] / off["wal_bytes_per_run"], 3)
        if off["wal_bytes_per_run"]
        else None,
    }
    # The keys the earlier P3 had, which report.py's table and plots read.
    phases["neighbour_idle_p99_ms"] = idle["http_neighbour"]["p99_ms"]
    return phases


def _flush_buffer_store() -> None:
    from mollifier.client import get as redis_client

    redis_client().flushdb()


def _mode_figures(
    tenants: Tenants,
    db: dict,
    sent: dict,
    answered: set,
    per_request: dict,
    *,
    burst: int,
    materialised_s: float,
    neighbours_per_s: float | None,
) -> dict:
    ids = set(TaskRun.objects.filter(environment=tenants.burst).values_list("id", flat=True))
    rates = _insert_rate(tenants.burst.pk)
    requests = db["http_neighbour_requests"]
    runs = max(1, len(ids))
    # What the HTTP neighbour's triggers cost, at the rate measured when it ran alone, is not the burst's.
    transactions = db["transactions"] - requests * per_request["transactions"]
    backends_cpu = db["backends_cpu_s"] - requests * per_request["backends_cpu_s"]
    # Not the server's: in the window alone that one holds other databases' work, which does not
    # scale with the neighbour's requests (the probe's and the database neighbour's are taken off).
    server_cpu = db["server_cpu_s"]
    timeline = db.pop("timeline")
    return {
        "database": db,
        "burst": {
            "requests": sent["requests"],
            "errors": sent["non_2xx"] + sum(sent["socket_errors"].values()),
            "throughput": sent["throughput"],
            "p50_ms": sent["p50_ms"],
            "p99_ms": sent["p99_ms"],
            "mean_ms": sent["mean_ms"],
        },
        "buffered": sent["buffered"],
        "generator_cpu_s": sent["generator_cpu_s"],
        "generator_cpu_share": sent["generator_cpu_share"],
        "rows": len(ids),
        "exactly_once": ids == {run_id.removeprefix("run_") for run_id in answered}
        and len(ids) == len(answered) == burst,
        "seconds_until_all_materialised": round(materialised_s, 2),
        "pg_cpu_s": round(backends_cpu, 3),
        "pg_cpu_s_per_1000": round(backends_cpu / runs * 1000, 3),
        "server_cpu_s": round(server_cpu, 3),
        "server_cpu_s_per_1000": round(server_cpu / runs * 1000, 3),
        "transactions": round(transactions),
        "transactions_per_1000": round(transactions / runs * 1000, 1),
        "wal_bytes": db["wal_bytes"],
        "wal_bytes_per_run": round(db["wal_bytes"] / runs),
        **_database_wal(db, neighbours_per_s, runs),
        "max_active_pg_connections": db["max_active"],
        "mean_active_pg_connections": db["mean_active"],
        "lock_wait_samples": db["lock_wait_samples"],
        "max_lock_waits": db["max_lock_waits"],
        "max_not_granted": db["max_not_granted"],
        "max_insert_rate": max((count for _, count in rates), default=0),
        "mean_insert_rate": round(statistics.fmean(count for _, count in rates[1:-1] or rates), 1) if rates else 0,
        "insert_rate": rates,
        "timeline": timeline,
        "db_neighbour": db["db_neighbour"],
        "http_neighbour": db["http_neighbour"],
        "neighbour_p99_ms": db["http_neighbour"]["p99_ms"],
        "neighbour_errors": db["http_neighbour"]["errors"],
        "latencies": sent["latencies_ms"],
    }


def _database_wal(db: dict, neighbours_per_s: float | None, runs: int) -> dict:
    """The bench database's WAL (pg_walinspect), less the neighbours' at their rate alone."""
    if db["database_wal_bytes"] is None or neighbours_per_s is None:
        return {"database_wal_bytes": None, "database_wal_bytes_per_run": None}
    wal = db["database_wal_bytes"] - neighbours_per_s * db["seconds"]
    return {"database_wal_bytes": round(wal), "database_wal_bytes_per_run": round(wal / runs)}


def _line(mode: str, f: dict) -> str:
    return (
        f"P3 {mode}: {f['rows']:,} rows, every one written after {f['seconds_until_all_materialised']:.1f}s; Postgres "
        f"{f['pg_cpu_s_per_1000']:.2f} CPU-s (server {f['server_cpu_s_per_1000']:.2f}) and {f['transactions_per_1000']:,.0f} "
        f"transactions per 1,000 runs, WAL {f['database_wal_bytes_per_run']} bytes per run (server {f['wal_bytes'] / 1e6:.1f} MB), active connections max {f['max_active_pg_connections']} "
        f"mean {f['mean_active_pg_connections']}, lock waits {f['lock_wait_samples']}, max {f['max_insert_rate']} inserts/s; "
        f"database neighbour p99 {f['db_neighbour']['p99_ms']} ms, HTTP neighbour p99 {f['http_neighbour']['p99_ms']} ms; "
        f"generator {f['generator_cpu_s'] if 'generator_cpu_s' in f else '?'} CPU-s"
    )


# -- targets, tables and the plot ----------------------------------------------------------------


def targets(p3: dict) -> list[tuple[str, str, bool]]:
    off, on = p3["off"], p3["on"]
    ratios = p3["ratios"]
    drainers = p3.get("drainers", 1)
    return [
        (
            "P3 Postgres CPU per run (on) <= 0.3 x off",
            f"{on['pg_cpu_s_per_1000']:.2f} vs {off['pg_cpu_s_per_1000']:.2f} CPU-s per 1,000 ({ratios['cpu_per_run']}x)",
            ratios["cpu_per_run"] is not None and ratios["cpu_per_run"] <= 0.3,
        ),
        (
            "P3 transactions per run (on) <= 0.05 x off",
            f"{on['transactions_per_1000']:,.0f} vs {off['transactions_per_1000']:,.0f} per 1,000 ({ratios['transactions_per_run']}x)",
            ratios["transactions_per_run"] is not None and ratios["transactions_per_run"] <= 0.05,
        ),
        (
            f"P3 active connections (on) <= drainers + 2 ({drainers + 2})",
            f"max {on['max_active_pg_connections']} (off: {off['max_active_pg_connections']})",
            on["max_active_pg_connections"] <= drainers + 2,
        ),
        (
            "P3 insert rate (on) <= cap + 10%",
            f"max {on['max_drained_per_second']}/s vs cap {on['drain_cap']}/s",
            on["max_drained_per_second"] <= on["drain_cap"] * 1.1,
        ),
        (
            "P3 zero errors",
            f"off {off['burst']['errors']}, on {on['burst']['errors']}",
            off["burst"]["errors"] == on["burst"]["errors"] == 0,
        ),
        (
            "P3 exactly once (rows = answered ids)",
            f"off {off['exactly_once']}, on {on['exactly_once']}",
            off["exactly_once"] and on["exactly_once"],
        ),
    ]


def markdown(p3: dict, sizes: dict) -> str:
    off, on, idle = p3["off"], p3["on"], p3["idle"]

    def both(key: str, fmt: str = "{}") -> str:
        return " | ".join("n/a" if mode.get(key) is None else fmt.format(mode[key]) for mode in (off, on))

    lines = [
        f"**P3** a burst of {off['rows']:,} SDK-shaped triggers at concurrency {sizes['p3_concurrency']} against "
        f"{p3['workers']} gunicorn sync workers, counted until every run is a row; beside it another tenant triggers "
        f"at {sizes['p3_neighbour_rate']}/s and another service reads and updates runs at "
        f"{sizes['p3_db_neighbour_rate']} queries/s:",
        "",
        "| | mollifier off | mollifier on |",
        "|---|---|---|",
        f"| Postgres CPU-s per 1,000 runs (backends of the bench database) | {both('pg_cpu_s_per_1000', '{:.2f}')} |",
        f"| Postgres CPU-s per 1,000 runs (every postgres process, other databases' work included) | {both('server_cpu_s_per_1000', '{:.2f}')} |",
        f"| transactions per 1,000 runs | {both('transactions_per_1000', '{:,.0f}')} |",
        f"| WAL bytes per run (the bench database's records, pg_walinspect) | {both('database_wal_bytes_per_run', '{:,}')} |",
        f"| WAL bytes per run (the whole server, pg_current_wal_lsn) | {both('wal_bytes_per_run', '{:,}')} |",
        f"| active Postgres connections, max / mean | {off['max_active_pg_connections']} / {off['mean_active_pg_connections']} | "
        f"{on['max_active_pg_connections']} / {on['mean_active_pg_connections']} |",
        f"| samples with a backend waiting for a lock (max at once) | {off['lock_wait_samples']} ({off['max_lock_waits']}) | "
        f"{on['lock_wait_samples']} ({on['max_lock_waits']}) |",
        f"| rows inserted per second, max / mean | {off['max_insert_rate']} / {off['mean_insert_rate']} | "
        f"{on['max_insert_rate']} / {on['mean_insert_rate']} (cap {on['drain_cap']}/s; max drained {on['max_drained_per_second']}/s) |",
        f"| burst answered in (s) | {off['burst']['requests'] / off['burst']['throughput']:.1f} | {on['burst']['requests'] / on['burst']['throughput']:.1f} |",
        f"| every run a row after (s) | {both('seconds_until_all_materialised')} |",
        f"| trigger p50 / p99 (ms) | {off['burst']['p50_ms']} / {off['burst']['p99_ms']} | {on['burst']['p50_ms']} / {on['burst']['p99_ms']} |",
        f"| errors; rows = answered ids | {off['burst']['errors']}; {off['exactly_once']} | {on['burst']['errors']}; {on['exactly_once']} |",
        f"| runs buffered | {off['buffered']:,} | {on['buffered']:,} |",
        f"| drain rounds that wrote (rows per round) | | {on['drain_rounds']:,} ({on['rows_per_drain_round']}) |",
        f"| database neighbour p50 / p99 (ms; alone {idle['db_neighbour']['p50_ms']} / {idle['db_neighbour']['p99_ms']}) | "
        f"{off['db_neighbour']['p50_ms']} / {off['db_neighbour']['p99_ms']} | {on['db_neighbour']['p50_ms']} / {on['db_neighbour']['p99_ms']} |",
        f"| HTTP neighbour p50 / p99 (ms; alone {idle['http_neighbour']['p50_ms']} / {idle['http_neighbour']['p99_ms']}) | "
        f"{off['http_neighbour']['p50_ms']} / {off['http_neighbour']['p99_ms']} | {on['http_neighbour']['p50_ms']} / {on['http_neighbour']['p99_ms']} |",
        f"| load generator CPU-s (share of the machine while it sent) | {off['generator_cpu_s']} ({off['generator_cpu_share']:.0%}) | "
        f"{on['generator_cpu_s']} ({on['generator_cpu_share']:.0%}) |",
        f"| window: seconds, Postgres backends seen, other databases' max active connections | "
        f"{off['database']['seconds']}, {off['database']['backends_seen']}, {off['database']['max_other_db_active']} | "
        f"{on['database']['seconds']}, {on['database']['backends_seen']}, {on['database']['max_other_db_active']} |",
    ]
    return "\n".join(lines)


def plot(results: dict, suffix: str):
    """Postgres CPU and transactions per 1,000 runs, off and on; active connections over time."""
    from bench import report

    plt = report.plt
    p3 = results["P3"]
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(13, 4), gridspec_kw={"width_ratios": [1, 1, 2.2]})
    modes, colours = ("off", "on"), ("tab:red", "tab:blue")
    ax1.bar(modes, [p3[m]["pg_cpu_s_per_1000"] for m in modes], color=colours)
    ax1.set(title="Postgres CPU-s per 1,000 runs", ylabel="CPU-seconds")
    ax2.bar(modes, [p3[m]["transactions_per_1000"] for m in modes], color=colours)
    ax2.set(title="transactions per 1,000 runs")
    for mode, colour in zip(modes, colours):
        timeline = p3[mode]["timeline"]
        ax3.plot([s[0] for s in timeline], [s[2] for s in timeline], color=colour, alpha=0.7, label=f"mollifier {mode}")
    ax3.axhline(p3.get("drainers", 1) + 2, color="grey", linestyle=":", label="goal with it on: drainers + 2")
    ax3.set(xlabel="seconds since the window opened", ylabel="active connections", title="active Postgres connections")
    ax3.legend()
    fig.suptitle(f"P3: a burst of {p3['off']['rows']:,} runs against {p3['workers']} web workers, as Postgres sees it")
    return report._save(fig, f"burst_database{suffix}.png")
