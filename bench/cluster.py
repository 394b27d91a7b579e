"""P7 (issue 15, item 7): the buffer on a 3-master Redis Cluster against a single Redis node.

The same two steps on each store: SDK-shaped triggers of several enrolled, tripped organisations (so
every trigger is buffered), sent by wrk to the server (``MOLLIFIER_REDIS_CLUSTER_URL`` points the
mollifier at the cluster; unset, it uses ``REDIS_URL``'s node), then the backlog drained into Postgres
by two drainer processes. Reported: triggers/s, rows/s, and cluster ÷ single for both.

Every key of one organisation shares the hash tag ``{o:<org>}`` (mollifier/keys.py), so each script
runs in one slot; the organisations are picked so that each master holds as many of them as the others.
The cluster is started as the tests start one (tests/redis_cluster.py): three redis-server processes on
this machine, sharing its cores with the server, the drainers and Postgres, so the figure says what
sharding costs or saves per call here, not what three machines would do.
"""

import statistics
import threading
import time

import redis
from django.utils import timezone
from redis.cluster import RedisCluster
from redis.crc import key_slot

from bench import processes, wrk
from bench.measures import BODY, reset_stores
from mollifier import buffer, keys, scripts
from runs.api.serializers import trigger_options_from
from runs.models import TaskRun
from runs.services.environments import environment_create, environment_rotate_key
from runs.services.flags import MOLLIFIER_ENABLED, organization_set_flag
from runs.services.trigger import task_run_prepare
from runs.snapshots import run_to_entry, to_ms
from tests.faults import RedisProcess
from tests.redis_cluster import redis_cluster

MASTERS = 3
DRAINERS = 2
SERVER_ENV = {
    "MOLLIFIER_ENABLED": "1",
    "MOLLIFIER_TRIP_THRESHOLD": "1",  # every organisation is tripped from its second trigger on
    "MOLLIFIER_TRIP_WINDOW_MS": "1000",
    "MOLLIFIER_HOLD_MS": "600000",
    "MOLLIFIER_ORG_BUFFER_CAP": "100000000",
}
DRAIN_ENV = {"MOLLIFIER_DRAIN_MAX_ROWS_PER_SEC": "10000000", "MOLLIFIER_DRAIN_RATE_MODE": "fixed"}


def _master_of(org_id: int) -> int:
    """Which master holds the organisation's slot, as tests/redis_cluster.py assigns the slots."""
    slot = key_slot(keys.entry(str(org_id), "x").encode())
    return min(slot // (16384 // MASTERS), MASTERS - 1)


def _tenants(orgs: int) -> list[tuple[object, str, int]]:
    """``orgs`` enrolled organisations, the same number on each master: (environment, key, master)."""
    chosen: list[tuple[object, str, int]] = []
    per_master = {m: 0 for m in range(MASTERS)}
    n = 0
    while len(chosen) < orgs:
        environment, key = environment_create(org_slug=f"bench-cluster-{n}", project_slug="p", env="prod")
        n += 1
        master = _master_of(environment.organization_id)
        if per_master[master] >= -(-orgs // MASTERS):
            continue
        per_master[master] += 1
        organization_set_flag(organization=environment.organization, name=MOLLIFIER_ENABLED, enabled=True)
        chosen.append((environment, key or environment_rotate_key(environment=environment), master))
    return chosen


def _trigger(url: str, tenants: list, *, per_org: int, connections: int) -> dict:
    """One wrk per organisation, all at once; triggers/s over the whole."""
    figures: list[dict] = []
    errors: list[BaseException] = []

    def send(key: str) -> None:
        try:
            figures.append(
                wrk.run(url, "/api/v1/tasks/cluster/trigger", key, connections=connections, requests=per_org, body=BODY)
            )
        except BaseException as error:  # re-raised below, in the caller's thread
            errors.append(error)

    threads = [threading.Thread(target=send, args=(key,)) for _, key, _ in tenants]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall_s = time.perf_counter() - started
    if errors:
        raise errors[0]
    requests = sum(f["requests"] for f in figures)
    latencies = sorted(ms for f in figures for ms in f["latencies_ms"])
    return {
        "requests": requests,
        "seconds": round(wall_s, 2),
        "triggers_per_s": round(requests / wall_s, 1),
        "buffered": sum(f["buffered"] for f in figures),
        "errors": sum(f["non_2xx"] + sum(f["socket_errors"].values()) for f in figures),
        "p50_ms": round(latencies[len(latencies) // 2], 2) if latencies else 0,
        "p99_ms": round(latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))], 2) if latencies else 0,
        "generator_cpu_s": round(sum(f["generator_cpu_s"] for f in figures), 2),
    }


def _drain(expected: int, env: dict) -> float:
    """Rows/s of DRAINERS drainer processes, from the first row written to the last (their start-up,
    Django's import time, is not the drain's)."""
    drained = TaskRun.objects.filter(materialised_at__isnull=False)  # not the few written before the trip
    drainers = [processes.start_drainer(**DRAIN_ENV, **env) for _ in range(DRAINERS)]
    try:
        while not drained.exists():
            for drainer in drainers:
                if drainer.poll() is not None:
                    raise RuntimeError(f"a drainer exited: {processes.stop(drainer)}")
            time.sleep(0.005)
        first = time.perf_counter()
        while TaskRun.objects.count() < expected:
            time.sleep(0.02)
        return drained.count() / (time.perf_counter() - first)
    finally:
        for drainer in drainers:
            processes.stop(drainer)


def _client(env: dict) -> redis.Redis | RedisCluster:
    if cluster_url := env.get("MOLLIFIER_REDIS_CLUSTER_URL"):
        return RedisCluster.from_url(cluster_url)
    return redis.Redis.from_url(env["REDIS_URL"])


def _top_up(tenants: list, *, entries: int, env: dict) -> None:
    """Buffer ``entries`` more runs, spread over the organisations, straight into the store with the
    accept script (the web tier is the bound of the trigger step; the drain needs a backlog that takes
    it seconds). One call per run, on either store: a cluster pipeline refuses EVALSHA."""
    client = _client(env)
    now = timezone.now()
    options = trigger_options_from(BODY, now=now)
    for environment, _, _ in tenants:
        for _ in range(entries // len(tenants)):
            run = task_run_prepare(environment=environment, task_identifier="cluster", options=options, now=now)
            entry = run_to_entry(run, batch_index=None)
            reply = scripts.ACCEPT(
                keys=buffer.accept_keys(entry), args=[to_ms(now), *buffer.accept_args(entry)], client=client
            )
            assert buffer.accept_result(reply, entry, client=client).status == "accepted"
    client.close()


def _command_counts(env: dict) -> dict[str, int]:
    """Commands the buffer's nodes have run since they started, by name, summed over the nodes
    (INFO commandstats; the commands a script runs count too)."""
    client = _client(env)
    if isinstance(client, RedisCluster):
        replies = client.info("commandstats", target_nodes=RedisCluster.PRIMARIES).values()
    else:
        replies = [client.info("commandstats")]
    client.close()
    counts: dict[str, int] = {}
    for reply in replies:
        for name, stats in reply.items():
            counts[name.removeprefix("cmdstat_")] = counts.get(name.removeprefix("cmdstat_"), 0) + stats["calls"]
    return counts


def _measure(store: str, tenants: list, *, per_org: int, connections: int, backlog: int, env: dict, say) -> dict:
    with processes.server(**SERVER_ENV, **env) as url:
        before = _command_counts(env)
        figures = _trigger(url, tenants, per_org=per_org, connections=connections)
        after = _command_counts(env)
    # What one trigger costs the buffer's nodes, by command: the profile behind triggers/s.
    figures["commands_per_trigger"] = {
        name: round((calls - before.get(name, 0)) / figures["requests"], 2)
        for name, calls in sorted(after.items(), key=lambda item: before.get(item[0], 0) - item[1])
        if (calls - before.get(name, 0)) / figures["requests"] >= 0.01
    }
    if cluster_url := env.get("MOLLIFIER_REDIS_CLUSTER_URL"):
        nodes = RedisCluster.from_url(cluster_url)
        figures["keys_per_master"] = [nodes.dbsize(target_nodes=node) for node in nodes.get_primaries()]
        nodes.close()
    _top_up(tenants, entries=backlog - figures["requests"], env=env)
    expected = figures["requests"] + (backlog - figures["requests"]) // len(tenants) * len(tenants)
    say(
        f"P7 {store}: {figures['requests']:,} triggers at {figures['triggers_per_s']:,.0f}/s, "
        f"{figures['buffered']:,} buffered, {figures['errors']} errors, p99 {figures['p99_ms']} ms"
    )
    rate = _drain(expected, env)
    rows = TaskRun.objects.count()
    figures.update(drain_rows_per_s=round(rate), rows=rows, backlog=expected, every_run_once=rows == expected)
    say(f"P7 {store}: {DRAINERS} drainers wrote a backlog of {expected:,} ({rows:,} rows) at {rate:,.0f} rows/s")
    return figures


def _flush(single_url: str, cluster_url: str) -> None:
    reset_stores()  # the rows
    node = redis.Redis.from_url(single_url)
    node.flushdb()
    node.close()
    nodes = RedisCluster.from_url(cluster_url)
    nodes.flushdb(target_nodes=RedisCluster.PRIMARIES)
    nodes.close()


def p7_cluster(*, orgs: int, per_org: int, connections: int, backlog: int, rounds: int, say) -> dict:
    """Single node and cluster take turns, ``rounds`` times (a machine whose load drifts treats them
    alike); each figure is the median of its rounds."""
    reset_stores()
    tenants = _tenants(orgs)
    runs: dict[str, list[dict]] = {"single": [], "cluster": []}
    # The single node is a redis-server of the bench's own, started as the cluster's nodes are (no
    # persistence): the machine's Redis is shared with other work. It is REDIS_URL in both cases (Django's
    # cache), so where the mollifier's keys live is the only difference.
    single = RedisProcess("--appendonly", "no")
    single.start()
    with redis_cluster(MASTERS) as cluster_url:
        stores = (
            ("single", {"REDIS_URL": single.url}),
            ("cluster", {"REDIS_URL": single.url, "MOLLIFIER_REDIS_CLUSTER_URL": cluster_url}),
        )
        for round_no in range(rounds):
            for store, env in stores:
                _flush(single.url, cluster_url)
                runs[store].append(
                    _measure(
                        f"{store} (round {round_no + 1}/{rounds})",
                        tenants,
                        per_org=per_org,
                        connections=connections,
                        backlog=backlog,
                        env=env,
                        say=say,
                    )
                )
        _flush(single.url, cluster_url)
    single.cleanup()
    results: dict = {
        "orgs": orgs,
        "orgs_per_master": [sum(1 for *_, m in tenants if m == master) for master in range(MASTERS)],
        "drainers": DRAINERS,
        "connections_per_org": connections,
        "rounds": rounds,
    }
    for store, measured in runs.items():
        last = measured[-1]
        results[store] = {
            **last,
            "triggers_per_s": statistics.median(m["triggers_per_s"] for m in measured),
            "drain_rows_per_s": round(statistics.median(m["drain_rows_per_s"] for m in measured)),
            "errors": sum(m["errors"] for m in measured),
            "every_run_once": all(m["every_run_once"] for m in measured),
            "buffered": min(m["buffered"] for m in measured),
            "rounds": [{k: m[k] for k in ("triggers_per_s", "drain_rows_per_s", "p50_ms", "p99_ms")} for m in measured],
        }
    single_figures, cluster = results["single"], results["cluster"]
    results["ratio_triggers"] = round(cluster["triggers_per_s"] / single_figures["triggers_per_s"], 3)
    results["ratio_drain"] = round(cluster["drain_rows_per_s"] / single_figures["drain_rows_per_s"], 3)
    return results


def targets(p7: dict) -> list[tuple[str, str, bool]]:
    single, cluster = p7["single"], p7["cluster"]
    return [
        (
            "P7 cluster: every trigger buffered, answered, written once",
            f"{cluster['buffered']:,} buffered, {cluster['errors']} errors, {cluster['rows']:,} rows",
            cluster["errors"] == 0 and cluster["every_run_once"] and cluster["buffered"] >= 0.99 * cluster["requests"],
        ),
        (
            "P7 cluster trigger throughput >= 0.9 x single node",
            f"{cluster['triggers_per_s']:,.0f} vs {single['triggers_per_s']:,.0f}/s ({p7['ratio_triggers']:.2f}x)",
            p7["ratio_triggers"] >= 0.9,
        ),
        (
            f"P7 cluster drain ({p7['drainers']} drainers) >= 0.9 x single node",
            f"{cluster['drain_rows_per_s']:,} vs {single['drain_rows_per_s']:,} rows/s ({p7['ratio_drain']:.2f}x)",
            p7["ratio_drain"] >= 0.9,
        ),
    ]


KEYS = "keys_per_master"


def _commands(figures: dict) -> str:
    counts = figures["commands_per_trigger"]
    return f"{sum(counts.values()):.1f}: " + ", ".join(f"{name} {n}" for name, n in list(counts.items())[:6])


def markdown(p7: dict) -> str:
    single, cluster = p7["single"], p7["cluster"]
    return "\n".join(
        [
            f"**P7** the buffer on a {MASTERS}-master Redis Cluster against one node: {p7['orgs']} enrolled, tripped "
            f"organisations ({'/'.join(str(n) for n in p7['orgs_per_master'])} per master), one wrk each at "
            f"{p7['connections_per_org']} connections, then {p7['drainers']} drainers write the backlog "
            f"({single['backlog']:,} runs: the triggers' and more buffered directly, spread over the organisations):",
            "",
            "| | single node | cluster | cluster ÷ single |",
            "|---|---|---|---|",
            f"| triggers/s (median of {p7['rounds']} rounds) | {single['triggers_per_s']:,.0f} | {cluster['triggers_per_s']:,.0f} | {p7['ratio_triggers']:.2f} |",
            f"| trigger p50 / p99 (ms) | {single['p50_ms']} / {single['p99_ms']} | {cluster['p50_ms']} / {cluster['p99_ms']} | |",
            f"| drain rows/s ({p7['drainers']} drainers; median) | {single['drain_rows_per_s']:,} | {cluster['drain_rows_per_s']:,} | {p7['ratio_drain']:.2f} |",
            f"| triggers; buffered; errors | {single['requests']:,}; {single['buffered']:,}; {single['errors']} | "
            f"{cluster['requests']:,}; {cluster['buffered']:,}; {cluster['errors']} | |",
            f"| every run written once | {single['every_run_once']} | {cluster['every_run_once']} | |",
            f"| Redis commands per trigger, a script's own included (last round) | "
            f"{_commands(single)} | {_commands(cluster)} | |",
            f"| share of the keys on each master after the triggers | | "
            f"{' / '.join(f'{n / max(1, sum(cluster[KEYS])):.0%}' for n in cluster[KEYS])} | |",
        ]
    )
