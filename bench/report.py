"""The benchmark's outputs: a JSON file of every figure, PNG plots, and the targets table."""

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

OUT = Path(__file__).resolve().parent.parent / "docs" / "bench"

# P4's cases (bench/measures.py) as the tables name them, in the issue's order, with its goals.
P4_NAMES = {
    "mollifier_off": "mollifier off",
    "not_enrolled": "not enrolled",
    "enrolled_pass_through": "enrolled pass-through",
    "mollified": "mollified",
    "keyed_mollified": "keyed (options.idempotencyKey) and mollified",
}
P4_GOALS = {"mollifier_off": 0, "not_enrolled": 0, "enrolled_pass_through": 1, "mollified": 1, "keyed_mollified": 2}


def targets(results: dict) -> list[tuple[str, str, bool]]:
    """(target, measured, met) for each target of the benchmark issue, of the figures measured
    (BENCH_ONLY=P9 on a machine with no earlier results has only that one)."""
    if not all(k in results for k in ("P1", "P2", "P3", "P4", "P5", "P6")):
        return _burst_and_later_targets(results)
    p1, p2, p4, p5, p6 = (results[k] for k in ("P1", "P2", "P4", "P5", "P6"))
    return (
        [
            (
                f"P1 mollified >= 0.7 x no-op throughput (median of {p1['rounds']} rounds)",
                f"{p1['ratio_mollified_to_noop']:.2f}x (rounds {_range(p1['ratio_mollified_to_noop_range'])})",
                p1["ratio_mollified_to_noop"] >= 0.7,
            ),
            (
                f"P2 drain >= 0.5 x raw COPY (one drainer{_p2_rounds(p2)}{_p2_rows(p2)})",
                f"{p2['ratio_drain_to_copy']:.2f}x{_p2_range(p2, 'ratio_drain_to_copy_range')}",
                p2["ratio_drain_to_copy"] >= 0.5,
            ),
            (
                f"P2 drain >= 0.7 x raw COPY (two drainers{_p2_rounds(p2)}{_p2_rows(p2)})",
                f"{p2['ratio_two_drainers_to_copy']:.2f}x{_p2_range(p2, 'ratio_two_drainers_to_copy_range')}",
                p2["ratio_two_drainers_to_copy"] >= 0.7,
            ),
            (
                "P2 drain >= 5 x one row per transaction",
                f"{p2['ratio_drain_to_single']:.1f}x",
                p2["ratio_drain_to_single"] >= 5,
            ),
        ]
        + [
            (f"P4 {P4_NAMES[name]}: <= {goal} Redis round trips (SDK-shaped)", f"{p4[name]}", p4[name] <= goal)
            for name, goal in P4_GOALS.items()
        ]
        + [
            (
                "P5 drainer RSS flat (large <= 1.2 x small)",
                f"{p5['ratio_rss_large_to_small']:.2f}x",
                p5["ratio_rss_large_to_small"] <= 1.2,
            ),
            (
                "P5 Redis bytes per entry <= 1.5 x snapshot",
                f"{p5['ratio_entry_to_snapshot']:.2f}x"
                + (
                    f" (MOLLIFIER_STORE_ROWS=1: {p5['ratio_entry_to_snapshot_stored_rows']:.2f}x)"
                    if "ratio_entry_to_snapshot_stored_rows" in p5
                    else ""
                ),
                p5["ratio_entry_to_snapshot"] <= 1.5,
            ),
            ("P6 soak: no error responses", f"{p6['errors']} of {p6['requests']:,}", p6["errors"] == 0),
            ("P6 soak: every run written once", f"{p6['rows']:,} rows", p6["exactly_once"]),
        ]
        + _burst_and_later_targets(results)
    )


def _burst_and_later_targets(results: dict) -> list[tuple[str, str, bool]]:
    """The figures whose targets live beside their measure (bench/burst.py, bench/cluster.py,
    bench/postgres_outage.py), and P9."""
    from bench import burst, cluster, postgres_outage

    return (
        (burst.targets(results["P3"]) if "P3" in results else [])
        + (cluster.targets(results["P7"]) if "P7" in results else [])
        + (_p9_targets(results["P9"]) if "P9" in results else [])
        + (postgres_outage.targets(results["P10"]) if "P10" in results else [])
    )


def _p2_rows(p2: dict) -> str:
    return ", rows stored at the trigger" if p2.get("store_rows") else ""


def _p2_rounds(p2: dict) -> str:
    return f", median of {p2['rounds']} rounds" if "rounds" in p2 else ""  # results from before rounds: one run


def _p2_range(p2: dict, key: str) -> str:
    return f" (rounds {_range(p2[key])})" if key in p2 else ""


def _range(pair: list[float]) -> str:
    return f"{pair[0]:.2f}–{pair[1]:.2f}x"


def _p9_targets(p9: dict) -> list[tuple[str, str, bool]]:
    hung, refused, base = p9["hung"], p9["refused"], p9["healthy_pass_through"]
    return [
        (
            "P9 Redis hung: p50 <= 2 x healthy pass-through",
            f"{hung['p50_ms']:.1f} vs {base['p50_ms']:.1f} ms ({hung['ratio_p50']:.2f}x)",
            hung["ratio_p50"] <= 2,
        ),
        (
            "P9 Redis refused: p50 <= 2 x healthy pass-through",
            f"{refused['p50_ms']:.1f} vs {base['p50_ms']:.1f} ms ({refused['ratio_p50']:.2f}x)",
            refused["ratio_p50"] <= 2,
        ),
        (
            "P9 no errors, Redis hung or refused",
            f"hung {hung['errors']}, refused {refused['errors']}",
            hung["errors"] == refused["errors"] == 0,
        ),
        (
            "P9 buffered again within seconds",
            f"{refused['seconds_until_buffered_again']} s / {hung['seconds_until_buffered_again']} s",
            max(refused["seconds_until_buffered_again"], hung["seconds_until_buffered_again"]) <= 5,
        ),
    ]


def table(results: dict) -> str:
    rows = targets(results)
    width = max(len(target) for target, _, _ in rows)
    lines = [f"{'target'.ljust(width)}  {'measured':<34} met"]
    lines += [f"{target.ljust(width)}  {measured:<34} {'yes' if met else 'NO'}" for target, measured, met in rows]
    return "\n".join(lines)


def write(results: dict, latencies: dict, *, suffix: str) -> list[Path]:
    OUT.mkdir(parents=True, exist_ok=True)
    """Write the results and redraw the plots whose figures this run measured (BENCH_ONLY keeps the rest)."""
    slim = json.loads(json.dumps(results))
    for mode in ("off", "on"):
        slim.get("P3", {}).get(mode, {}).pop("latencies", None)  # plotted, too bulky to keep
    slim.get("P9", {}).pop("series", None)
    (OUT / f"results{suffix}.json").write_text(json.dumps(slim, indent=2) + "\n")
    paths = []
    if "series" in results.get("P9", {}):
        paths.append(_plot_degraded(results, suffix))
    if "latencies" in results.get("P3", {}).get("on", {}):
        from bench import burst

        paths += [_plot_insert_rate(results, suffix), _plot_depth(results, suffix), burst.plot(results, suffix)]
        if latencies:
            paths.append(_plot_latency(results, latencies, suffix))
    if "memory" in results.get("P6", {}):
        paths.append(_plot_soak(results, suffix))
    return paths


def _plot_insert_rate(results: dict, suffix: str) -> Path:
    fig, ax = plt.subplots(figsize=(9, 4))
    for mode, colour in (("off", "tab:red"), ("on", "tab:blue")):
        rates = results["P3"][mode]["insert_rate"]
        ax.step([t for t, _ in rates], [c for _, c in rates], where="post", color=colour, label=f"mollifier {mode}")
    cap = results["P3"]["on"]["drain_cap"]
    ax.axhline(cap, color="tab:blue", linestyle=":", label=f"drain cap {cap}/s")
    ax.set(
        xlabel="seconds since the first insert",
        ylabel="rows inserted per second",
        title="P3: Postgres insert rate during a burst",
    )
    ax.legend()
    return _save(fig, f"insert_rate{suffix}.png")


def _plot_depth(results: dict, suffix: str) -> Path:
    fig, ax1 = plt.subplots(figsize=(9, 4))
    for mode, colour in (("off", "tab:red"), ("on", "tab:blue")):
        timeline = results["P3"][mode]["timeline"]
        ax1.plot(
            [s[0] for s in timeline],
            [s[2] for s in timeline],
            color=colour,
            alpha=0.5,
            label=f"active PG connections ({mode})",
        )
    ax2 = ax1.twinx()
    timeline = results["P3"]["on"]["timeline"]
    ax2.plot([s[0] for s in timeline], [s[3] for s in timeline], color="black", label="buffer depth (on)")
    ax1.set(
        xlabel="seconds since the burst started",
        ylabel="active Postgres connections",
        title="P3: buffer depth and database load",
    )
    ax2.set_ylabel("runs waiting in Redis")
    fig.legend(loc="upper right")
    return _save(fig, f"buffer_depth{suffix}.png")


def _plot_latency(results: dict, latencies: dict, suffix: str) -> Path:
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for mode, values in latencies.items():
        ordered = sorted(values)
        ax1.plot(ordered, [i / len(ordered) for i in range(len(ordered))], label=mode)
    ax1.set(xscale="log", xlabel="latency (ms, log)", ylabel="fraction of requests", title="P1: trigger latency CDF")
    ax1.legend()
    for mode, colour in (("off", "tab:red"), ("on", "tab:blue")):
        ordered = sorted(results["P3"][mode]["latencies"])
        ax2.plot(
            ordered, [i / len(ordered) for i in range(len(ordered))], color=colour, label=f"burst, mollifier {mode}"
        )
    ax2.set(xscale="log", xlabel="latency (ms, log)", title="P3: burst trigger latency CDF")
    ax2.legend()
    return _save(fig, f"latency{suffix}.png")


def _plot_soak(results: dict, suffix: str) -> Path:
    soak = results["P6"]
    fig, ax1 = plt.subplots(figsize=(9, 4))
    ax1.plot([t for t, _ in soak["depth"]], [d for _, d in soak["depth"]], color="black", label="runs waiting in Redis")
    ax2 = ax1.twinx()
    ax2.plot(
        [t for t, _ in soak["memory"]],
        [m / 1e6 for _, m in soak["memory"]],
        color="tab:orange",
        label="Redis memory over baseline (MB)",
    )
    ax1.set(xlabel="seconds", ylabel="runs waiting", title=f"P6: {soak['seconds']} s soak, two drainers")
    ax2.set_ylabel("MB")
    fig.legend(loc="upper right")
    return _save(fig, f"soak{suffix}.png")


def _plot_degraded(results: dict, suffix: str) -> Path:
    p9 = results["P9"]
    modes = ("healthy_pass_through", "healthy_mollified", "refused", "hung")
    fig, axes = plt.subplots(1, len(modes), figsize=(13, 3.6), sharey=True)
    for ax, mode in zip(axes, modes):
        points = p9["series"][mode]
        ax.scatter([t for t, _ in points], [ms for _, ms in points], s=2, alpha=0.4)
        ax.axvline(p9["warmup_s"], color="grey", linestyle=":")
        ax.set(title=mode.replace("_", " "), xlabel="seconds", yscale="log")
    axes[0].set_ylabel("trigger latency (ms, log)")
    fig.suptitle("P9: triggers with the buffer's Redis healthy, refused and hung (SIGSTOP)")
    return _save(fig, f"degraded{suffix}.png")


def markdown_p9(results: dict) -> str:
    """The degraded-modes figure as a Markdown table (docs/BENCHMARKS.md)."""
    p9 = results["P9"]
    lines = [
        f"| Redis | trigger p50 ms | p99 ms | req/s | vs healthy pass-through (p50 / p99 / req/s) | buffered | errors | first {p9['warmup_s']:g} s over 250 ms | slowest ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    names = {
        "healthy_pass_through": "healthy, pass-through (tenant not enrolled)",
        "healthy_mollified": "healthy, mollified (enrolled, tripped)",
        "refused": "refused (killed), enrolled",
        "hung": "hung (SIGSTOP), enrolled",
    }
    for mode, name in names.items():
        f = p9[mode]
        lines.append(
            f"| {name} | {f['p50_ms']} | {f['p99_ms']} | {f['throughput']:,.0f} | "
            f"{f['ratio_p50']:.2f} / {f['ratio_p99']:.2f} / {f['ratio_throughput']:.2f} | {f['buffered']:,} | "
            f"{f['errors']} | {f['first_seconds_over_250ms']} | {f['max_ms']:,.0f} |"
        )
    return "\n".join(lines)


def _save(fig, name: str) -> Path:
    fig.tight_layout()
    path = OUT / name
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def markdown(results: dict) -> str:
    """The figures as Markdown tables (docs/BENCHMARKS.md quotes them)."""
    p1, p2, p4, p5, p6 = (results[k] for k in ("P1", "P2", "P4", "P5", "P6"))
    lines = ["| target | measured | met |", "|---|---|---|"]
    lines += [f"| {target} | {measured} | {'yes' if met else '**no**'} |" for target, measured, met in targets(results)]
    lines += [
        "",
        "**P1** trigger throughput, SDK-shaped (wrk), one server (gunicorn, 2 sync workers), "
        f"{p1['concurrency']} connections, {p1['rounds']} rounds of {p1['seconds_per_mode_per_round']} s per "
        "endpoint, taking turns; req/s is the median of the rounds, the ratio's range is each round's own:",
        "",
        "| endpoint | req/s (median) | vs no-op (rounds) | p50 ms | p99 ms | errors | wrk CPU (share of the machine) |",
        "|---|---|---|---|---|---|---|",
    ]
    for mode, name in (
        ("noop", "no-op DRF view"),
        ("noop_redis", "no-op + one Redis GET"),
        ("pass_through", "trigger, pass-through"),
        ("mollified", "trigger, mollified"),
    ):
        f = p1[mode]
        ratio = (
            f"{p1[f'ratio_{mode}_to_noop']:.2f} ({_range(p1[f'ratio_{mode}_to_noop_range'])})"
            if mode != "noop"
            else "1.00"
        )
        lines.append(
            f"| {name} | {f['throughput']:,.0f} | {ratio} | {f['p50_ms']} | {f['p99_ms']} | {f['errors']} | "
            f"{f['generator_cpu_s']:.1f} s ({f['generator_cpu_share']:.1%}) |"
        )
    lines += [
        "",
        f"**P2** draining {p2['entries']:,} buffered runs of {p2['environments']} environments"
        + (
            f", {p2['rounds']} rounds in which the writers take turns (median; vs COPY: each round's own ratio, "
            "median and min–max):"
            if "rounds" in p2
            else ":"
        ),
        "",
        "| writer | rows/s | vs COPY |",
        "|---|---|---|",
        f"| psycopg COPY of the same rows (ceiling) | {p2['copy_rows_per_s']:,} | 1.00 |",
        f"| drain, one drainer process | {p2['drain_rows_per_s']:,} | {p2['ratio_drain_to_copy']:.2f}"
        f"{_p2_range(p2, 'ratio_drain_to_copy_range')} |",
        f"| drain, two drainer processes | {p2['drain_rows_per_s_two_drainers']:,} | "
        f"{p2['ratio_two_drainers_to_copy']:.2f}{_p2_range(p2, 'ratio_two_drainers_to_copy_range')} |",
        *(
            [
                f"| drain, one drainer process, rows built from the entries (MOLLIFIER_STORE_ROWS=0, the default) | "
                f"{p2['drain_rows_per_s_no_rows']:,} | {p2['ratio_no_rows_to_copy']:.2f}"
                f"{_p2_range(p2, 'ratio_no_rows_to_copy_range')} |"
            ]
            if "drain_rows_per_s_no_rows" in p2
            else []
        ),
        f"| one row per transaction | {p2['single_row_tx_rows_per_s']:,} | {p2['single_row_tx_rows_per_s'] / p2['copy_rows_per_s']:.2f} |",
    ]
    if cpu := p2.get("cpu_us_per_row"):
        cores = results["machine"].get("usable_cores", results["machine"]["cores"])
        lines += [
            "",
            "CPU per row written (µs, from /proc over the same windows"
            + (", per part the median of the rounds" if "rounds" in p2 else "")
            + "; clients: the drainer processes, or the "
            f"COPY's own process), and the most the drain's CPU allows on {cores} cores:",
            "",
            "| writer | clients | Redis | Postgres | total | CPU ceiling (rows/s) | ceiling vs COPY |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, label in (
            ("copy", "COPY"),
            ("one_drainer", "one drainer"),
            ("two_drainers", "two drainers"),
            ("one_drainer_no_rows", "one drainer, rows not stored"),
        ):
            if name not in cpu:
                continue
            part = cpu[name]
            # A server elsewhere has no reading here: no total, and no ceiling to draw from it.
            ceiling = f"{cores * 1e6 / part['total']:,.0f}" if part["total"] else "n/a"
            versus = f"{cores * 1e6 / part['total'] / p2['copy_rows_per_s']:.2f}" if part["total"] else "n/a"
            shown = {key: "n/a" if value is None else value for key, value in part.items()}
            lines.append(
                f"| {label} | {shown['clients']} | {shown['redis']} | {shown['postgres']} | {shown['total']} | "
                f"{ceiling} | {versus} |"
            )
    lines += ["", "**P3**: see [P3: a burst as the database sees it](#p3-a-burst-as-the-database-sees-it) below."]
    lines += [
        "",
        f"**P4** Redis round trips per SDK-shaped trigger (a request key on every call), on the real server, "
        f"{p4['triggers']} triggers per case, counted with MONITOR:",
        "",
        "| case | round trips | goal | commands per trigger | answered buffered |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {P4_NAMES[name]} | {p4[name]} | {goal} | "
        f"{', '.join(f'{command} {n}' for command, n in p4['commands'][name].items()) or 'none'} | "
        f"{p4['buffered'][name]:,} |"
        for name, goal in P4_GOALS.items()
    ]
    small, large = results["sizes"]["p5_small"], results["sizes"]["p5_large"]
    lines += [
        "",
        "**P5** memory:",
        "",
        "| figure | value |",
        "|---|---|",
        f"| drainer peak RSS draining {small:,} | {p5[f'drainer_peak_rss_mb_{small}']} MB |",
        f"| drainer peak RSS draining {large:,} | {p5[f'drainer_peak_rss_mb_{large}']} MB |",
        f"| Redis bytes per buffered run ({p5['redis_entries']:,} runs) | {p5['redis_bytes_per_entry']:,} |",
        f"| its snapshot (JSON) | {p5['snapshot_bytes']:,} bytes |",
    ]
    lines += [
        "",
        f"**P6** soak: {p6['seconds']} s of over-threshold triggers at concurrency {results['sizes']['p6_concurrency']} "
        "with two drainers:",
        "",
        "| figure | value |",
        "|---|---|",
        f"| triggers answered | {p6['requests']:,} ({p6['throughput']:,.0f}/s), {p6['errors']} errors, p99 {p6['p99_ms']} ms |",
        f"| of them buffered | {p6['buffered']:,} |",
        f"| max runs waiting in Redis | {p6['max_buffer_depth']:,} |",
        f"| max Redis memory over baseline | {p6['max_redis_bytes_over_baseline'] / 1e6:.1f} MB |",
        f"| rows = answered ids | {p6['exactly_once']} ({p6['rows']:,} rows) |",
        f"| load generator (wrk) CPU | {p6['generator_cpu_s']:.1f} s ({p6['generator_cpu_share']:.1%} of the machine) |",
    ]
    return "\n".join(lines)
