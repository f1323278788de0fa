"""The MLServer runtime: serves an ONNX file through ``bench.peer.onnx_batch.OnnxBatchRunner``.

MLServer loads this class (``implementation: bench.peer.mlserver_runtime.OnnxModel``) inside
``.venv-peer``, which has mlserver, onnxruntime and numpy but not attnserve's dependencies.
MLServer's adaptive batcher has already concatenated the requests into one when ``predict``
runs, so the runner sees one request of several rows. ``predict`` runs the graph
synchronously, as MLServer's own runtimes (sklearn, xgboost) do.

Model settings read: ``parameters.uri`` (the ONNX file) and ``parameters.extra.runner`` (the
runner's JSON settings: intra-op threads, pad values, variable output axes).
"""

from __future__ import annotations

import numpy as np
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse

from bench.peer.onnx_batch import OnnxBatchRunner


class OnnxModel(MLModel):
    async def load(self) -> bool:
        parameters = self.settings.parameters
        extra = (parameters.extra if parameters else None) or {}
        self._runner = OnnxBatchRunner.from_json(parameters.uri, extra.get("runner", "{}"))
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feeds = {i.name: np.ascontiguousarray(NumpyCodec.decode_input(i)) for i in payload.inputs}
        [outputs] = self._runner.run([feeds])
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            outputs=[NumpyCodec.encode_output(name, value) for name, value in outputs.items()],
        )
