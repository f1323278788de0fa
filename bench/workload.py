"""Random, valid inputs for one served model, read from its config.pbtxt (never hard-coded shapes).

- float tensors (images, latents): standard normal, never zeros;
- ``class_label``: uniform over the model's classes (``attnserve.input_limits`` or its labels);
- token sequences (``input_ids`` with ``attention_mask``): BOS, printable bytes, EOS, each
  sequence at its own length drawn from :class:`LengthDistribution`, mask all ones;
- for the attnserve API: PNG images of the model's preprocess size and mode, seeds and classes.

``batch`` builds what the server's batcher would hand ONNX Runtime for ``rows`` such requests
(sequences padded to the longest with the model's ``attnserve.pad_inputs`` values), which is
what the in-process ceiling runs.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from service.model_config import ModelSpec, load_json_parameter, read_config, to_spec

PAD_PARAM = "attnserve.pad_inputs"
PREPROCESS_PARAM = "attnserve.preprocess"
LABELS_PARAM = "attnserve.labels"
TOKENIZER_FILE = "tokenizer.json"
# Printable ASCII: what text looks like to a byte-level tokenizer.
PRINTABLE = (32, 127)


@dataclass(frozen=True)
class LengthDistribution:
    """Token counts of short texts: right-skewed (log-normal), clipped to [minimum, maximum].

    The default (median 40, sigma 0.6, 8..128) puts about half the sequences under 40 tokens,
    one in ten above 85 and a few percent at the 128 cap, like sentences and short
    paragraphs under a byte-level tokenizer. ``maximum`` is lowered to the model's limit.
    """

    median: float = 40.0
    sigma: float = 0.6
    minimum: int = 8
    maximum: int = 128

    def draw(self, rng: np.random.Generator, maximum: int | None = None) -> int:
        top = min(self.maximum, maximum) if maximum else self.maximum
        value = int(round(rng.lognormal(np.log(self.median), self.sigma)))
        return int(np.clip(value, min(self.minimum, top), top))

    def describe(self) -> str:
        return f"log-normal, median {self.median:g}, sigma {self.sigma:g}, clipped to [{self.minimum}, {self.maximum}]"


class Workload:
    """Requests for the model in ``model_dir`` (a folder of a Triton-layout repository)."""

    def __init__(self, model_dir: Path, lengths: LengthDistribution | None = None) -> None:
        self.model_dir = Path(model_dir)
        self.spec: ModelSpec = to_spec(read_config(self.model_dir))
        self.name = self.spec.name
        self.lengths = lengths or LengthDistribution()
        self.pad_values = _pad_values(self.spec.parameters.get(PAD_PARAM, ""))
        self.tokenizer = _read_json(self.model_dir / TOKENIZER_FILE) or {}
        self.preprocess = load_json_parameter(self.model_dir, self.spec, PREPROCESS_PARAM)
        self.num_classes = self._num_classes()

    # -- what kind of model ---------------------------------------------------------------
    @property
    def kind(self) -> str:
        names = {t.name for t in self.spec.inputs}
        if "input_ids" in names:
            return "tokens"
        if "query_ids" in names:
            return "pairs"  # two sequences (langid_pair): v2 only, the API driver sends one
        if "z" in names:
            return "latent"
        return "image"

    @property
    def ragged(self) -> bool:
        return any(-1 in t.dims for t in self.spec.inputs)

    @property
    def max_length(self) -> int:
        limits = [t.max_dims[0] for t in self.spec.inputs if t.max_dims]
        return min(limits) if limits else int(self.tokenizer.get("max_length", self.lengths.maximum))

    def _num_classes(self) -> int:
        for tensor in self.spec.inputs:
            if tensor.name == "class_label" and tensor.max_value is not None:
                return int(tensor.max_value) + 1
        labels = self.spec.parameters.get(LABELS_PARAM)
        if labels and (self.model_dir / labels).is_file():
            return len((self.model_dir / labels).read_text(encoding="utf-8").split())
        return 1

    # -- v2 tensors -------------------------------------------------------------------------
    def token_ids(self, length: int, rng: np.random.Generator) -> np.ndarray:
        bos = int(self.tokenizer.get("bos_id", 1))
        eos = int(self.tokenizer.get("eos_id", 2))
        offset = int(self.tokenizer.get("byte_offset", 4))
        body = rng.integers(*PRINTABLE, size=max(length - 2, 0)) + offset
        return np.concatenate([[bos], body, [eos]]).astype(np.int64)[:length]

    def sample(self, rng: np.random.Generator, rows: int = 1, length: int | None = None) -> dict[str, np.ndarray]:
        """One request of ``rows`` rows; sequences get one drawn ``length`` (all rows alike)."""
        if self.ragged and length is None:
            length = self.lengths.draw(rng, self.max_length)
        arrays: dict[str, np.ndarray] = {}
        for tensor in self.spec.inputs:
            dims = tuple(length if d == -1 else d for d in tensor.dims)
            if tensor.name == "input_ids":
                arrays[tensor.name] = np.stack([self.token_ids(int(length or 0), rng) for _ in range(rows)])
            elif tensor.name in ("query_ids", "source_ids"):  # each its own length, as the batcher pads them
                own = length if tensor.name == "query_ids" else self.lengths.draw(rng, self.max_length)
                arrays[tensor.name] = np.stack([self.token_ids(int(own or 0), rng) for _ in range(rows)])
            elif tensor.name == "attention_mask":
                arrays[tensor.name] = np.ones((rows, *dims), dtype=tensor.dtype)
            elif tensor.name == "class_label":
                arrays[tensor.name] = rng.integers(0, self.num_classes, size=(rows, *dims)).astype(tensor.dtype)
            elif tensor.dtype.kind == "f":
                arrays[tensor.name] = rng.standard_normal((rows, *dims)).astype(tensor.dtype)
            else:
                raise ValueError(f"no sampling rule for {self.name}.{tensor.name} ({tensor.datatype})")
        return arrays

    def pool(self, count: int, rng: np.random.Generator) -> list[dict[str, np.ndarray]]:
        """``count`` one-row requests; a load generator cycles through them."""
        return [self.sample(rng) for _ in range(count)]

    def batch(self, requests: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """The batcher's view of ``requests``: concatenated, sequences padded to the longest."""
        batched = {}
        for tensor in self.spec.inputs:
            parts = [r[tensor.name] for r in requests]
            if -1 in tensor.dims:
                longest = max(p.shape[-1] for p in parts)
                pad = self.pad_values.get(tensor.name, 0)
                parts = [
                    np.pad(p, [(0, 0)] * (p.ndim - 1) + [(0, longest - p.shape[-1])], constant_values=pad)
                    for p in parts
                ]
            batched[tensor.name] = np.concatenate(parts, axis=0)
        return batched

    # -- attnserve API payload parts ----------------------------------------------------------
    def image_png(self, rng: np.random.Generator) -> bytes:
        """A random image of the preprocess size and mode, PNG-encoded (a client's upload)."""
        from PIL import Image

        pre = self.preprocess or {}
        image_tensor = self.spec.inputs[0]
        height = int(pre.get("height", image_tensor.dims[-2]))
        width = int(pre.get("width", image_tensor.dims[-1]))
        mode = str(pre.get("mode", "RGB" if image_tensor.dims[0] == 3 else "L"))
        channels = 3 if mode == "RGB" else 1
        pixels = rng.integers(0, 256, size=(height, width, channels), dtype=np.uint8)
        image = Image.fromarray(pixels[..., 0] if channels == 1 else pixels, mode=mode)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return buffer.getvalue()

    def describe(self) -> dict[str, Any]:
        """The config facts a results file names."""
        described: dict[str, Any] = {
            "name": self.name,
            "max_batch_size": self.spec.max_batch_size,
            "instance_count": self.spec.instance_count,
            "inputs": {t.name: [t.datatype, list(t.dims)] for t in self.spec.inputs},
            "outputs": {t.name: [t.datatype, list(t.dims)] for t in self.spec.outputs},
            "dynamic_batching": _batching_of(self.model_dir),
        }
        if self.ragged:
            described["sequence_lengths"] = self.lengths.describe() + f", model limit {self.max_length}"
        return described


def _batching_of(model_dir: Path) -> dict[str, Any] | None:
    config = read_config(model_dir)
    if not config.HasField("dynamic_batching"):
        return None
    batching = config.dynamic_batching
    return {
        "preferred_batch_size": list(batching.preferred_batch_size),
        "max_queue_delay_microseconds": batching.max_queue_delay_microseconds,
        "max_queue_size": batching.default_queue_policy.max_queue_size,
    }


def _pad_values(text: str) -> dict[str, float]:
    values = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, value = item.partition(":")
        values[name] = float(value or 0)
    return values


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
