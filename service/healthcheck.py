"""Small operator checks over gRPC: ``attnserve health`` and ``attnserve models``.

The container HEALTHCHECK runs ``python -m service.healthcheck --url 127.0.0.1:8001``: it exits
0 only when grpc.health.v1 reports SERVING, so no grpc_health_probe binary is needed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.proto.inference import grpc_service_pb2 as pb
from service.proto.inference import grpc_service_pb2_grpc as pb_grpc


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    verb = argv.pop(0) if argv and argv[0] in ("health", "models") else "health"
    parser = argparse.ArgumentParser(prog=f"attnserve {verb}")
    parser.add_argument("--url", default="127.0.0.1:8001", help="server HOST:PORT (default 127.0.0.1:8001)")
    parser.add_argument("--service", default="", help="health service name ('' = whole server, or a model name)")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    # A server started with --tls-cert (and --tls-client-ca) needs these (issue 8).
    parser.add_argument("--tls-ca", metavar="PEM", help="trust this CA (connects with TLS)")
    parser.add_argument("--tls-cert", metavar="PEM", help="client certificate, for mutual TLS")
    parser.add_argument("--tls-key", metavar="PEM", help="client private key, for mutual TLS")
    parser.add_argument("--tls-server-name", metavar="NAME", help="name to check the server certificate against")
    args = parser.parse_args(argv)
    with _channel(args) as channel:
        try:
            if verb == "health":
                return _health(channel, args)
            return _models(channel, args)
        except grpc.RpcError as exc:
            print(f"{args.url}: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1


def _channel(args: argparse.Namespace) -> grpc.Channel:
    if not args.tls_ca:
        return grpc.insecure_channel(args.url)

    def read(path: str | None) -> bytes | None:
        return Path(path).read_bytes() if path else None

    credentials = grpc.ssl_channel_credentials(read(args.tls_ca), read(args.tls_key), read(args.tls_cert))
    options = [("grpc.ssl_target_name_override", args.tls_server_name)] if args.tls_server_name else []
    return grpc.secure_channel(args.url, credentials, options=options)


def _health(channel: grpc.Channel, args: argparse.Namespace) -> int:
    reply = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout
    )
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    if args.json:
        print(json.dumps({"url": args.url, "service": args.service, "status": status}))
    else:
        print(f"{args.url} {args.service or '(server)'}: {status}")
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


def _models(channel: grpc.Channel, args: argparse.Namespace) -> int:
    reply = pb_grpc.GRPCInferenceServiceStub(channel).RepositoryIndex(pb.RepositoryIndexRequest(), timeout=args.timeout)
    rows = [{"name": m.name, "version": m.version, "state": m.state, "reason": m.reason} for m in reply.models]
    if args.json:
        print(json.dumps(rows))
    else:
        for r in rows:
            print(f"{r['name']:<24} {r['version'] or '-':>7}  {r['state']:<12} {r['reason']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
