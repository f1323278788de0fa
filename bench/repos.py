"""Model repositories for the scenarios, built on demand under the cache folder.

- ``repo-default``: every default model (``python -m export``);
- ``repo-benchmark``: the benchmark configs (``python -m export --variant benchmark
  --max-batch-size N``), exported one model at a time, only those a scenario needs;
- ``scenario-<name>``: what one scenario serves: config.pbtxt copied (and edited through the
  same ModelConfig proto the server parses: dynamic batching removed, instance count changed),
  the ONNX files and side files symlinked, so a variant costs no disk.

A base repository is exported once and reused until ``rebuild`` is asked for. The exporter
runs as a subprocess, as an operator would run it; its progress bar is shown as it goes.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable, Iterable

from google.protobuf import text_format

from service.proto.inference import model_config_pb2 as mc

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG_FILE = "config.pbtxt"

Edit = Callable[[mc.ModelConfig], None]


class ExportFailed(RuntimeError):
    pass


def has_model(repository: Path, model: str) -> bool:
    return (repository / model / CONFIG_FILE).is_file() and (repository / model / "1" / "model.onnx").is_file()


def ensure_base(
    cache: Path, base: str, models: Iterable[str], benchmark_max_batch: int, rebuild: bool = False,
    given: Path | None = None,
) -> Path:
    """The base repository (``default`` or ``benchmark``) holding ``models``, exported if missing.

    ``given``: an existing repository to use as it is (never exported into).
    """
    if given is not None:
        missing = [m for m in models if not has_model(given, m)]
        if missing:
            raise ExportFailed(f"{given} does not hold {', '.join(missing)}")
        return given
    repository = cache / f"repo-{base}"
    missing = [m for m in dict.fromkeys(models) if rebuild or not has_model(repository, m)]
    for model in missing:
        if (repository / model).exists():
            shutil.rmtree(repository / model)
        argv = [sys.executable, "-m", "export", "--model-repository", str(repository), "--model", model]
        if base == "benchmark":
            argv += ["--variant", "benchmark", "--max-batch-size", str(benchmark_max_batch)]
        print(f"[bench] exporting {model} ({base}): {' '.join(argv[1:])}", file=sys.stderr, flush=True)
        done = subprocess.run(argv, cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
        if done.returncode != 0 or not has_model(repository, model):
            raise ExportFailed(f"export of {model} ({base}) exited {done.returncode}:\n{done.stdout[-3000:]}")
    return repository


def read_config(model_dir: Path) -> mc.ModelConfig:
    config = mc.ModelConfig()
    text_format.Parse((model_dir / CONFIG_FILE).read_text(encoding="utf-8"), config)
    return config


def _link_tree(source: Path, destination: Path) -> None:
    """Mirror ``source`` into ``destination`` with a symlink per file (config.pbtxt excepted)."""
    for path in source.rglob("*"):
        target = destination / path.relative_to(source)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        elif path.name != CONFIG_FILE or path.parent != source:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(path.resolve())


def build_scenario_repository(
    cache: Path, name: str, base_repository: Path, models: Iterable[str], edits: dict[str, Edit] | None = None
) -> Path:
    """A fresh repository for one scenario: ``models`` of the base, ``edits[model]`` applied."""
    repository = cache / f"scenario-{name}"
    if repository.exists():
        shutil.rmtree(repository)
    for model in models:
        source = base_repository / model
        _link_tree(source, repository / model)
        config = read_config(source)
        edit = (edits or {}).get(model)
        if edit is not None:
            edit(config)
        (repository / model / CONFIG_FILE).write_text(text_format.MessageToString(config), encoding="utf-8")
    return repository


# -- config edits ---------------------------------------------------------------------------------
def no_dynamic_batching(config: mc.ModelConfig) -> None:
    """Every request runs alone (Triton's behaviour without a dynamic_batching block)."""
    config.ClearField("dynamic_batching")


def instances(count: int) -> Edit:
    def edit(config: mc.ModelConfig) -> None:
        kind = config.instance_group[0].kind if config.instance_group else mc.ModelInstanceGroup.KIND_CPU
        del config.instance_group[:]
        config.instance_group.add(count=count, kind=kind)

    edit.__name__ = f"instances_{count}"
    return edit


def chain(*edits: Edit) -> Edit:
    def edit(config: mc.ModelConfig) -> None:
        for one in edits:
            one(config)

    return edit
