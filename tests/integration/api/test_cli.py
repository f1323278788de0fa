"""The client verbs of the ``attnserve`` console script, run as subprocesses against the server."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO_ROOT, ServerProcess
from tests.integration.api.helpers import digits, png

CLI_TIMEOUT_S = 120


def attnserve(server: ServerProcess, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service", *args, "--url", server.url],
        cwd=cwd, capture_output=True, text=True, timeout=CLI_TIMEOUT_S,
        env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin"},
    )


@pytest.fixture
def pictures(tmp_path: Path) -> list[Path]:
    paths = []
    for i, pixels in enumerate(digits(3, seed=11)):
        path = tmp_path / f"digit{i}.png"
        path.write_bytes(png(pixels))
        paths.append(path)
    return paths


def test_classify_prints_labels_per_file(server: ServerProcess, pictures: list[Path], tmp_path: Path) -> None:
    done = attnserve(server, "classify", *map(str, pictures), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 3
    for line, path in zip(lines, pictures, strict=True):
        # top 3 labels with probabilities; a trained model can print a sure "(1.000)"
        assert line.startswith(str(path)) and len(re.findall(r"\([01]\.\d{3}\)", line)) == 3


def test_classify_json_and_a_bad_file_fails_alone(server: ServerProcess, pictures: list[Path], tmp_path: Path) -> None:
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG not really")
    done = attnserve(server, "classify", str(pictures[0]), str(bad), str(pictures[1]), "--json", "--top-k", "2", cwd=tmp_path)
    assert done.returncode == 1  # one file failed
    rows = json.loads(done.stdout)
    assert [r["file"] for r in rows] == [str(pictures[0]), str(bad), str(pictures[1])]
    assert "INVALID_ARGUMENT" in rows[1]["error"] and "not a PNG or JPEG" in rows[1]["error"]
    assert len(rows[0]["labels"]) == 2 and len(rows[2]["labels"]) == 2


def test_classify_missing_file_is_a_usage_error(server: ServerProcess, tmp_path: Path) -> None:
    done = attnserve(server, "classify", str(tmp_path / "nope.png"), cwd=tmp_path)
    assert done.returncode == 2 and "no such file" in done.stderr


def test_generate_writes_a_grid_and_reproduces(server: ServerProcess, tmp_path: Path) -> None:
    done = attnserve(server, "generate", "--class", "3", "--count", "4", "--seed", "42", "-o", "grid.png",
                     "--columns", "2", "--scale", "2", "--out-dir", "each", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["seed"] == 42 and [i["seed"] for i in report["images"]] == [42, 43, 44, 45]
    assert {i["class_id"] for i in report["images"]} == {3}
    with Image.open(tmp_path / "grid.png") as grid:
        assert grid.format == "PNG" and grid.size == (2 * 64 + 3 * 2, 2 * 64 + 3 * 2)  # 2x2 tiles, padded
    again = attnserve(server, "generate", "--class", "3", "--seed", "44", "-o", "one.png", "--out-dir", "one",
                      cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "seed 44" in again.stdout
    first = np.asarray(Image.open(tmp_path / "each" / "seed_44.png"), np.int16)
    alone = np.asarray(Image.open(tmp_path / "one" / "seed_44.png"), np.int16)
    assert np.abs(first - alone).max() <= 1


def test_encode_text_and_ids(server: ServerProcess, tmp_path: Path) -> None:
    done = attnserve(server, "encode", "hi", "--ids", "1,80,2", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    assert rows[0]["ids"] == [1, ord("h") + 4, ord("i") + 4, 2] and rows[0]["tokens"] == ["<bos>", "h", "i", "<eos>"]
    assert rows[1]["ids"] == [1, 80, 2]
    assert all(len(r["embedding"]) == 128 and len(r["labels"]) == 3 for r in rows)
    human = attnserve(server, "encode", "hello world", cwd=tmp_path)
    assert human.returncode == 0 and human.stdout.startswith('"hello world": ') and "13 tokens" in human.stdout


def test_encode_without_input_is_a_usage_error(server: ServerProcess, tmp_path: Path) -> None:
    done = attnserve(server, "encode", cwd=tmp_path)
    assert done.returncode == 2 and "give TEXT or --ids" in done.stderr


def test_attention_generate_renders_overlays(server: ServerProcess, tmp_path: Path) -> None:
    done = attnserve(server, "attention", "generate", "--seed", "7", "--pixel", "16,16", "--pixel", "4,28",
                     "--scale", "4", "-o", "overlay.png", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert [q["pixel"] for q in report["queries"]] == [[16, 16], [4, 28]]
    for query in report["queries"]:
        weights = np.asarray(query["weights"])
        assert weights.shape == (8, 8) and weights.sum() == pytest.approx(1.0, abs=1e-4)
    with Image.open(tmp_path / "overlay.png") as overlay:
        assert overlay.mode == "RGB" and overlay.size == (3 * 128 + 4 * 2, 128 + 2 * 2)  # image + 2 overlays
        colours = np.asarray(overlay).reshape(-1, 3)
        assert len(np.unique(colours, axis=0)) > 100  # a heatmap, not a blank sheet


def test_attention_generate_default_pixels(server: ServerProcess, tmp_path: Path) -> None:
    done = attnserve(server, "attention", "generate", "--seed", "7", "-o", "a.png", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("looks most at key cell") == 4


def test_attention_encode_renders_heads_by_tokens(server: ServerProcess, tmp_path: Path) -> None:
    done = attnserve(server, "attention", "encode", "attention", "--query", "3", "-o", "heads.png", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    weights = np.asarray(report["weights"])
    assert report["heads"] == 4 and weights.shape == (4, len("attention") + 2)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-4)  # one query row per head
    with Image.open(tmp_path / "heads.png") as heads:
        assert heads.format == "PNG" and heads.width > 11 * 20 and heads.height > 4 * 20


def test_attention_classify_draws_cbam_spatial_maps(server: ServerProcess, pictures: list[Path], tmp_path: Path) -> None:
    done = attnserve(server, "attention", "classify", str(pictures[0]), "--model", "cbam_classifier",
                     "--scale", "4", "-o", "maps.png", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert [np.asarray(m).shape for m in report["spatial_attention"]] == [(28, 28), (14, 14), (7, 7)]
    assert len(report["labels"]) == 3
    with Image.open(tmp_path / "maps.png") as sheet:
        assert sheet.size == (4 * 112 + 5 * 2, 112 + 2 * 2)  # the input and one overlay per stage
        assert len(np.unique(np.asarray(sheet).reshape(-1, 3), axis=0)) > 100


def test_attention_classify_draws_the_stn_crop(server: ServerProcess, pictures: list[Path], tmp_path: Path) -> None:
    done = attnserve(server, "attention", "classify", str(pictures[0]), "--model", "stn_classifier",
                     "--scale", "2", "-o", "stn.png", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert np.asarray(report["theta"]).shape == (2, 3)
    with Image.open(tmp_path / "stn.png") as sheet:
        assert sheet.size == (2 * 80 + 3 * 2, 80 + 2 * 2)  # the outlined 40x40 input and the crop


def test_attention_classify_draws_sasa_windows(server: ServerProcess, pictures: list[Path], tmp_path: Path) -> None:
    done = attnserve(server, "attention", "classify", str(pictures[0]), "--model", "sasa_classifier",
                     "--pixel", "14,14", "--scale", "2", "-o", "sasa.png", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    [query] = json.loads(done.stdout)["attention"]
    weights = np.asarray(query["weights"])
    assert query["pixel"] == [14, 14] and weights.ndim == 3 and weights.shape[1] == weights.shape[2]
    np.testing.assert_allclose(weights.sum(axis=(1, 2)), 1.0, atol=1e-4)
    with Image.open(tmp_path / "sasa.png") as sheet:
        assert sheet.size == (2 * 56 + 3 * 2, 56 + 2 * 2)  # the input and one window panel


def test_attention_classify_needs_a_model_with_maps(server: ServerProcess, pictures: list[Path], tmp_path: Path) -> None:
    done = attnserve(server, "attention", "classify", str(pictures[0]), "--model", "se_cnn_classifier", cwd=tmp_path)
    assert done.returncode == 2 and "no spatial_attention, theta or window_attention" in done.stderr


def test_a_server_error_is_reported_with_its_status(server: ServerProcess, tmp_path: Path) -> None:
    done = attnserve(server, "generate", "--class", "no-such-class", cwd=tmp_path)
    assert done.returncode == 1
    assert "attnserve generate: INVALID_ARGUMENT: unknown class labels" in done.stderr


def test_health_and_models_still_work(server: ServerProcess, tmp_path: Path) -> None:
    assert attnserve(server, "health", cwd=tmp_path).returncode == 0
    models = attnserve(server, "models", "--json", cwd=tmp_path)
    assert {m["name"] for m in json.loads(models.stdout)} >= {"sagan_generator", "se_cnn_classifier", "transformer_encoder",
                                                            "cbam_classifier"}
