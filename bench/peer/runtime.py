"""An MLServer runtime serving an ONNX file with ONNX Runtime, built like attnserve's sessions.

MLServer loads this class (``implementation: bench.peer.runtime.OnnxModel``) inside its own
virtual environment, which has mlserver, onnxruntime and numpy but not attnserve's
dependencies. The session options are attnserve's own (``service.runtime.session`` imports
only onnxruntime), so both servers run the graph the same way and only the serving around it
differs. ``predict`` runs the graph synchronously, as MLServer's own runtimes (sklearn,
xgboost) do; MLServer's adaptive batcher has already concatenated the requests.

Model settings read (``parameters.extra``): ``intra_op_threads``; ``parameters.uri`` is the
ONNX file.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse

from service.runtime.session import default_intra_op_threads, session_options


class OnnxModel(MLModel):
    async def load(self) -> bool:
        parameters = self.settings.parameters
        extra = (parameters.extra if parameters else None) or {}
        threads = int(extra.get("intra_op_threads") or default_intra_op_threads(1))
        self._session = ort.InferenceSession(
            parameters.uri, sess_options=session_options(threads), providers=["CPUExecutionProvider"]
        )
        self._inputs = {i.name: i.type for i in self._session.get_inputs()}
        self._outputs = [o.name for o in self._session.get_outputs()]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feeds = {}
        for request_input in payload.inputs:
            array = NumpyCodec.decode_input(request_input)
            feeds[request_input.name] = np.ascontiguousarray(array)
        outputs = self._session.run(self._outputs, feeds)
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            outputs=[NumpyCodec.encode_output(name, value) for name, value in zip(self._outputs, outputs)],
        )
