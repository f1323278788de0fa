"""bench.peers and bench/peer: what each peer is configured with, the runner every peer calls,
the summary's arithmetic, and a short attnserve-only run that writes the results.

The peers themselves live in their own virtual environments (``python -m bench peer-setup``),
which the test machine does not build; what they are given is checked here: the Triton
config.pbtxt (Python backend, the same dynamic batcher, ragged inputs marked), MLServer's
adaptive batching (off for ragged inputs, which it cannot pad), KServe's flags. The runner is
ONNX Runtime only, so it runs here: a batch of requests of different lengths must give each
request what running it alone gives. Nothing is asserted about speed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from google.protobuf import text_format

from bench import peers as peers_bench
from bench.peer.base import PeerModel
from bench.peer.kserve import KServePeer
from bench.peer.mlserver import MLServerPeer
from bench.peer.onnx_batch import OnnxBatchRunner
from bench.peer.triton import TritonPeer
from bench.workload import Workload
from service.proto.inference import model_config_pb2 as mc
from tests.conftest import REPO_ROOT


def peer_model(repository: Path, name: str) -> PeerModel:
    return PeerModel.from_workload(Workload(repository / name), repository / name / "1" / "model.onnx", 1)


def test_triton_gets_attnserve_config_with_python_backend_and_same_batcher(model_repository: Path, tmp_path: Path) -> None:
    model = peer_model(model_repository, "transformer_encoder")
    peer = TritonPeer(model, tmp_path / "triton")
    config = mc.ModelConfig()
    text_format.Parse((tmp_path / "triton" / "repository" / model.name / "config.pbtxt").read_text(), config)
    assert config.backend == "python" and not config.platform
    assert config.max_batch_size == model.max_batch_size
    assert config.dynamic_batching.max_queue_delay_microseconds == model.max_queue_delay_us
    assert list(config.dynamic_batching.preferred_batch_size) == list(model.preferred_batch_sizes)
    ragged = {t.name for t in config.input if t.allow_ragged_batch}
    assert ragged == set(model.pad_values) and ragged
    assert not config.model_warmup
    assert config.parameters["bench.onnx_path"].string_value == str(model.onnx_path)
    assert (tmp_path / "triton" / "repository" / model.name / "1" / "model.py").is_file()
    assert f"--grpc-port={peer.grpc_port}" in peer.argv


def test_mlserver_batches_fixed_shapes_but_not_ragged_ones(model_repository: Path, tmp_path: Path) -> None:
    model = peer_model(model_repository, "se_cnn_classifier")
    MLServerPeer(model, tmp_path / "a")
    fixed = json.loads((tmp_path / "a" / "se_cnn_classifier" / "model-settings.json").read_text())
    assert fixed["max_batch_size"] == model.max_batch_size > 1
    assert fixed["max_batch_time"] == model.max_queue_delay_us / 1e6
    MLServerPeer(peer_model(model_repository, "transformer_encoder"), tmp_path / "b")
    ragged = json.loads((tmp_path / "b" / "transformer_encoder" / "model-settings.json").read_text())
    assert "max_batch_size" not in ragged


def test_kserve_is_started_with_its_own_flags(model_repository: Path, tmp_path: Path) -> None:
    peer = KServePeer(peer_model(model_repository, "se_cnn_classifier"), tmp_path / "k")
    argv = peer.argv
    assert argv[argv.index("--grpc_port") + 1] == str(peer.grpc_port)
    assert argv[argv.index("--model_name") + 1] == "se_cnn_classifier"
    assert argv[argv.index("--enable_latency_logging") + 1] == "false"


def test_runner_answers_each_ragged_request_as_if_alone(model_repository: Path) -> None:
    model = peer_model(model_repository, "transformer_encoder")
    runner = OnnxBatchRunner.from_json(str(model.onnx_path), model.runner_settings())
    requests = Workload(model_repository / model.name).pool(3, np.random.default_rng(7))
    lengths = {next(iter(r.values())).shape[-1] for r in requests}
    assert len(lengths) > 1, "the pool should hold sequences of different lengths"
    together = runner.run(requests)
    for request, batched in zip(requests, together):
        [alone] = runner.run([request])
        assert set(batched) == set(alone)
        for name in alone:
            assert batched[name].shape == alone[name].shape, name
            np.testing.assert_allclose(batched[name], alone[name], rtol=1e-4, atol=1e-5)


def test_summary_ratios_put_attnserve_over_each_peer() -> None:
    def levels(rows):
        return {"levels": [{"concurrency": c, "throughput_rps": r, "p50_ms": p50, "p99_ms": p99,
                            "server_cpu_us_per_request": cpu} for c, r, p50, p99, cpu in rows]}

    case = {"case": "x", "levels": [1, 32, 64], "systems": {
        "attnserve": levels([(1, 1000, 1.0, 2.0, 500), (32, 2000, 10.0, 20.0, 400), (64, 2100, 20.0, 40.0, 390)]),
        "triton": levels([(1, 800, 1.5, 2.5, 300), (32, 4000, 5.0, 10.0, 100), (64, 4200, 10.0, 20.0, 95)]),
    }}
    [row] = peers_bench.summary_rows(case)
    assert row["peer"] == "triton"
    assert row["req/s c=32"] == 0.5 and row["req/s c=64"] == 0.5
    assert row["p50 c=1"] == 1.5  # peer's p50 over ours: above 1, attnserve is faster
    assert row["CPU/request c=32"] == 0.25


def test_short_attnserve_only_run_writes_results_with_the_floors(tmp_path: Path) -> None:
    out = tmp_path / "peers"
    done = subprocess.run(
        [sys.executable, "-m", "bench.peers", "--cases", "identity", "--peers", "", "--warmup", "0.2",
         "--duration", "0.5", "--ceiling-seconds", "0.1", "--cache", str(tmp_path / "cache"), "--out", str(out)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(out.with_suffix(".json").read_text())
    [case] = results["cases"]
    assert case["checks"]["attnserve"]["ok"]
    rows = case["systems"]["attnserve"]["levels"]
    assert [r["concurrency"] for r in rows] == [1, 16, 64]
    assert all(r["requests"] > 0 and r["errors"] == {} and r["server_cpu_us_per_request"] > 0 for r in rows)
    assert "| attnserve | 64 |" in out.with_suffix(".md").read_text()
    # The no-work floors answer the bytes attnserve answered, in both server modes.
    for mode in ("floor aio", "floor sync"):
        assert all(r["requests"] > 0 and r["errors"] == {} for r in case["systems"][mode]["levels"]), mode
