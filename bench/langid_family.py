"""The attention family side by side, in one run (issue 15).

``python -m bench.langid_family --out bench/results/langid_family``

Every member (and the transformer encoder, and the char n-gram Naive Bayes baseline) on the
same held-out phrases: accuracy of the *exported* ONNX graph (what the server runs), parameter
count (the shipped safetensors), ONNX Runtime latency at batch 1 and 32 (one intra-op thread,
median of many runs, the bench process), and the served p50 at concurrency 1 (v2 ModelInfer,
one phrase per request, tritonclient, the real server on loopback). The pair model answers a
different question ("same language?" on pairs of phrases), so it is its own row, with pair
accuracy. Writes ``<out>.json`` and ``<out>.md``; the cards and the README table are made from
the JSON (``python -m bench.langid_family --cards`` rewrites the cards from it).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.machine import describe as describe_machine
from bench.machine import load_average, one_line

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "bench" / "results" / "langid_family"
ENCODER = "transformer_encoder"
CLASSIFIERS = ("langid_dot", "langid_additive", "langid_mha")
PAIR = "langid_pair"
ATTENTION = {
    ENCODER: "4 layers of 4-head self-attention, mean-pooled",
    "langid_dot": "scaled dot pooling, 1 head",
    "langid_additive": "additive (Bahdanau) pooling, 1 head",
    "langid_mha": "4-head self-attention + 4-head pooling",
    PAIR: "cross-attention (query over source), 1 head",
}
B1_RUNS, B32_RUNS, SERVED_REQUESTS = 300, 60, 300


def _session(path: Path):  # type: ignore[no-untyped-def]
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _batches(rows: list[list[int]], size: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Length-sorted batches (ids, original positions) padded with 0, as the batcher pads."""
    order = np.argsort([len(r) for r in rows], kind="stable")
    out = []
    for start in range(0, len(order), size):
        chosen = order[start : start + size]
        longest = max(len(rows[i]) for i in chosen)
        ids = np.zeros((len(chosen), longest), np.int64)
        for j, i in enumerate(chosen):
            ids[j, : len(rows[i])] = rows[i]
        out.append((ids, chosen))
    return out


def _feed(model: str, ids: np.ndarray, source: np.ndarray | None = None) -> dict[str, np.ndarray]:
    if model == PAIR:
        assert source is not None
        return {"query_ids": ids, "source_ids": source}
    return {"input_ids": ids, "attention_mask": (ids != 0).astype(np.int64)}


def _predict(session: Any, model: str, rows: list[list[int]]) -> np.ndarray:
    predicted = np.empty(len(rows), np.int64)
    for ids, chosen in _batches(rows, 256):
        logits = session.run(["logits"], _feed(model, ids))[0]
        predicted[chosen] = logits.argmax(axis=1)
    return predicted


def _predict_pairs(session: Any, queries: list[list[int]], sources: list[list[int]]) -> np.ndarray:
    predicted = np.empty(len(queries), np.int64)
    for ids, chosen in _batches(queries, 256):
        longest = max(len(sources[i]) for i in chosen)
        source = np.zeros((len(chosen), longest), np.int64)
        for j, i in enumerate(chosen):
            source[j, : len(sources[i])] = sources[i]
        predicted[chosen] = session.run(["logits"], _feed(PAIR, ids, source))[0].argmax(axis=1)
    return predicted


def _median_ms(session: Any, feed: dict[str, np.ndarray], runs: int) -> float:
    for _ in range(10):
        session.run(None, feed)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - start)
    return round(statistics.median(times) * 1e3, 3)


def _parameters(model: str) -> int | None:
    from safetensors.numpy import load_file

    path = REPO_ROOT / "export" / "weights" / f"{model}.safetensors"
    if not path.is_file():
        return None
    return int(sum(array.size for array in load_file(str(path)).values()))


def _served_p50(url: str, model: str, feeds: list[dict[str, np.ndarray]]) -> float:
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import np_to_triton_dtype

    def inputs(feed: dict[str, np.ndarray]) -> list:
        items = []
        for name, array in feed.items():
            item = grpcclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
            item.set_data_from_numpy(array)
            items.append(item)
        return items

    prepared = [inputs(f) for f in feeds]
    with grpcclient.InferenceServerClient(url) as client:
        for request in prepared[:20]:
            client.infer(model, request)
        times = []
        for i in range(SERVED_REQUESTS):
            start = time.perf_counter()
            client.infer(model, prepared[i % len(prepared)])
            times.append(time.perf_counter() - start)
    return round(statistics.median(times) * 1e3, 3)


def _export(repository: Path, models: tuple[str, ...]) -> None:
    from export.cli import main as export_main

    flags = [part for m in models for part in ("--model", m)]
    if export_main(["--model-repository", str(repository), *flags]) != 0:
        raise SystemExit("export failed")


def measure(repository: Path | None, include_pair: bool) -> dict[str, Any]:
    from export.train import langid, langid_attention, langid_data

    models = (ENCODER, *CLASSIFIERS, *((PAIR,) if include_pair else ()))
    scratch = None
    if repository is None:
        scratch = tempfile.TemporaryDirectory(prefix="langid-family-")
        repository = Path(scratch.name)
        _export(repository, models)
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    load_at_start = load_average()
    data = langid_data.build_splits()
    encoded = {split: langid_data.encode(getattr(data, split).texts) for split in ("new_phrases", "unseen_words")}
    rng = np.random.default_rng(15)
    sample = [encoded["new_phrases"][i] for i in rng.choice(len(encoded["new_phrases"]), 32, replace=False)]
    median_row = sorted(sample, key=len)[16]
    b32, _ = _batches(sample, 32)[0]
    rows: list[dict[str, Any]] = []
    sessions = {m: _session(repository / m / "1" / "model.onnx") for m in models}
    for model in (ENCODER, *CLASSIFIERS):
        session = sessions[model]
        accuracy = {
            split: round(float((_predict(session, model, encoded[split]) == getattr(data, split).labels).mean()), 4)
            for split in encoded
        }
        rows.append({
            "model": model, "attention": ATTENTION[model], **accuracy, "parameters": _parameters(model),
            "ort_b1_ms": _median_ms(session, _feed(model, np.asarray([median_row], np.int64)), B1_RUNS),
            "ort_b32_ms": _median_ms(session, _feed(model, b32), B32_RUNS),
        })
    baseline = langid.baseline(data)
    nb = baseline.pop("model")
    rows.append({
        "model": "naive_bayes", "attention": f"none ({nb}, alpha {baseline['alpha']})",
        "new_phrases": baseline["new_phrases"]["accuracy"], "unseen_words": baseline["unseen_words"]["accuracy"],
        "parameters": None, "ort_b1_ms": None, "ort_b32_ms": None, "served_p50_ms": None,
    })
    pair_row = None
    if include_pair:
        session = sessions[PAIR]
        accuracy = {}
        for offset, split in enumerate(("new_phrases", "unseen_words")):
            pairs = langid_attention.pair_split(getattr(data, split), langid_attention.PAIR_TEST_SEED + offset)
            q, s = langid_data.encode(pairs["queries"]), langid_data.encode(pairs["sources"])
            accuracy[split] = round(float((_predict_pairs(session, q, s) == pairs["same"]).mean()), 4)
        source_b32, _ = _batches(list(reversed(sample)), 32)[0]
        pair_row = {
            "model": PAIR, "attention": ATTENTION[PAIR], **accuracy, "parameters": _parameters(PAIR),
            "ort_b1_ms": _median_ms(session, _feed(PAIR, np.asarray([median_row], np.int64),
                                                   np.asarray([sample[0]], np.int64)), B1_RUNS),
            "ort_b32_ms": _median_ms(session, _feed(PAIR, b32, source_b32), B32_RUNS),
        }

    from bench.server import AttnServer

    with tempfile.TemporaryDirectory(prefix="langid-family-server-") as logs:
        server = AttnServer(repository, Path(logs) / "server.log",
                            flags=[part for m in models for part in ("--load-model", m)])
        server.start()
        try:
            server.wait_ready()
            feeds = [_feed(ENCODER, np.asarray([r], np.int64)) for r in sample]
            for row in rows:
                if row["model"] != "naive_bayes":
                    row["served_p50_ms"] = _served_p50(server.url, row["model"], feeds)
            if pair_row is not None:
                pair_feeds = [_feed(PAIR, np.asarray([a], np.int64), np.asarray([b], np.int64))
                              for a, b in zip(sample, reversed(sample))]
                pair_row["served_p50_ms"] = _served_p50(server.url, PAIR, pair_feeds)
        finally:
            server.stop()
    if scratch is not None:
        scratch.cleanup()
    return {
        "started": started,
        "machine": describe_machine("cpu"),
        "load_average": {"start": load_at_start, "end": load_average()},
        "command": "python -m bench.langid_family --out bench/results/langid_family",
        "data": {"new_phrases": len(data.new_phrases), "unseen_words": len(data.unseen_words),
                 "train_phrases": len(data.train)},
        "method": {
            "accuracy": "the exported ONNX graph on every phrase of both test splits (length-sorted batches of 256)",
            "ort": f"onnxruntime CPU, 1 intra-op thread, median of {B1_RUNS} (batch 1, a median-length phrase) "
                   f"and {B32_RUNS} (batch 32 phrases padded to the longest) runs",
            "served": f"median of {SERVED_REQUESTS} sequential v2 ModelInfer calls (tritonclient gRPC, one phrase "
                      "each, c=1) against `python -m service serve` on loopback, default config",
        },
        "rows": rows,
        "pair": pair_row,
    }


def markdown(results: dict[str, Any]) -> str:
    from export.train.family_card import comparison_table

    lines = [
        "# The attention family side by side (one run)",
        "",
        f"Machine: {one_line(results['machine'])}; load average {results['load_average']['start']} at start, "
        f"{results['load_average']['end']} at end; {results['started']}.",
        "",
        comparison_table(results),
        "",
        f"Held-out phrases: {results['data']['new_phrases']:,} new phrases and {results['data']['unseen_words']:,} "
        "phrases of unseen words (the transformer encoder's splits). " + " ".join(
            f"{k.capitalize()}: {v}." for k, v in results["method"].items()),
    ]
    if results.get("pair"):
        p = results["pair"]
        lines += [
            "",
            f"`{PAIR}` ({p['attention']}, {p['parameters']:,} parameters) answers \"same language?\" on pairs "
            f"(each test phrase with a partner, half from its language): {p['new_phrases']:.2%} on pairs of new "
            f"phrases, {p['unseen_words']:.2%} on pairs of unseen-word phrases; ORT b1 {p['ort_b1_ms']:.2f} ms, "
            f"b32 {p['ort_b32_ms']:.2f} ms, served p50 c=1 {p['served_p50_ms']:.2f} ms.",
        ]
    lines += ["", f"Reproduce: `{results['command']}`."]
    return "\n".join(lines) + "\n"


def write_cards(results_path: Path) -> None:
    """Rewrite each member's card from its metrics file with the comparison section."""
    from export.train import cards, common

    for name in (*CLASSIFIERS, PAIR):
        metrics_path = common.DEFAULT_OUT / f"{name}.metrics.json"
        if metrics_path.is_file():
            cards.write_card(common.DEFAULT_OUT, json.loads(metrics_path.read_text()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.langid_family", description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, help="an exported repository (default: export one)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results path without suffix")
    parser.add_argument("--no-pair", action="store_true", help="leave the pair model out")
    parser.add_argument("--cards", action="store_true", help="only rewrite the cards from <out>.json")
    args = parser.parse_args(argv)
    json_path = args.out.with_suffix(".json")
    if not args.cards:
        results = measure(args.repository, include_pair=not args.no_pair)
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(results, indent=2) + "\n")
        args.out.with_suffix(".md").write_text(markdown(results))
        print(markdown(results))
    write_cards(json_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
