"""The KServe peer's server program: ``kserve.ModelServer`` serving one ONNX file.

Run by bench/peer/kserve.py in ``.venv-kserve`` as
``python -m bench.peer.kserve_model --model_name m --onnx PATH --runner JSON --grpc_port P --http_port Q``
(``--model_name`` and the ports are KServe's own flags, parsed by KServe's parser, which this
one extends). ``predict`` is a plain function, as in KServe's own sklearn and xgboost servers:
KServe's Python model server
has no dynamic batcher (batching in KServe is a separate agent container in front of the
pod), so each request runs alone through ``OnnxBatchRunner``.
"""

from __future__ import annotations

import argparse

import numpy as np
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer
from kserve import model_server as kserve_model_server

from bench.peer.onnx_batch import OnnxBatchRunner

V2_DATATYPE = {np.dtype(np.float32): "FP32", np.dtype(np.float64): "FP64", np.dtype(np.int64): "INT64",
               np.dtype(np.int32): "INT32", np.dtype(np.bool_): "BOOL", np.dtype(np.uint8): "UINT8"}


class OnnxModel(Model):
    def __init__(self, name: str, onnx_path: str, runner_settings: str) -> None:
        super().__init__(name)
        self.onnx_path, self.runner_settings = onnx_path, runner_settings
        self.runner: OnnxBatchRunner | None = None

    def load(self) -> bool:
        self.runner = OnnxBatchRunner.from_json(self.onnx_path, self.runner_settings)
        self.ready = True
        return self.ready

    def predict(self, payload: InferRequest, headers: dict[str, str] | None = None) -> InferResponse:
        feeds = {tensor.name: tensor.as_numpy() for tensor in payload.inputs}
        [outputs] = self.runner.run([feeds])
        answers = []
        for name, array in outputs.items():
            answer = InferOutput(name=name, shape=list(array.shape), datatype=V2_DATATYPE[array.dtype])
            answer.set_data_from_numpy(array)
            answers.append(answer)
        return InferResponse(response_id=payload.id or "", model_name=self.name, infer_outputs=answers)


def main() -> None:
    parser = argparse.ArgumentParser(parents=[kserve_model_server.parser])
    parser.add_argument("--onnx", required=True)
    parser.add_argument("--runner", default="{}")
    args, _ = parser.parse_known_args()
    model = OnnxModel(args.model_name, args.onnx, args.runner)
    model.load()
    ModelServer(http_port=args.http_port, grpc_port=args.grpc_port, workers=1,
                enable_latency_logging=False).start([model])


if __name__ == "__main__":
    main()
