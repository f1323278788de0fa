"""attnserve export: PyTorch models -> ONNX (parity-checked) -> Triton-layout model repository.

Build-time only (needs torch); the serving side (``service/``) never imports this package.
Entry point: :func:`export.cli.main` (``python -m export``, ``attnserve export``).
"""
