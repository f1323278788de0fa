"""grpc core settings that must be in place before grpc starts in this process.

grpc core reads ``GRPC_EXPERIMENTS`` once, when the library initialises (the first channel or
server), so the server sets it from its settings before it imports anything that uses grpc
(service/cli.py, before the app is imported). An operator who set ``GRPC_EXPERIMENTS``
themselves keeps theirs: the variable is grpc's own interface.

Why ``-event_engine_listener`` by default: with grpcio 1.85 on the 2-core development machine,
a trivial model served to one grpc.aio client (only the server's environment changed, four
alternating runs): 622-628 -> 585-588 µs of server CPU per request at c=1, 558-563 -> 505-520
at c=32, throughput 2,062-2,090 -> 2,222-2,270 req/s. The listener and its endpoints fall back
to grpc's long-standing iomgr TCP path, which is what grpc offers the experiment switch for.
"""

from __future__ import annotations

import os

VARIABLE = "GRPC_EXPERIMENTS"


def configure(experiments: str, environ: dict[str, str] | None = None) -> str:
    """Sets ``GRPC_EXPERIMENTS`` to ``experiments`` unless it is set already (or ``experiments``
    is "none" or empty); returns what grpc will see ("" for its defaults)."""
    env = os.environ if environ is None else environ
    current = env.get(VARIABLE)
    if current is not None:
        return current
    if experiments in ("", "none"):
        return ""
    env[VARIABLE] = experiments
    return experiments
