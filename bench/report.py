"""Results files: ``<name>.json`` (everything), ``<name>.md`` (tables), ``<name>.png`` (plot),
and ``summary.md`` over several scenarios (every target row, met or missed)."""

from __future__ import annotations

import json
from pathlib import Path

from bench import machine as machine_info
from bench import plot

STATUS = {"met": "met", "missed": "**MISSED**", "not measured": "not measured"}


def _f(value, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def write(results: dict, out: Path) -> dict[str, str]:
    out.mkdir(parents=True, exist_ok=True)
    name = results["scenario"]["name"]
    files = {"json": out / f"{name}.json", "markdown": out / f"{name}.md", "plot": out / f"{name}.png"}
    drawn = plot.rss_over_time(results, files["plot"]) if name == "soak" else plot.latency_vs_throughput(results, files["plot"])
    if drawn is None:
        files.pop("plot")
    for key, suffix in (("profile", ".svg"), ("profile_table", ".profile.md"), ("profile_stacks", ".stacks.txt")):
        if (out / f"{name}{suffix}").is_file() and results.get("profile"):
            files[key] = out / f"{name}{suffix}"
    results["files"] = {k: str(v) for k, v in files.items()}
    files["json"].write_text(json.dumps(results, indent=2, default=str) + "\n", encoding="utf-8")
    files["markdown"].write_text(markdown(results), encoding="utf-8")
    return results["files"]


def targets_table(rows: list[dict], scenario: str | None = None) -> list[str]:
    head = "| scenario | target | required | measured | source | status |" if scenario else "| target | required | measured | source | status |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for row in rows:
        cells = [row["description"], row["required"], row["measured"], row["source"], STATUS.get(row["status"], row["status"])]
        if scenario:
            cells.insert(0, scenario)
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def markdown(results: dict) -> str:
    scenario = results["scenario"]
    machine = results.get("machine", {})
    lines = [
        f"# {scenario['name']}",
        "",
        f"{scenario['description']}. Started {results.get('started_at')}, finished {results.get('finished_at')}.",
        "",
        f"- **Machine**: {machine_info.one_line(machine)}",
        f"- **Load average** (1/5/15 min) at start {machine.get('load_average_start')}, at end {machine.get('load_average_end')}"
        " — server, load generators and anything else share these cores.",
    ]
    if results.get("note"):
        lines.append(f"- **Note**: {results['note']}")
    model = results.get("model")
    if model:
        batching = model.get("dynamic_batching")
        batching_text = ("off" if not batching else
                         f"preferred {batching['preferred_batch_size']}, max delay {batching['max_queue_delay_microseconds']} us, "
                         f"queue {batching['max_queue_size']}")
        lines += [
            f"- **Model**: `{model['name']}` ({scenario.get('config')}), max_batch_size {model['max_batch_size']}, "
            f"{model['instance_count']} instance(s), dynamic batching {batching_text}; "
            f"inputs {model['inputs']}; ONNX {model.get('onnx_mib')} MiB",
        ]
        if model.get("sequence_lengths"):
            lines.append(f"- **Sequence lengths**: {model['sequence_lengths']}")
    if results.get("models"):
        lines.append(f"- **Models**: {', '.join(results['models'])}")
    settings = results.get("settings", {})
    lines.append(f"- **Method**: {json.dumps({k: v for k, v in settings.items() if v not in (None, [], {})})}")
    if results.get("error"):
        lines += ["", f"**Scenario failed**: `{results['error']}`", "", "```", results.get("traceback", "").strip()[-3000:], "```"]

    lines += ["", "## Targets", "", *targets_table(results.get("targets", []))]

    ceiling = results.get("ceiling")
    if ceiling:
        s = ceiling["settings"]
        lines += ["", "## Ceiling: in-process ONNX Runtime, same file and session settings",
                  "", f"{s['instances']} session(s) x {s['intra_op_threads']} intra-op thread(s), providers {s['providers']}.", "",
                  "| batch | runs | p50 ms | p99 ms | rows/s |", "|---|---|---|---|---|"]
        for p in ceiling["points"]:
            mark = " (best)" if ceiling.get("best") and p["batch_size"] == ceiling["best"]["batch_size"] else ""
            lines.append(f"| {p['batch_size']}{mark} | {p['runs']} | {_f(p['p50_ms'], 3)} | {_f(p['p99_ms'], 3)} | {_f(p['throughput_rows_s'], 1)} |")

    for name, driver in (results.get("drivers") or {}).items():
        lines += ["", f"## {driver['label']}", "",
                  "| concurrency | req/s | p50 ms | p90 ms | p95 ms | p99 ms | errors | server cores | client cores |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for lv in driver["levels"]:
            extra = lv.get("extra") or {}
            errors = ", ".join(f"{k} {v}" for k, v in (lv.get("errors") or {}).items()) or "0"
            lines.append(
                f"| {lv['concurrency']} | {_f(lv['throughput_rps'], 1)} | {_f(lv['p50_ms'], 3)} | {_f(lv['p90_ms'], 3)} | "
                f"{_f(lv['p95_ms'], 3)} | {_f(lv['p99_ms'], 3)} | {errors} | {_f(extra.get('server_cores'))} | "
                f"{_f(extra.get('client_cores'))} |"
            )
    prof = results.get("profile")
    if prof:
        share = lambda n: f"{n / max(1, prof['samples']):.1%}"  # noqa: E731
        lines += ["", "## Profile of the server during the loadgen sweep (py-spy)", "",
                  "Threads: " + ", ".join(f"{k} {share(v)}" for k, v in prof["threads"].items()) + ".",
                  "Most self time: " + ", ".join(f"`{k}` {share(v)}" for k, v in list(prof["self"].items())[:8]) + ".",
                  f"Full table: `{results['scenario']['name']}.profile.md`; flame graph: `.svg`."]
    if results.get("skipped"):
        lines += ["", "## Skipped", ""] + [f"- {k}: {v}" for k, v in results["skipped"].items()]
    server = results.get("server") or {}
    if server.get("rss"):
        lines += ["", "## Memory", "", f"- server VmRSS: {server['rss']}"]
        if (results.get("peer") or {}).get("rss"):
            lines.append(f"- peer VmRSS (MLServer and its worker): {results['peer']['rss']}")
        if results.get("soak"):
            lines.append(f"- soak: {results['soak']}")
    if results.get("checks"):
        lines += ["", "## Checks (answers compared with in-process ONNX Runtime before timing)", ""]
        lines += [f"- {k}: {v}" for k, v in results["checks"].items()]
    files = results.get("files") or {}
    if files:
        lines += ["", "Files: " + ", ".join(f"`{Path(v).name}`" for v in files.values())]
    return "\n".join(lines) + "\n"


def summary(all_results: list[dict], out: Path) -> Path:
    """``summary.md``: every scenario's targets in one table."""
    rows = []
    for results in all_results:
        name = results["scenario"]["name"]
        if results.get("error"):
            rows.append(f"| {name} | scenario failed: `{results['error'][:200]}` | | | | **FAILED** |")
        rows += targets_table(results.get("targets", []), name)[2:]
    machine = all_results[0].get("machine", {}) if all_results else {}
    text = "\n".join([
        "# attnserve benchmark summary", "",
        f"- **Machine**: {machine_info.one_line(machine)}" if machine else "",
        f"- **Scenarios**: {', '.join(r['scenario']['name'] for r in all_results)}", "",
        "| scenario | target | required | measured | source | status |", "|---|---|---|---|---|---|", *rows,
    ]) + "\n"
    path = out / "summary.md"
    path.write_text(text, encoding="utf-8")
    return path
