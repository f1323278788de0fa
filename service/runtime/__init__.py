"""ONNX Runtime execution: providers, sessions and the OrtRunner the batcher calls."""

from service.runtime.meta import TensorMeta
from service.runtime.providers import model_provider, resolve_provider
from service.runtime.runner import ComputeObserver, OrtRunner
from service.runtime.session import default_intra_op_threads

__all__ = ["ComputeObserver", "OrtRunner", "TensorMeta", "default_intra_op_threads",
           "model_provider", "resolve_provider"]
