"""The peer: MLServer with adaptive batching, serving the same ONNX file as attnserve.

``runtime.py`` is the custom MLServer runtime (imported by MLServer, in the peer's own
virtual environment); ``launch.py`` builds that environment, writes MLServer's settings and
starts it (from the bench process). Nothing is imported here.
"""
