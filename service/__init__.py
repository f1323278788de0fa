"""attnserve: gRPC serving for attention models on ONNX Runtime.

Nothing is imported or computed here: importing ``service`` must stay free (no torch, no
onnxruntime session, no threads). The composition root is :mod:`service.app`.
"""

__version__ = "0.1.0"
