"""The scenarios and the targets each one reports against.

A scenario is one server configuration under one load: which repository (``default`` or
``benchmark`` configs), which model is driven, which models the server loads, an optional
config edit (dynamic batching off, two instances), the concurrency sweep, and the drivers:

- ``loadgen``: bench/loadgen.py over the v2 surface (ModelInfer);
- ``api``: bench/loadgen.py over the attnserve API (Classify / Encode / Generate);
- ``perf_analyzer``: Triton's perf_analyzer over gRPC (v2);
- ``peer``: MLServer with adaptive batching on the same ONNX file, driven by bench/loadgen.py;
- ``floor``: bench/floor.py, a grpc.aio server that answers the real answer's bytes and does
  nothing else, driven by bench/loadgen.py at c=1 and the top level: the transport's share.

Targets are evaluated from the results of the same run (ratios, never absolute times across
runs, except where the issue names an absolute figure for this class of machine).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bench.repos import Edit, instances, no_dynamic_batching

SECNN, ENCODER, SAGAN = "se_cnn_classifier", "transformer_encoder", "sagan_generator"
CBAM, STN, SASA = "cbam_classifier", "stn_classifier", "sasa_classifier"  # issue 14
# The attention family (issue 15): each scenario serves its member alone.
LANGID_DOT, LANGID_ADDITIVE, LANGID_MHA, LANGID_PAIR = "langid_dot", "langid_additive", "langid_mha", "langid_pair"
DEFAULT_MODELS = (  # what `python -m export` writes
    SAGAN, SECNN, ENCODER, CBAM, STN, SASA, LANGID_DOT, LANGID_ADDITIVE, LANGID_MHA, LANGID_PAIR,
)
SWEEP = (1, 2, 4, 8, 16, 32, 64)
DRIVER_LABELS = {
    "loadgen": "attnserve, bench/loadgen.py (v2 ModelInfer)",
    "api": "attnserve, bench/loadgen.py (attnserve API)",
    "perf_analyzer": "attnserve, perf_analyzer (v2 gRPC)",
    "peer": "MLServer adaptive batching, bench/loadgen.py (v2 ModelInfer)",
    "floor": "transport floor: grpc.aio answering fixed bytes, no work (bench/floor.py), bench/loadgen.py",
}


# -- targets ----------------------------------------------------------------------------------
def _level(results: dict, driver: str, concurrency: int) -> dict | None:
    levels = results.get("drivers", {}).get(driver, {}).get("levels", [])
    return next((lv for lv in levels if lv["concurrency"] == concurrency), None)


def _row(target: "Target", status: str, measured: str, source: str = "") -> dict:
    return {"id": target.id, "description": target.description, "required": target.required,
            "measured": measured, "status": status, "source": source or "-"}


@dataclass(frozen=True)
class Target:
    id: str
    description: str
    required: str

    def evaluate(self, results: dict) -> list[dict]:
        raise NotImplementedError


@dataclass(frozen=True)
class CeilingFraction(Target):
    concurrency: int = 32
    minimum: float = 0.85
    drivers: tuple[str, ...] = ("loadgen", "perf_analyzer")

    def evaluate(self, results: dict) -> list[dict]:
        best = (results.get("ceiling") or {}).get("best")
        rows = []
        for driver in self.drivers:
            level = _level(results, driver, self.concurrency)
            if level is None or not best:
                rows.append(_row(self, "not measured", "no ceiling" if not best else f"no c={self.concurrency}", driver))
                continue
            fraction = level["throughput_rows_s"] / best["throughput_rows_s"]
            measured = (f"{fraction:.0%} ({level['throughput_rows_s']:.1f} of {best['throughput_rows_s']:.1f} rows/s, "
                        f"ceiling at batch {best['batch_size']})")
            rows.append(_row(self, "met" if fraction >= self.minimum else "missed", measured, driver))
        return rows


@dataclass(frozen=True)
class AddedLatency(Target):
    concurrency: int = 1
    maximum_ms: float = 1.0
    drivers: tuple[str, ...] = ("loadgen", "perf_analyzer")

    def evaluate(self, results: dict) -> list[dict]:
        points = (results.get("ceiling") or {}).get("points", [])
        single = next((p for p in points if p["batch_size"] == 1), None)
        rows = []
        for driver in self.drivers:
            level = _level(results, driver, self.concurrency)
            if level is None or single is None or level.get("p50_ms") is None:
                rows.append(_row(self, "not measured", "no ceiling at batch 1" if single is None else f"no c={self.concurrency}", driver))
                continue
            # Batch 1 measured right around this level when the run did (Batch1Reference),
            # else the ceiling's batch-1 point from before the server started.
            around = level.get("extra", {}).get("inprocess_batch1")
            reference, where = (around["p50_ms"], "around the level") if around else (single["p50_ms"], "ceiling")
            added = level["p50_ms"] - reference
            measured = f"{added:+.3f} ms (p50 {level['p50_ms']:.3f} ms vs in-process {reference:.3f} ms, {where})"
            floor = _level(results, "floor", self.concurrency)
            if floor and floor.get("p50_ms") is not None:
                # A server doing no work adds its whole round trip: the transport's share.
                measured += f"; transport floor {floor['p50_ms']:.3f} ms"
            rows.append(_row(self, "met" if added <= self.maximum_ms else "missed", measured, driver))
        return rows


@dataclass(frozen=True)
class MinThroughput(Target):
    concurrency: int = 64
    minimum_rps: float = 2000.0
    drivers: tuple[str, ...] = ("loadgen", "perf_analyzer")

    def evaluate(self, results: dict) -> list[dict]:
        rows = []
        for driver in self.drivers:
            level = _level(results, driver, self.concurrency)
            if level is None:
                rows.append(_row(self, "not measured", f"no c={self.concurrency}", driver))
                continue
            rps = level["throughput_rps"]
            rows.append(_row(self, "met" if rps >= self.minimum_rps else "missed", f"{rps:.0f} req/s", driver))
        return rows


@dataclass(frozen=True)
class PeerRatio(Target):
    concurrency: int = 32
    minimum_ratio: float = 5.0

    def evaluate(self, results: dict) -> list[dict]:
        ours, peer = _level(results, "loadgen", self.concurrency), _level(results, "peer", self.concurrency)
        if ours is None or peer is None or not peer["throughput_rps"]:
            why = results.get("skipped", {}).get("peer") or f"no c={self.concurrency} for both"
            return [_row(self, "not measured", why, "loadgen vs peer")]
        ratio = ours["throughput_rps"] / peer["throughput_rps"]
        lower_p99 = (ours["p99_ms"] or float("inf")) < (peer["p99_ms"] or float("inf"))
        measured = (f"{ratio:.2f}x ({ours['throughput_rps']:.0f} vs {peer['throughput_rps']:.0f} req/s); "
                    f"p99 {ours['p99_ms']:.2f} vs {peer['p99_ms']:.2f} ms")
        return [_row(self, "met" if ratio >= self.minimum_ratio and lower_p99 else "missed", measured, "loadgen vs peer")]


@dataclass(frozen=True)
class MaxRss(Target):
    maximum_bytes: float = 500e6  # "500 MB" (476.8 MiB)

    def evaluate(self, results: dict) -> list[dict]:
        server = results.get("server") or {}
        rss = server.get("rss") or {}
        if not rss.get("peak_mib"):
            return [_row(self, "not measured", "no RSS samples", "/proc VmRSS")]
        ready = server.get("rss_after_ready_mib")
        measured = f"peak {rss['peak_mib']:.0f} MiB" + (f" (idle after warm-up {ready:.0f} MiB)" if ready else "")
        return [_row(self, "met" if rss["peak_mib"] * 2**20 <= self.maximum_bytes else "missed", measured, "/proc VmRSS")]


@dataclass(frozen=True)
class RssGrowth(Target):
    maximum_pct: float = 5.0

    def evaluate(self, results: dict) -> list[dict]:
        soak = results.get("soak") or {}
        if soak.get("growth_pct") is None:
            return [_row(self, "not measured", "no soak", "/proc VmRSS")]
        measured = (f"{soak['growth_pct']:+.1f}% ({soak['baseline_mib']:.0f} -> {soak['end_mib']:.0f} MiB "
                    f"over {soak['window_s']:.0f} s)")
        return [_row(self, "met" if soak["growth_pct"] <= self.maximum_pct else "missed", measured, "/proc VmRSS")]


CEILING_85 = CeilingFraction("ceiling_c32", "throughput at c=32 (dynamic batching) vs best in-process ORT", ">= 85%")
ADDED_1MS = AddedLatency("added_latency_c1", "added latency at c=1: p50(service) - p50(in-process, batch 1)", "<= 1 ms")
SECNN_2000 = MinThroughput("throughput_c64", "single-image requests at c=64", ">= 2,000 req/s")
PEER_5X = PeerRatio("peer_c32", "throughput vs MLServer at c=32, with lower p99", ">= 5x, p99 lower")
RSS_500 = MaxRss("rss_all_models", "server RSS with every default model loaded", "<= 500 MB (476.8 MiB)")
SOAK_FLAT = RssGrowth("rss_flat", "server RSS growth over the soak (after warm-up)", "<= 5%")


# -- scenarios --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    base: str  # "default" | "benchmark"
    model: str
    serve_models: tuple[str, ...]
    concurrency: tuple[int, ...] = SWEEP
    drivers: tuple[str, ...] = ("loadgen", "perf_analyzer", "floor")
    edit: Edit | None = None
    edit_label: str = "as exported"
    targets: tuple[Target, ...] = field(default_factory=tuple)
    # Multiplies the per-level warm-up, window and perf_analyzer interval: a model that
    # answers a few requests a second needs longer windows to count enough of them.
    time_scale: float = 1.0

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "base": self.base, "model": self.model,
                "serve_models": list(self.serve_models), "config": self.edit_label,
                "concurrency": list(self.concurrency), "drivers": list(self.drivers), "time_scale": self.time_scale}


def _default(name: str, model: str, description: str, **kw: Any) -> Scenario:
    return Scenario(name, description, "default", model, DEFAULT_MODELS, **kw)


def _bench(name: str, model: str, description: str, **kw: Any) -> Scenario:
    return Scenario(name, description, "benchmark", model, (model,), **kw)


NOBATCH = dict(edit=no_dynamic_batching, edit_label="dynamic_batching removed")
TWO = dict(edit=instances(2), edit_label="instance_group count 2")

SCENARIOS: dict[str, Scenario] = {s.name: s for s in (
    _default("se_cnn_default", SECNN, "SE-CNN default (1x28x28), every default model loaded",
             drivers=("loadgen", "perf_analyzer", "api", "floor", "peer"), targets=(ADDED_1MS, SECNN_2000, PEER_5X, RSS_500)),
    _default("se_cnn_default_nobatch", SECNN, "SE-CNN default, dynamic batching off", targets=(ADDED_1MS,), **NOBATCH),
    _default("se_cnn_default_2inst", SECNN, "SE-CNN default, two instances", targets=(ADDED_1MS,), **TWO),
    _default("encoder_default", ENCODER, "Transformer encoder default, ragged token sequences",
             drivers=("loadgen", "perf_analyzer", "api", "floor"), targets=(ADDED_1MS, RSS_500)),
    _default("sagan_default", SAGAN, "SAGAN generator default (32x32)",
             drivers=("loadgen", "perf_analyzer", "api", "floor"), targets=(ADDED_1MS, RSS_500)),
    _default("cbam_default", CBAM, "CBAM classifier default (1x28x28, spatial maps as outputs)",
             drivers=("loadgen", "perf_analyzer", "api", "floor"), targets=(ADDED_1MS, RSS_500)),
    _default("stn_default", STN, "spatial transformer classifier default (1x40x40, theta and crop as outputs)",
             drivers=("loadgen", "perf_analyzer", "api", "floor"), targets=(ADDED_1MS, RSS_500)),
    _default("sasa_default", SASA, "stand-alone self-attention classifier default (1x28x28, window weights out)",
             drivers=("loadgen", "perf_analyzer", "api", "floor"), targets=(ADDED_1MS, RSS_500)),
    *(
        Scenario(f"{model}_default", f"{model} (attention family), ragged phrases, served alone", "default",
                 model, (model,), drivers=("loadgen", "perf_analyzer", "api", "floor"), targets=(ADDED_1MS, RSS_500))
        for model in (LANGID_DOT, LANGID_ADDITIVE, LANGID_MHA)
    ),
    Scenario("langid_pair_default", "langid_pair cross-attention, query and source of independent lengths",
             "default", LANGID_PAIR, (LANGID_PAIR,), drivers=("loadgen", "perf_analyzer", "floor"),
             targets=(ADDED_1MS, RSS_500)),
    _bench("se_cnn_benchmark", SECNN, "SE-CNN benchmark config (3x128x128)",
           drivers=("loadgen", "perf_analyzer", "floor", "peer"), targets=(CEILING_85, ADDED_1MS, PEER_5X)),
    _bench("se_cnn_benchmark_nobatch", SECNN, "SE-CNN benchmark config, dynamic batching off",
           targets=(ADDED_1MS,), **NOBATCH),
    _bench("se_cnn_benchmark_2inst", SECNN, "SE-CNN benchmark config, two instances", targets=(ADDED_1MS,), **TWO),
    _bench("encoder_benchmark", ENCODER, "Transformer encoder at BERT-base shape, ragged lengths up to 128",
           concurrency=SWEEP[:-1], time_scale=2.0, targets=(CEILING_85, ADDED_1MS)),
    _bench("encoder_benchmark_nobatch", ENCODER, "BERT-base encoder, dynamic batching off",
           concurrency=SWEEP[:-1], time_scale=2.0, targets=(ADDED_1MS,), **NOBATCH),
    _bench("encoder_benchmark_2inst", ENCODER, "BERT-base encoder, two instances",
           concurrency=SWEEP[:-1], time_scale=2.0, targets=(ADDED_1MS,), **TWO),
    _bench("sagan_benchmark", SAGAN, "SAGAN generator benchmark config (3x128x128)",
           concurrency=(1, 2, 4, 8, 16), time_scale=2.0, targets=(ADDED_1MS,)),
)}
