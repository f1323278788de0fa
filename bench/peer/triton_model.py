"""The Triton Python-backend model: ``model.py`` of the Triton peer's repository (copied there).

Triton's own dynamic batcher collects the requests (configured from the attnserve
config.pbtxt: max_batch_size, preferred sizes, max_queue_delay_microseconds) and hands
``execute`` the list; the runner concatenates them (padding the ragged inputs, which the
config marks ``allow_ragged_batch`` so Triton batches sequences of different lengths, as
attnserve does), runs ONNX Runtime once and answers each request with its own rows.

Runs in Triton's ``triton_python_backend_stub`` with ``.venv-triton``'s interpreter; the
parameters ``bench.onnx_path`` and ``bench.runner`` come from the generated config.pbtxt.
"""

from __future__ import annotations

import json

import triton_python_backend_utils as pb_utils

from bench.peer.onnx_batch import OnnxBatchRunner


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        parameters = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
        self.runner = OnnxBatchRunner.from_json(parameters["bench.onnx_path"], parameters["bench.runner"])
        self.input_names = [tensor["name"] for tensor in config["input"]]

    def execute(self, requests: list) -> list:
        feeds = [{name: pb_utils.get_input_tensor_by_name(request, name).as_numpy() for name in self.input_names}
                 for request in requests]
        try:
            results = self.runner.run(feeds)
        except Exception as exc:  # one failed execution answers each of its requests with the reason
            error = pb_utils.TritonError(f"{type(exc).__name__}: {exc}")
            return [pb_utils.InferenceResponse(error=error) for _ in requests]
        return [pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(name, array) for name, array in result.items()])
                for result in results]
