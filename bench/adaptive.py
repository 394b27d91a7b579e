"""P8: the adaptive drain (issue 17). A backlog in four environments (production, staging, preview,
development) is drained by two drainer processes while a competing write load, in a process of its
own, slows Postgres down for a while and then stops. Once with the adaptive rate, once with the rate
fixed at the same ceiling, then once more adaptive without the slowdown. Every 250 ms it samples the
allowed rate, the rounds' write latency (the drainers' moving average), the rows written, each
environment's backlog, and the commit latency of a one-row transaction of "another tenant" (a probe).
Estimates of buffered runs' write times are taken along the way and compared with when their rows
were written.

``python -m bench.adaptive compete URL CONNECTIONS SECONDS`` is the competing load on its own.
"""

import json
import random
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from bench import processes

SAMPLE_S = 0.25
ENV_TYPES = ("prod", "staging", "preview", "dev")
NAMES = {"prod": "production", "staging": "staging", "preview": "preview", "dev": "development"}


# -- the competing load -------------------------------------------------------------------------


def compete(url: str, connections: int, seconds: float) -> list[int]:
    """``connections`` sessions inserting 2,000-row batches into a table of their own for
    ``seconds``; returns the rows committed in each second."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS bench_competitor (id bigserial primary key, a text, b text, n int)")
        conn.execute("CREATE INDEX IF NOT EXISTS bench_competitor_a ON bench_competitor (a)")
    started = time.monotonic()
    per_second = [0] * (int(seconds) + 2)
    lock = threading.Lock()

    def work():
        with psycopg.connect(url) as conn:
            while time.monotonic() - started < seconds:
                conn.execute(
                    "INSERT INTO bench_competitor (a, b, n) SELECT md5(random()::text), "
                    "repeat(md5(random()::text), 8), g FROM generate_series(1, 2000) g"
                )
                conn.commit()
                with lock:
                    per_second[min(int(time.monotonic() - started), len(per_second) - 1)] += 2000

    threads = [threading.Thread(target=work) for _ in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return per_second


def start_competitor(connections: int, seconds: float) -> subprocess.Popen:
    from django.conf import settings

    db = settings.DATABASES["default"]
    url = f"postgresql://{db['USER']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"
    if db.get("PASSWORD"):
        url = url.replace("@", f":{db['PASSWORD']}@", 1)
    return subprocess.Popen(
        [sys.executable, "-m", "bench.adaptive", "compete", url, str(connections), str(seconds)],
        cwd=processes.ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )


# -- sampling -------------------------------------------------------------------------------------


class Sampler(threading.Thread):
    """Every SAMPLE_S: (t, allowed rate, rounds' write ms, rows written, backlog per environment,
    probe commit ms)."""

    def __init__(self, environments: dict):
        super().__init__(daemon=True)
        self.environments = environments
        self.samples: list[dict] = []
        self.halt = threading.Event()
        self.started = time.perf_counter()

    def run(self):
        import psycopg
        from django.conf import settings

        from mollifier import buffer, rate

        db = settings.DATABASES["default"]
        conn = psycopg.connect(
            dbname=db["NAME"],
            user=db["USER"],
            password=db["PASSWORD"] or None,
            host=db["HOST"] or None,
            port=db["PORT"] or None,
            autocommit=True,
        )
        conn.execute("CREATE TABLE IF NOT EXISTS bench_probe (id bigserial primary key, at timestamptz)")
        while not self.halt.is_set():
            began = time.perf_counter()
            with conn.transaction():
                conn.execute("INSERT INTO bench_probe (at) VALUES (now())")
            probe_ms = (time.perf_counter() - began) * 1000
            rows = conn.execute("SELECT count(*) FROM runs_taskrun").fetchone()[0]
            state = rate.state()
            self.samples.append(
                {
                    "t": round(time.perf_counter() - self.started, 2),
                    "rate": round(state.rate, 1),
                    "commit_ms": round(state.commit_ms, 1) if state.commit_ms is not None else None,
                    "rows": rows,
                    "backlog": {
                        name: buffer.buffered_count(str(env.organization_id)) for name, env in self.environments.items()
                    },
                    "probe_ms": round(probe_ms, 2),
                }
            )
            self.halt.wait(max(0.0, SAMPLE_S - (time.perf_counter() - began)))
        conn.close()


class Estimates(threading.Thread):
    """Every few seconds, the estimate of up to ``per_env`` waiting runs of each environment."""

    def __init__(self, environments: dict, *, every_s: float, per_env: int, started: float):
        super().__init__(daemon=True)
        self.environments = environments
        self.every_s, self.per_env, self.started = every_s, per_env, started
        self.taken: list[dict] = []
        self.halt = threading.Event()

    def run(self):
        from mollifier import estimate, keys
        from mollifier.client import get as redis_client
        from mollifier.clock import now_ms

        redis = redis_client()
        while not self.halt.wait(self.every_s):
            for name, env in self.environments.items():
                org, env_id = str(env.organization_id), str(env.pk)
                members = redis.zrandmember(keys.ready(org, env_id), self.per_env) or []
                for member in members:
                    run_id = member.decode()
                    now = now_ms()
                    found = estimate.estimate(org_id=org, env_id=env_id, run_id=run_id, delay_until_ms=None, now_ms=now)
                    if found is None or found.write_at_ms is None:
                        continue
                    self.taken.append(
                        {
                            "env": name,
                            "run": run_id,
                            "at_ms": now,
                            "t": round(time.perf_counter() - self.started, 2),
                            "position": found.position,
                            "predicted_ms": found.write_at_ms,
                        }
                    )


def percentile(values: list[float], q: float) -> float:
    from bench.measures import percentile as measured

    return measured(values, q)


def _estimate_errors(taken: list[dict]) -> list[dict]:
    """Each estimate with the time its row was actually written (materialised_at)."""
    from django.db import connection

    ids = [item["run"].removeprefix("run_") for item in taken]
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT id, (extract(epoch FROM materialised_at) * 1000)::bigint FROM runs_taskrun WHERE id = ANY(%s)",
            [ids],
        )
        written = dict(cursor.fetchall())
    out = []
    for item in taken:
        actual = written.get(item["run"].removeprefix("run_"))
        if actual is None:
            continue
        wait = max(1, item["predicted_ms"] - item["at_ms"])
        out.append(
            {
                **item,
                "actual_ms": int(actual),
                "error_s": round((int(actual) - item["predicted_ms"]) / 1000, 3),
                "predicted_wait_s": round(wait / 1000, 3),
                "actual_wait_s": round((int(actual) - item["at_ms"]) / 1000, 3),
            }
        )
    return out


def _accuracy(errors: list[dict]) -> dict:
    absolute = [abs(e["error_s"]) for e in errors]
    relative = [abs(e["error_s"]) / max(e["actual_wait_s"], 0.001) for e in errors]
    return {
        "estimates": len(errors),
        "p50_abs_error_s": round(percentile(absolute, 50), 2),
        "p90_abs_error_s": round(percentile(absolute, 90), 2),
        "p50_rel_error": round(percentile(relative, 50), 3),
        "p90_rel_error": round(percentile(relative, 90), 3),
        "mean_signed_error_s": round(statistics.fmean(e["error_s"] for e in errors), 2) if errors else 0,
        "mean_actual_wait_s": round(statistics.fmean(e["actual_wait_s"] for e in errors), 2) if errors else 0,
    }


# -- one drain ------------------------------------------------------------------------------------


def _drain(
    environments: dict,
    *,
    mode: str,
    per_env: int,
    knobs: dict,
    drainers: int,
    slowdown: tuple[float, float] | None,
    competitors: int,
    max_s: float,
    estimate_every_s: float,
    say,
) -> dict:
    from django.conf import settings
    from django.db import connection

    from bench.measures import BODY, reset_stores
    from tests.buffering import fill_buffer

    # This process reads the shared rate and makes estimates as the drainers' settings say.
    base = dict(settings.MOLLIFIER)
    settings.MOLLIFIER = {
        **base,
        "DRAIN_RATE_MODE": mode,
        **{name.removeprefix("MOLLIFIER_"): int(value) for name, value in knobs.items()},
    }
    reset_stores()

    with connection.cursor() as cursor:
        cursor.execute("DROP TABLE IF EXISTS bench_competitor")
        cursor.execute("DROP TABLE IF EXISTS bench_probe")
    for environment in environments.values():
        fill_buffer(environment, per_env, task="bench", payload=BODY["payload"], **BODY["options"])
    say(f"P8 {mode}{' with a slowdown' if slowdown else ''}: {per_env * len(environments):,} runs buffered")
    sampler = Sampler(environments)
    estimates = Estimates(environments, every_s=estimate_every_s, per_env=10, started=sampler.started)
    env = {**knobs, "MOLLIFIER_DRAIN_RATE_MODE": mode}
    started = [processes.start_drainer(**env) for _ in range(drainers)]
    sampler.start()
    estimates.start()
    competitor = None
    try:
        while True:
            t = time.perf_counter() - sampler.started
            latest = sampler.samples[-1] if sampler.samples else None
            if slowdown and competitor is None and t >= slowdown[0]:
                competitor = start_competitor(competitors, slowdown[1] - slowdown[0])
                say(f"P8 {mode}: competing write load started at {t:.1f}s")
            if latest and sum(latest["backlog"].values()) == 0 and t > 1:
                break
            if t > max_s:
                say(
                    f"P8 {mode}: stopped at {max_s:.0f}s with {sum(latest['backlog'].values()) if latest else '?'} waiting"
                )
                break
            for process in started:
                if process.poll() is not None:
                    raise RuntimeError(f"a drainer exited: {process.stdout.read() if process.stdout else ''}")
            time.sleep(0.2)
    finally:
        competitor_rows = json.loads(competitor.communicate(timeout=120)[0]) if competitor is not None else []
        estimates.halt.set()
        estimates.join()
        sampler.halt.set()
        sampler.join()
        for process in started:
            processes.stop(process)
        settings.MOLLIFIER = base
    samples = sampler.samples
    errors = _estimate_errors(estimates.taken)
    return {
        "mode": mode,
        "slowdown": list(slowdown) if slowdown else None,
        "seconds": samples[-1]["t"] if samples else 0,
        "samples": samples,
        "competitor_rows_per_s": competitor_rows,
        "estimates": errors,
    }


def _phase(samples: list[dict], start: float, end: float) -> list[dict]:
    return [s for s in samples if start <= s["t"] < end]


def _rows_per_s(samples: list[dict]) -> float:
    if len(samples) < 2:
        return 0.0
    return (samples[-1]["rows"] - samples[0]["rows"]) / max(samples[-1]["t"] - samples[0]["t"], 1e-6)


def _summary(run: dict, *, ceiling: int, target_ms: int) -> dict:
    samples = run["samples"]
    slow_start, slow_end = run["slowdown"] or (None, None)
    out: dict = {"seconds": run["seconds"]}
    if slow_start is None:
        return out
    before, during, after = (
        _phase(samples, 2.0, slow_start),
        _phase(samples, slow_start, slow_end),
        _phase(samples, slow_end, run["seconds"] + 1),
    )
    cut = next((s["t"] for s in during if s["rate"] < ceiling * 0.9), None)
    recovered = next((s["t"] for s in after if s["rate"] >= ceiling * 0.9), None)
    commit_during = [s["commit_ms"] for s in during[4:] if s["commit_ms"] is not None]  # after the first second
    out.update(
        {
            "rows_per_s_before": round(_rows_per_s(before)),
            "rows_per_s_during": round(_rows_per_s(during)),
            "rows_per_s_after": round(_rows_per_s(after[:40])),
            "seconds_to_first_cut": round(cut - slow_start, 2) if cut is not None else None,
            "min_rate_during": min((s["rate"] for s in during), default=ceiling),
            "mean_rate_during": round(statistics.fmean(s["rate"] for s in during), 1) if during else ceiling,
            "seconds_to_full_speed_after": round(recovered - slow_end, 2) if recovered is not None else None,
            "commit_ms_before_mean": _mean([s["commit_ms"] for s in before]),
            "commit_ms_during_mean": _mean(commit_during),
            "commit_ms_during_p90": round(percentile(commit_during, 90), 1),
            "probe_ms_during_p50": round(percentile([s["probe_ms"] for s in during], 50), 1),
            "probe_ms_during_p90": round(percentile([s["probe_ms"] for s in during], 90), 1),
            "competitor_rows_per_s": round(
                statistics.fmean(run["competitor_rows_per_s"][1:-2]) if len(run["competitor_rows_per_s"]) > 3 else 0
            ),
            "target_ms": target_ms,
        }
    )
    return out


def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return round(statistics.fmean(values), 1) if values else None


def _drained_at(samples: list[dict], name: str) -> float | None:
    return next((s["t"] for s in samples if s["backlog"][name] == 0), None)


def p8_adaptive(
    *,
    per_env: int,
    ceiling: int,
    target_ms: int,
    slowdown: tuple[float, float],
    max_s: float,
    drainers: int,
    competitors: int,
    say,
) -> dict:
    """The adaptive drain and the fixed one through the same slowdown, then the adaptive one alone."""
    from runs.services.environments import environment_create

    environments = {
        NAMES[kind]: environment_create(org_slug=f"bench-p8-{kind}", project_slug="p8", env=kind)[0]
        for kind in ENV_TYPES
    }
    knobs = {
        "MOLLIFIER_DRAIN_MAX_ROWS_PER_SEC": str(ceiling),
        "MOLLIFIER_DRAIN_TARGET_COMMIT_MS": str(target_ms),
        "MOLLIFIER_DRAIN_MIN_ROWS_PER_SEC": str(max(50, ceiling // 40)),
    }
    common = {
        "per_env": per_env,
        "knobs": knobs,
        "drainers": drainers,
        "competitors": competitors,
        "max_s": max_s,
        "say": say,
    }
    runs = {
        "adaptive": _drain(environments, mode="adaptive", slowdown=slowdown, estimate_every_s=2.0, **common),
        "fixed": _drain(environments, mode="fixed", slowdown=slowdown, estimate_every_s=1e9, **common),
        "steady": _drain(environments, mode="adaptive", slowdown=None, estimate_every_s=2.0, **common),
    }
    figures: dict = {
        "per_env": per_env,
        "environments": len(environments),
        "ceiling": ceiling,
        "target_ms": target_ms,
        "slowdown": list(slowdown),
        "drainers": drainers,
        "competing_connections": competitors,
    }
    for name, run in runs.items():
        figures[name] = {
            **_summary(run, ceiling=ceiling, target_ms=target_ms),
            "drained_at": {env: _drained_at(run["samples"], env) for env in environments},
            "timeline": run["samples"],
            "competitor": run["competitor_rows_per_s"],
        }
        if run["estimates"]:
            figures[name]["estimates"] = _accuracy(run["estimates"])
            figures[name]["estimate_points"] = [
                (e["predicted_wait_s"], e["actual_wait_s"], e["env"])
                for e in random.sample(run["estimates"], min(400, len(run["estimates"])))
            ]
        say(
            f"P8 {name}: {json.dumps({k: v for k, v in figures[name].items() if k not in ('timeline', 'estimate_points', 'competitor')})}"
        )
    return figures


# -- report ---------------------------------------------------------------------------------------


BULKY = ("timeline", "estimate_points", "competitor")


def write(p8: dict, out: Path, suffix: str, *, machine: dict, sizes: dict) -> list[Path]:
    """The plots, and every P8 figure with its timelines in docs/bench/adaptive{suffix}.json
    (compact); leaves only the summaries in ``p8`` (for results.json)."""
    paths = plots(p8, out, suffix)
    path = out / f"adaptive{suffix}.json"
    whole = {"P8": p8, "machine": machine, "sizes": {k: v for k, v in sizes.items() if k.startswith("p8_")}}
    path.write_text(json.dumps(whole, separators=(",", ":")) + "\n")
    for name in ("adaptive", "fixed", "steady"):
        for key in BULKY:
            p8[name].pop(key, None)
    return [*paths, path]


def targets(p8: dict) -> list[tuple[str, str, bool]]:
    adaptive, fixed = p8["adaptive"], p8["fixed"]
    target = p8["target_ms"]
    steady = p8["steady"].get("estimates", {})
    return [
        (
            "P8 adaptive cuts within 3 s of the slowdown",
            f"{adaptive['seconds_to_first_cut']} s",
            adaptive["seconds_to_first_cut"] is not None and adaptive["seconds_to_first_cut"] <= 3,
        ),
        (
            "P8 adaptive write latency during the slowdown <= 1.5 x target",
            f"{adaptive['commit_ms_during_mean']} ms (fixed {fixed['commit_ms_during_mean']} ms, target {target} ms)",
            (adaptive["commit_ms_during_mean"] or 0) <= 1.5 * target,
        ),
        (
            "P8 adaptive back to full speed within 10 s after",
            f"{adaptive['seconds_to_full_speed_after']} s",
            adaptive["seconds_to_full_speed_after"] is not None and adaptive["seconds_to_full_speed_after"] <= 10,
        ),
        (
            "P8 production drained first (adaptive)",
            ", ".join(f"{env} {t}s" for env, t in adaptive["drained_at"].items()),
            _first(adaptive["drained_at"]) == "production",
        ),
        (
            "P8 estimates, steady drain: p90 error <= 25% of the wait",
            f"p50 {steady.get('p50_abs_error_s')} s / p90 {steady.get('p90_abs_error_s')} s "
            f"({steady.get('p50_rel_error', 0):.0%} / {steady.get('p90_rel_error', 0):.0%} of the wait)",
            steady.get("p90_rel_error", 1) <= 0.25,
        ),
    ]


def _first(drained_at: dict) -> str | None:
    done = {env: t for env, t in drained_at.items() if t is not None}
    return min(done, key=lambda env: done[env]) if done else None


def plots(p8: dict, out: Path, suffix: str) -> list[Path]:
    import matplotlib.pyplot as plt

    paths = []
    fig, axes = plt.subplots(3, 1, figsize=(10, 9), sharex=True)
    colours = {"adaptive": "#1f77b4", "fixed": "#d62728"}
    for name in ("adaptive", "fixed"):
        timeline = p8[name]["timeline"]
        t = [s["t"] for s in timeline]
        drained = [0.0] + [
            (b["rows"] - a["rows"]) / max(b["t"] - a["t"], 1e-6) for a, b in zip(timeline, timeline[1:], strict=False)
        ]
        axes[0].plot(t, [s["rate"] for s in timeline], color=colours[name], label=f"{name}: allowed rate")
        axes[0].plot(t, _smooth(drained, 4), color=colours[name], alpha=0.35, label=f"{name}: rows written/s")
        axes[1].plot(t, [s["commit_ms"] for s in timeline], color=colours[name], label=f"{name}: round write (avg)")
        axes[1].plot(
            t,
            [s["probe_ms"] for s in timeline],
            color=colours[name],
            linestyle=":",
            alpha=0.6,
            label=f"{name}: another tenant's 1-row commit",
        )
        axes[2].plot(t, [sum(s["backlog"].values()) for s in timeline], color=colours[name], label=name)
    for ax in axes:
        ax.axvspan(*p8["slowdown"], color="#f0c0c0", alpha=0.3)
    axes[1].axhline(p8["target_ms"], color="grey", linestyle="--", label="target")
    axes[0].set(ylabel="rows/s", title="P8: a competing write load slows Postgres (shaded); two drainers")
    axes[1].set(ylabel="ms", yscale="log")
    axes[2].set(ylabel="runs waiting", xlabel="seconds")
    for ax in axes:
        ax.legend(fontsize=7, loc="upper right")
    paths.append(_save(fig, out / f"adaptive_drain{suffix}.png"))

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    timeline = p8["steady"]["timeline"]
    for env in p8["steady"]["drained_at"]:
        left.plot([s["t"] for s in timeline], [s["backlog"][env] for s in timeline], label=env)
    left.set(title="P8: backlog per environment (adaptive, no slowdown)", xlabel="seconds", ylabel="runs waiting")
    left.legend(fontsize=8)
    for name, marker in (("steady", "o"), ("adaptive", "x")):
        points = p8[name].get("estimate_points", [])
        right.scatter(
            [p for p, _, _ in points],
            [a for _, a, _ in points],
            s=6,
            marker=marker,
            alpha=0.5,
            label=f"{name}" + (" (through the slowdown)" if name == "adaptive" else ""),
        )
    top = max(
        [max(p, a) for name in ("steady", "adaptive") for p, a, _ in p8[name].get("estimate_points", [])], default=1
    )
    right.plot([0, top], [0, top], color="grey", linestyle="--")
    right.set(title="Estimated vs actual wait of buffered runs", xlabel="estimated (s)", ylabel="actual (s)")
    right.legend(fontsize=8)
    paths.append(_save(fig, out / f"adaptive_priority{suffix}.png"))
    return paths


def _smooth(values: list[float], window: int) -> list[float]:
    return [statistics.fmean(values[max(0, i - window + 1) : i + 1]) for i in range(len(values))]


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def markdown(p8: dict) -> str:
    """The P8 tables for docs/BENCHMARKS.md."""
    a, f = p8["adaptive"], p8["fixed"]
    rows = [
        ("rows written/s before the slowdown", "rows_per_s_before"),
        ("rows written/s during it", "rows_per_s_during"),
        ("rows written/s after it", "rows_per_s_after"),
        ("allowed rate during it, mean / min (rows/s)", None),
        ("first cut after it began (s)", "seconds_to_first_cut"),
        ("back to 90% of the ceiling after it ended (s)", "seconds_to_full_speed_after"),
        ("round write latency before, mean (ms)", "commit_ms_before_mean"),
        (f"round write latency during, mean / p90 (ms; target {p8['target_ms']})", None),
        ("another tenant's one-row commit during, p50 / p90 (ms)", None),
        ("the competing load's inserts during (rows/s)", "competitor_rows_per_s"),
    ]
    lines = ["| | adaptive | fixed |", "|---|---|---|"]
    for label, key in rows:
        if key:
            lines.append(f"| {label} | {a.get(key)} | {f.get(key)} |")
        elif label.startswith("allowed"):
            lines.append(
                f"| {label} | {a['mean_rate_during']:,.0f} / {a['min_rate_during']:,.0f} | {f['mean_rate_during']:,.0f} / {f['min_rate_during']:,.0f} |"
            )
        elif label.startswith("round write"):
            lines.append(
                f"| {label} | {a['commit_ms_during_mean']} / {a['commit_ms_during_p90']} | {f['commit_ms_during_mean']} / {f['commit_ms_during_p90']} |"
            )
        else:
            lines.append(
                f"| {label} | {a['probe_ms_during_p50']} / {a['probe_ms_during_p90']} | {f['probe_ms_during_p50']} / {f['probe_ms_during_p90']} |"
            )
    lines += [
        "",
        "| environment (weight) | drained after, adaptive with slowdown (s) | fixed with slowdown (s) | adaptive, no slowdown (s) |",
        "|---|---|---|---|",
    ]
    weights = {"production": 8, "staging": 2, "preview": 1, "development": 1}
    for env in a["drained_at"]:
        lines.append(
            f"| {env} ({weights.get(env, 1)}) | {a['drained_at'][env]} | {f['drained_at'][env]} | {p8['steady']['drained_at'][env]} |"
        )
    lines += [
        "",
        "| estimates of buffered runs' write time | estimates | p50 / p90 error (s) | p50 / p90 error (% of the actual wait) | mean signed error (s) | mean wait (s) |",
        "|---|---|---|---|---|---|",
    ]
    for name, label in (("steady", "steady drain (no slowdown)"), ("adaptive", "through the slowdown")):
        e = p8[name].get("estimates")
        if e:
            lines.append(
                f"| {label} | {e['estimates']} | {e['p50_abs_error_s']} / {e['p90_abs_error_s']} | "
                f"{e['p50_rel_error']:.0%} / {e['p90_rel_error']:.0%} | {e['mean_signed_error_s']} | {e['mean_actual_wait_s']} |"
            )
    return "\n".join(lines)


if __name__ == "__main__" and len(sys.argv) == 5 and sys.argv[1] == "compete":
    print(json.dumps(compete(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))))
