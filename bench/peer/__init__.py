"""The peers: other serving systems on the same ONNX file, for side-by-side figures.

Each module defines one ``bench.peer.base.Peer``: ``mlserver`` (MLServer with adaptive
batching), ``triton`` (tritonserver with a Python-backend model and its dynamic batcher),
``kserve`` (KServe's Python ModelServer). Each lives in its own virtual environment; the
``*_model``/``*_runtime`` modules are imported there, by the peer, never by the bench.
Nothing is imported here at import time.
"""

from __future__ import annotations

import importlib

PEERS = {"mlserver": "bench.peer.mlserver:MLServerPeer", "triton": "bench.peer.triton:TritonPeer",
         "kserve": "bench.peer.kserve:KServePeer"}


def peer_class(name: str):
    """The Peer subclass called ``name`` (imported on demand)."""
    module, _, cls = PEERS[name].partition(":")
    return getattr(importlib.import_module(module), cls)
