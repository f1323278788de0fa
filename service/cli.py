"""The ``attnserve`` console script.

``serve`` runs the server; ``export`` builds a model repository (needs the export extra,
so torch is imported only when that verb runs); ``health`` and ``models`` are small client
checks for operators; ``classify``, ``generate``, ``encode`` and ``attention`` call the
attnserve API (service/client/cli.py).
"""

from __future__ import annotations

import sys
from typing import Sequence

from service.settings import Settings, SettingsError


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    verb, rest = argv[0], argv[1:]
    if verb == "serve":
        return _serve(rest)
    if verb == "export":
        try:
            from export.cli import main as export_main  # build-time only: imports torch
        except ImportError as exc:
            print(f"attnserve export needs the export extra (pip install '.[export]'): {exc}", file=sys.stderr)
            return 2
        return export_main(rest)
    if verb in ("classify", "generate", "encode", "attention"):  # attnserve API client (issue 4)
        from service.client.cli import main as client_main

        return client_main([verb, *rest])
    if verb in ("health", "models"):
        from service.healthcheck import main as check_main

        return check_main([verb, *rest])
    print(f"attnserve: unknown command {verb!r}\n{USAGE}", file=sys.stderr)
    return 2


def _serve(argv: list[str]) -> int:
    try:
        settings = Settings.from_sources(argv)  # --help and unknown flags exit here, before any work
    except SettingsError as exc:
        print(f"attnserve serve: {exc}", file=sys.stderr)
        return 2
    from service.transport import grpc_core

    grpc_core.configure(settings.grpc_experiments)  # before grpc is imported (it reads it once)
    from service.app import run

    from service.errors import AttnServeError

    try:
        return run(settings)
    except (SettingsError, AttnServeError) as exc:
        print(f"attnserve serve: {exc}", file=sys.stderr)
        return 2


USAGE = """usage: attnserve COMMAND [options]

commands:
  serve    serve a model repository over gRPC (KServe v2 / Triton protocol)
  export   export the models to ONNX as a model repository (needs the export extra)
  health   ask a server whether it is live and ready
  models   list a server's models and their state

client verbs (attnserve API; --url HOST:PORT, default 127.0.0.1:8001; --json for scripts):
  classify   FILE...: top-k labels of PNG/JPEG images
  generate   --class N --count K --seed S -o grid.png: images from a seeded latent
  encode     "text" | --ids 1,2,3: labels, tokens and pooled embedding
  attention  generate --pixel Y,X -o a.png | encode "text" -o a.png: attention heatmaps

run 'attnserve COMMAND --help' for the options of each command."""
