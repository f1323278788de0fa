"""Helpers for tests that change a served repository: new versions, changed files, the index.

A second version of a real exported model is its ONNX file with one weight changed (through
``onnx``), so the two versions give different answers and a response shows which one ran.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Mapping

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
from google.protobuf import json_format

from service.proto.inference import model_config_pb2 as mc
from tests.conftest import read_model_config, write_model_config


def perturbed_onnx(source: Path, destination: Path, factor: float) -> Path:
    """``source`` with its first floating-point weight scaled by ``factor``: the same graph
    (inputs, outputs, shapes), other answers."""
    onnx = pytest.importorskip("onnx", reason="a second model version is written with onnx (the export extra)")
    from onnx import numpy_helper

    model = onnx.load(str(source))
    for index, tensor in enumerate(model.graph.initializer):
        array = numpy_helper.to_array(tensor)
        if array.dtype == np.float32 and array.size > 1:
            model.graph.initializer[index].CopyFrom(numpy_helper.from_array(array * np.float32(factor), tensor.name))
            break
    else:
        raise AssertionError(f"{source} has no float weights to change")
    destination.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(destination))
    return destination


def add_version(model_dir: Path, version: int, onnx_file: Path | None = None, *, content: bytes | None = None) -> Path:
    """A new version folder, filled under a hidden name and renamed into place (as the
    exporter does), so a polling server sees all of it or nothing."""
    staging = model_dir / f".{version}.staging"
    staging.mkdir()
    if content is not None:
        (staging / "model.onnx").write_bytes(content)
    else:
        assert onnx_file is not None
        shutil.copyfile(onnx_file, staging / "model.onnx")
    os.rename(staging, model_dir / str(version))
    return model_dir / str(version)


def replace_config(model_dir: Path, edit) -> mc.ModelConfig:
    """Edit config.pbtxt and put it in place atomically (write, then rename)."""
    config = read_model_config(model_dir)
    edit(config)
    scratch = model_dir / ".config.pbtxt.new"
    scratch.mkdir()
    write_model_config(scratch, config)
    os.replace(scratch / "config.pbtxt", model_dir / "config.pbtxt")
    scratch.rmdir()
    return config


def config_json(config: mc.ModelConfig) -> str:
    """The JSON form Triton's clients send as RepositoryModelLoad's ``config`` parameter."""
    return json_format.MessageToJson(config, preserving_proto_field_name=True)


class FileReference:
    """onnxruntime in this process on one exact model file (any version)."""

    def __init__(self, path: Path) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run(self, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = [o.name for o in self._session.get_outputs()]
        return dict(zip(names, self._session.run(names, dict(arrays))))


def index_of(client: grpcclient.InferenceServerClient, model: str) -> dict[str, tuple[str, str]]:
    """RepositoryIndex rows of ``model``: version -> (state, reason)."""
    return {m.version: (m.state, m.reason) for m in client.get_model_repository_index().models if m.name == model}
