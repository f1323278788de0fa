"""The runtime-cpu image itself: who it runs as, what it carries, its size, its HEALTHCHECK."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import time

import pytest

from tests.containers.conftest import CPU_IMAGE, ENV, PODMAN_DIR, podman, wait_for

pytestmark = pytest.mark.containers

# Measured 404 MB with three models, 512 MB with the ten of today (Debian minbase 129 MB + the venv with ONNX Runtime, numpy, grpcio,
# aiohttp, pillow + the three exported models). The bar leaves room for drift, not for torch
# (~700 MB on its own).
MAX_IMAGE_MB = 560
# Compose's run options (docker-compose.yml): read-only root, /tmp on tmpfs, no capabilities.
LOCKED_DOWN = ("--read-only", "--tmpfs", "/tmp", "--cap-drop", "ALL", "--security-opt", "no-new-privileges")


def run_python(code: str) -> str:
    return podman("run", "--rm", *LOCKED_DOWN, "--entrypoint", "python", CPU_IMAGE, "-c", code).stdout.strip()


def test_runs_as_uid_10001_without_torch(images) -> None:
    config = json.loads(podman("image", "inspect", CPU_IMAGE).stdout)[0]["Config"]
    assert config["User"] == "10001:10001"
    out = run_python("import os, importlib.util as u; print(os.getuid(), os.getgid(), u.find_spec('torch') is None)")
    assert out == "10001 10001 True"


def test_model_repository_is_baked_in_read_only_and_says_kind_cpu(images) -> None:
    out = run_python(
        "import os, pathlib; p = pathlib.Path('/models');"
        "print(sorted(d.name for d in p.iterdir() if (d / 'config.pbtxt').exists()));"
        "print(os.access(p, os.W_OK), os.access(p / 'se_cnn_classifier' / '1' / 'model.onnx', os.W_OK));"
        "print('kind: KIND_CPU' in (p / 'se_cnn_classifier' / 'config.pbtxt').read_text())"
    )
    models, writable, kind_cpu = out.splitlines()
    assert {"sagan_generator", "se_cnn_classifier", "transformer_encoder"} <= set(ast.literal_eval(models))
    assert writable == "False False" and kind_cpu == "True"


def test_image_is_smaller_than_the_stated_size(images, figures_file) -> None:
    size = int(podman("image", "inspect", "--format", "{{.Size}}", CPU_IMAGE).stdout.strip())
    figures_file("image", image=CPU_IMAGE, size_mb=round(size / 1e6, 1))
    assert size / 1e6 <= MAX_IMAGE_MB, f"{CPU_IMAGE} is {size / 1e6:.0f} MB"


def test_dockerfile_healthcheck_reports_healthy(images, figures_file) -> None:
    """The image's own HEALTHCHECK (not compose's). podman schedules health checks through
    systemd timers; where there is no systemd, `podman healthcheck run` runs the same command."""
    container = podman("run", "-d", *LOCKED_DOWN, "-e", "ATTNSERVE_HTTP_PORT=0", CPU_IMAGE).stdout.strip()
    started = time.monotonic()
    try:
        assert json.loads(podman("inspect", container).stdout)[0]["Config"]["Healthcheck"]["Test"]
        wait_for(lambda: podman("healthcheck", "run", container, check=False).returncode == 0,
                 120, "the HEALTHCHECK to pass")
        healthy_s = time.monotonic() - started
        status = podman("inspect", "--format", "{{.State.Health.Status}}", container).stdout.strip()
        assert status == "healthy"
        # ORT_DISABLE_TELEMETRY=1: ONNX Runtime wrote no device id and did not warn about it.
        assert ".cache" not in podman("exec", container, "ls", "-A", "/tmp").stdout
        assert "telemetry" not in podman("logs", container).stderr.lower()
        figures_file("healthy", how="podman run", seconds=round(healthy_s, 2))
    finally:
        podman("rm", "-f", "-t", "5", container, check=False)


def test_gpu_images_repository_says_kind_gpu(images) -> None:
    """runtime-gpu copies its models from the export-gpu stage (the CUDA base cannot be pulled
    here, that stage can be built): every config.pbtxt there asks Triton for KIND_GPU."""
    build = subprocess.run(
        [str(PODMAN_DIR / "build-images.sh")], capture_output=True, text=True, timeout=900,
        env={**ENV, "PYTHON": sys.executable, "TARGETS": "export-gpu"},
    )
    assert build.returncode == 0, build.stderr[-3000:]
    out = podman(
        "run", "--rm", "--entrypoint", "sh", "localhost/attnserve:latest-export-gpu", "-c",
        "grep -H 'kind:' /models-gpu/*/config.pbtxt /models/*/config.pbtxt",
    ).stdout.splitlines()
    gpu = [line for line in out if line.startswith("/models-gpu/")]
    cpu = [line for line in out if line.startswith("/models/")]
    assert len(gpu) >= 3 and all(line.endswith("KIND_GPU") for line in gpu), gpu
    assert len(cpu) == len(gpu) and all(line.endswith("KIND_CPU") for line in cpu), cpu
