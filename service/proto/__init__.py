"""Protobuf/gRPC stubs generated from protos/ by protos/generate.py; do not edit.

Messages are registered in `service.proto.pool.POOL`, not protobuf's default
pool (see pool.py for why).
"""
