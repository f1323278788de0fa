"""PNG plots (matplotlib, Agg): latency p50/p99 against throughput as concurrency rises, and
RSS over time for the soak."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLOURS = {"loadgen": "tab:blue", "perf_analyzer": "tab:orange", "api": "tab:green", "peer": "tab:red"}


def latency_vs_throughput(results: dict, path: Path) -> Path | None:
    drivers = results.get("drivers") or {}
    if not drivers:
        return None
    fig, ax = plt.subplots(figsize=(10, 7.5), dpi=110)
    for name, driver in drivers.items():
        levels = [lv for lv in driver["levels"] if lv.get("p50_ms") is not None]
        if not levels:
            continue
        x = [lv["throughput_rps"] for lv in levels]
        colour = COLOURS.get(name)
        ax.plot(x, [lv["p50_ms"] for lv in levels], "o-", color=colour, label=f"{driver['label']}: p50")
        ax.plot(x, [lv["p99_ms"] for lv in levels], "s--", color=colour, alpha=0.7, label=f"{driver['label']}: p99")
        for lv, xi in zip(levels, x):
            ax.annotate(f"c{lv['concurrency']}", (xi, lv["p50_ms"]), textcoords="offset points", xytext=(3, -10),
                        fontsize=7, color=colour)
    best = (results.get("ceiling") or {}).get("best")
    if best:
        ax.axvline(best["throughput_rows_s"], color="grey", linestyle=":",
                   label=f"in-process ORT best: {best['throughput_rows_s']:.0f} rows/s (batch {best['batch_size']})")
        single = next((p for p in results["ceiling"]["points"] if p["batch_size"] == 1), None)
        if single:
            ax.axhline(single["p50_ms"], color="grey", linestyle="-.", linewidth=0.8,
                       label=f"in-process ORT p50 at batch 1: {single['p50_ms']:.2f} ms")
    ax.set_yscale("log")
    ax.set_xlabel("throughput (requests/s; one row per request)")
    ax.set_ylabel("latency (ms, log scale)")
    scenario = results["scenario"]
    machine = results.get("machine", {})
    ax.set_title(f"{scenario['name']}: {scenario['description']}\n"
                 f"{machine.get('cpu_model', '?')}, {machine.get('logical_cores', '?')} cores, "
                 f"provider {machine.get('provider', '?')}", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2, frameon=False)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def rss_over_time(results: dict, path: Path) -> Path | None:
    samples = (results.get("server") or {}).get("rss_samples") or []
    if not samples:
        return None
    fig, ax = plt.subplots(figsize=(9, 4), dpi=110)
    ax.plot([t for t, _ in samples], [m for _, m in samples], color="tab:blue", label="server VmRSS")
    soak = results.get("soak") or {}
    if soak.get("baseline_mib"):
        ax.axhline(soak["baseline_mib"] * 1.05, color="tab:red", linestyle="--", label="baseline + 5%")
    ax.axhline(500e6 / 2**20, color="grey", linestyle=":", label="500 MB")
    ax.set_xlabel("seconds since server start")
    ax.set_ylabel("MiB")
    ax.set_title(f"{results['scenario']['name']}: server RSS", fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
