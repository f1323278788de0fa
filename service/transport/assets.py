"""A loaded model's side files for the attnserve API: labels, preprocessing, tokenizer.

Parsing lives in the codecs; this module only finds and reads the files. They are read on the
first API request for a model version and kept for as long as the repository serves that same
loaded model: a reload builds a new ``LoadedModel`` and its files are read again. The cache
holds the model weakly so an unloaded model's sessions are never kept alive by it.
"""

from __future__ import annotations

import json
import logging
import weakref
from pathlib import Path

from service.codec.api import ModelAssets
from service.codec.images import Preprocess
from service.codec.tokens import ByteTokenizer
from service.errors import ModelLoadError
from service.model_config import load_json_parameter
from service.proto.inference import model_config_pb2 as mc
from service.repository import LoadedModel

log = logging.getLogger(__name__)

LABELS_PARAM = "attnserve.labels"
PREPROCESS_PARAM = "attnserve.preprocess"
TOKENIZER_PARAM = "attnserve.tokenizer"
# "32,64,128": how the channel_weights output splits into SE stages (optional).
STAGES_PARAM = "attnserve.channel_stages"
SCORE_OUTPUTS = ("probabilities", "logits")


class AssetCache:
    def __init__(self) -> None:
        self._cache: dict[tuple[str, str], tuple[weakref.ref[LoadedModel], ModelAssets]] = {}

    def get(self, model: LoadedModel) -> ModelAssets:
        key = (model.name, model.version)
        hit = self._cache.get(key)
        if hit is not None and hit[0]() is model:
            return hit[1]
        assets = read_assets(model.directory, model)
        self._cache[key] = (weakref.ref(model), assets)
        return assets


def read_assets(directory: Path, model: LoadedModel) -> ModelAssets:
    """Read and parse every side file the model's config names; a bad one is a config error."""
    spec, what = model.spec, "side files"
    try:
        what = "labels"
        labels = _labels(directory, spec.parameters.get(LABELS_PARAM) or _triton_label_file(model.config))
        what = PREPROCESS_PARAM
        raw = load_json_parameter(directory, spec, PREPROCESS_PARAM)
        preprocess = None if raw is None else Preprocess.from_json(raw)
        what = TOKENIZER_PARAM
        raw = load_json_parameter(directory, spec, TOKENIZER_PARAM)
        tokenizer = None if raw is None else ByteTokenizer.from_json(raw)
        what = STAGES_PARAM
        stages = spec.parameters.get(STAGES_PARAM)
        channel_stages = tuple(int(s) for s in stages.split(",")) if stages else None
    except (OSError, ValueError, json.JSONDecodeError) as exc:
        log.error("model %s: cannot read %s: %s", spec.name, what, exc)
        raise ModelLoadError(f"model {spec.name!r}: cannot read its {what} ({exc})") from exc
    return ModelAssets(labels, preprocess, tokenizer, channel_stages)


def _triton_label_file(config: mc.ModelConfig) -> str:
    """Triton's own way to name labels: ``label_filename`` on the classification output."""
    return next((o.label_filename for o in config.output if o.name in SCORE_OUTPUTS and o.label_filename), "")


def _labels(directory: Path, name: str) -> tuple[str, ...] | None:
    if not name:
        return None
    lines = (directory / name).read_text(encoding="utf-8").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    return tuple(line.strip() for line in lines)
