"""The benchmark harness runs end to end and writes well-formed results.

One tiny scenario (two concurrency levels of half a second) against the real server over the
default models, through the same command an operator runs, plus a few seconds of soak; the
checks are on the files (present, parseable, complete, machine named), never on how fast
anything was. The pure parts (perf_analyzer CSV, soak growth, target rows, sequence lengths)
are checked on fixed inputs.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("matplotlib", reason="bench/ plots need matplotlib (the dev extra)")

from bench.perf_analyzer import parse_csv  # noqa: E402
from bench.scenarios import ADDED_1MS, CEILING_85, PEER_5X, SCENARIOS  # noqa: E402
from bench.soak import soak_growth  # noqa: E402
from bench.workload import LengthDistribution, Workload  # noqa: E402
from tests.conftest import REPO_ROOT  # noqa: E402

RUN_TIMEOUT_S = 600
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MACHINE_KEYS = ("cpu_model", "logical_cores", "memory_gib", "os", "onnxruntime", "provider", "load_average_start")


def _bench(*args: str, out: Path, cache: Path, repository: Path) -> subprocess.CompletedProcess:
    argv = [
        sys.executable, "-m", "bench", "run", *args, "--out", str(out), "--cache", str(cache),
        "--default-repository", str(repository), "--provider", "cpu", "--note", "pytest smoke",
    ]
    return subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)


def _check_level(level: dict) -> None:
    assert level["requests"] > 0 and level["throughput_rps"] > 0
    assert level["errors"] == {}
    assert level["p50_ms"] <= level["p90_ms"] <= level["p95_ms"] <= level["p99_ms"] <= level["max_ms"]


@pytest.fixture(scope="module")
def smoke_run(model_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    root = tmp_path_factory.mktemp("bench")
    done = _bench(
        "--scenario", "se_cnn_default", "--drivers", "loadgen,api", "--concurrency", "1,4",
        "--duration", "0.5", "--warmup", "0.2", "--ceiling-seconds", "0.2", "--reference-seconds", "0.2", "--soak", "2",
        out=root / "results", cache=root / "cache", repository=model_repository,
    )
    return root / "results", done


def test_run_writes_json_markdown_and_plot(smoke_run) -> None:
    out, done = smoke_run
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    results = json.loads((out / "se_cnn_default.json").read_text())
    assert "error" not in results, results.get("traceback")
    assert all(results["machine"].get(key) is not None for key in MACHINE_KEYS), results["machine"]
    assert results["machine"]["provider"] == "cpu"
    assert results["model"]["name"] == "se_cnn_classifier" and results["model"]["max_batch_size"] > 0

    # The ceiling ran at every power of two up to max_batch_size, and names its settings.
    points = results["ceiling"]["points"]
    assert [p["batch_size"] for p in points][:2] == [1, 2] and points[-1]["batch_size"] == results["model"]["max_batch_size"]
    assert results["ceiling"]["best"]["throughput_rows_s"] == max(p["throughput_rows_s"] for p in points)
    assert results["ceiling"]["settings"]["intra_op_threads"] >= 1

    # Answers were checked against in-process ORT before timing; both surfaces were driven.
    assert results["checks"]["server_v2"]["ok"] and results["checks"]["server_api"]["ok"]
    for driver in ("loadgen", "api"):
        levels = results["drivers"][driver]["levels"]
        assert [lv["concurrency"] for lv in levels] == [1, 4]
        for level in levels:
            _check_level(level)
    assert results["server"]["rss"]["peak_mib"] > 0

    # Every target has a row with a status; the ones this run measured are decided.
    by_id = {}
    for row in results["targets"]:
        assert row["status"] in ("met", "missed", "not measured")
        by_id.setdefault(row["id"], []).append(row)
    assert {t.id for t in SCENARIOS["se_cnn_default"].targets} == set(by_id)
    assert by_id["added_latency_c1"][0]["status"] in ("met", "missed")  # loadgen at c=1 ran
    # ... against in-process batch 1 measured around that level, not only before the server.
    around = results["drivers"]["loadgen"]["levels"][0]["extra"]["inprocess_batch1"]
    assert around["runs"] >= 40 and around["before_p50_ms"] > 0 and around["after_p50_ms"] > 0
    assert "around the level" in by_id["added_latency_c1"][0]["measured"]
    assert "inprocess_batch1" not in results["drivers"]["api"]["levels"][0]["extra"]  # no target reads it
    assert by_id["rss_all_models"][0]["status"] in ("met", "missed")

    markdown = (out / "se_cnn_default.md").read_text()
    assert "## Targets" in markdown and "## Ceiling" in markdown and results["machine"]["cpu_model"] in markdown
    assert (out / "se_cnn_default.png").read_bytes()[:8] == PNG_MAGIC


def test_soak_samples_rss_and_reports_growth(smoke_run) -> None:
    out, done = smoke_run
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    results = json.loads((out / "soak.json").read_text())
    assert "error" not in results, results.get("traceback")
    assert len(results["server"]["rss_samples"]) >= 4
    _check_level(results["drivers"]["loadgen"]["levels"][0])
    assert {row["id"] for row in results["targets"]} == {"rss_all_models", "rss_flat"}
    assert (out / "soak.png").read_bytes()[:8] == PNG_MAGIC
    assert "| soak |" in (out / "summary.md").read_text()


# -- pure parts ----------------------------------------------------------------------------------
def test_added_latency_prefers_batch_1_measured_around_the_level() -> None:
    target = next(t for t in SCENARIOS["se_cnn_default"].targets if t.id == "added_latency_c1")
    ceiling = {"points": [{"batch_size": 1, "p50_ms": 0.5}]}
    around = {"concurrency": 1, "p50_ms": 2.0, "extra": {"inprocess_batch1": {"p50_ms": 1.5}}}
    plain = {"concurrency": 1, "p50_ms": 2.0, "extra": {}}
    results = {"ceiling": ceiling, "drivers": {"loadgen": {"levels": [around]}, "perf_analyzer": {"levels": [plain]}}}
    by_driver = {row["source"]: row for row in target.evaluate(results)}
    assert by_driver["loadgen"]["status"] == "met" and "+0.500 ms" in by_driver["loadgen"]["measured"]
    assert by_driver["perf_analyzer"]["status"] == "missed" and "+1.500 ms" in by_driver["perf_analyzer"]["measured"]


def test_perf_analyzer_csv_is_read_by_header(tmp_path: Path) -> None:
    path = tmp_path / "pa.csv"
    path.write_text(
        "Concurrency,Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,Server Compute Input,"
        "Server Compute Infer,Server Compute Output,Client Recv,p50 latency,p90 latency,p95 latency,p99 latency\n"
        "4,998.948,4,1738,1026,5,1151,4,1,3644,4901,5911,7900\n"
    )
    row = parse_csv(path)[4]
    assert float(row["Inferences/Second"]) == pytest.approx(998.948)
    assert int(row["p99 latency"]) == 7900


def test_soak_growth_compares_first_and_last_tenth() -> None:
    mib = 2**20
    flat = [(float(t), 300 * mib) for t in range(100)]
    assert soak_growth(flat, start_s=0.0)["growth_pct"] == 0.0
    growing = [(float(t), (300 + t) * mib) for t in range(100)]
    grown = soak_growth(growing, start_s=50.0)  # only the window after warm-up counts
    assert grown["baseline_mib"] == pytest.approx(352.0) and grown["end_mib"] == pytest.approx(397.0)
    assert soak_growth(flat[:5], start_s=0.0)["growth_pct"] is None


def _results(levels: dict[str, list[tuple[int, float, float, float]]], ceiling: list[tuple[int, float, float]]) -> dict:
    """Synthetic results: levels[driver] = [(concurrency, req/s, p50, p99)], ceiling = [(batch, p50, rows/s)]."""
    points = [{"batch_size": b, "p50_ms": p50, "throughput_rows_s": r} for b, p50, r in ceiling]
    return {
        "ceiling": {"points": points, "best": max(points, key=lambda p: p["throughput_rows_s"])},
        "drivers": {
            d: {"levels": [{"concurrency": c, "throughput_rps": r, "throughput_rows_s": r, "p50_ms": p50, "p99_ms": p99}
                           for c, r, p50, p99 in rows]}
            for d, rows in levels.items()
        },
    }


def test_targets_are_ratios_within_one_run() -> None:
    results = _results(
        {"loadgen": [(1, 900.0, 1.4, 3.0), (32, 1800.0, 17.0, 30.0)], "peer": [(32, 300.0, 90.0, 120.0)]},
        [(1, 0.5, 1000.0), (16, 7.0, 2000.0)],
    )
    [ceiling_row, pa_row] = CEILING_85.evaluate(results)
    assert ceiling_row["status"] == "met" and "90%" in ceiling_row["measured"]
    assert pa_row["status"] == "not measured"  # no perf_analyzer levels in this run
    assert ADDED_1MS.evaluate(results)[0]["status"] == "met"  # 1.4 - 0.5 = 0.9 ms
    assert PEER_5X.evaluate(results)[0]["status"] == "met"  # 6x, p99 30 < 120
    results["drivers"]["peer"]["levels"][0]["p99_ms"] = 20.0
    assert PEER_5X.evaluate(results)[0]["status"] == "missed"  # faster but a worse p99


def test_sequence_lengths_stay_within_the_model_limit(model_repository: Path) -> None:
    workload = Workload(model_repository / "transformer_encoder")
    rng = np.random.default_rng(3)
    lengths = [s["input_ids"].shape[1] for s in workload.pool(500, rng)]
    assert min(lengths) >= LengthDistribution().minimum and max(lengths) <= workload.max_length
    assert len(set(lengths)) > 20  # ragged, not one length
    # What the ceiling runs: requests padded to the longest, as the server's batcher pads them.
    requests = workload.pool(4, rng)
    batch = workload.batch(requests)
    own = [r["input_ids"].shape[1] for r in requests]
    assert batch["input_ids"].shape == (4, max(own)) == batch["attention_mask"].shape
    assert batch["attention_mask"].sum(axis=1).tolist() == own


def test_profile_summary_counts_threads_and_functions(tmp_path: Path) -> None:
    """py-spy's collapsed stacks (``frame;frame count``) become per-thread and per-function
    shares: a function counts once per sample however deep it recurses."""
    from bench.profile import markdown, summarise

    loop = "_run_module_as_main (<frozen runpy>:198);BaseEventLoop.run_forever (asyncio/base_events.py:607)"
    worker = "Thread._bootstrap (threading.py:1002);OrtRunner._execute (service/runtime/runner.py:140)"
    stacks = tmp_path / "s.stacks.txt"
    stacks.write_text(
        f"{loop};Handle._run (asyncio/events.py:80) 30\n"
        f"{loop};decode_request (service/codec/v2.py:38);decode_request (service/codec/v2.py:53) 10\n"
        f"{worker};Session.run (onnxruntime/capi/onnxruntime_inference_collection.py:395) 60\n"
        "not a stack line\n"
    )
    summary = summarise(stacks)
    assert summary.samples == 100
    assert dict(summary.threads) == {
        "onnxruntime executor (session.run and its bookkeeping)": 60,
        "asyncio event loop (gRPC, codecs, batcher)": 40,
    }
    own = dict(summary.self_time)
    assert own["Session.run (onnxruntime_inference_collection.py)"] == 60
    assert own["Handle._run (events.py)"] == 30
    assert own["decode_request (v2.py)"] == 10
    total = dict(summary.total_time)
    assert total["decode_request (v2.py)"] == 10  # recursion is not double-counted
    assert total["BaseEventLoop.run_forever (base_events.py)"] == 40
    text = markdown(summary, "t")
    assert "| onnxruntime executor (session.run and its bookkeeping) | 60.0% |" in text
