"""Shared by the fuzz tests: Hypothesis settings, odd values, and the check on every answer.

An answer is OK or a client-error status with a short, clear message; never INTERNAL or
UNKNOWN, and never a hang (every call has a deadline, so a hang would be DEADLINE_EXCEEDED).
"""

from __future__ import annotations

import os
from collections import Counter
from typing import Any, Callable

import grpc
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from service.proto.inference import grpc_service_pb2 as pb

CALL_TIMEOUT_S = 60.0
CLIENT_ERRORS = {"INVALID_ARGUMENT", "NOT_FOUND", "RESOURCE_EXHAUSTED", "UNAVAILABLE", "OUT_OF_RANGE"}
ALLOWED = {"OK"} | CLIENT_ERRORS
# Modest by default (one shared server, a busy CI machine); raise it to hunt for bugs.
EXAMPLES = int(os.environ.get("ATTNSERVE_FUZZ_EXAMPLES", "120"))
FUZZ = settings(
    max_examples=EXAMPLES, deadline=None, database=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)
INTERESTING_INTS = [0, 1, -1, 2, 3, 27, 28, 29, 33, 127, 128, 129, 259, 260, 4096, 2**31 - 1, 2**31, 2**32,
                    2**53 + 1, 2**62, 2**63 - 1, -(2**63), -(2**31)]
odd_ints = st.sampled_from(INTERESTING_INTS) | st.integers(-(2**63), 2**63 - 1)
odd_text = st.text(max_size=40) | st.sampled_from(["", " ", "../../etc/passwd", "se_cnn_classifier ", "SE_CNN_CLASSIFIER",
                                                    "x" * 5000, "\x00", "image\x00", "\U0001f642"])
odd_floats = st.floats(width=32, allow_nan=True, allow_infinity=True)


def outcome(call: Callable[[], Any], seen: Counter, what: str) -> str:
    """Run one call; the status name. Fails on a status outside ALLOWED or an empty message."""
    try:
        result = call()
        if hasattr(result, "__next__"):  # a stream: each answer may carry its own error
            for item in result:
                stream_error(item, what)
        code = "OK"
    except grpc.RpcError as error:
        code = error.code().name
        details = error.details() or ""
        # A request's own "timeout" parameter may expire in the queue: the server says so. The
        # call's gRPC deadline passing (grpc's own "Deadline Exceeded") would be a hang.
        server_timeout = code == "DEADLINE_EXCEEDED" and "timed out in the queue" in details
        assert code in ALLOWED or server_timeout, f"{what}: {code} {details!r}"
        # grpc.health.v1 answers an unknown service name NOT_FOUND without a message (its spec).
        assert details.strip() or (what, code) == ("Check", "NOT_FOUND"), f"{what}: {code} with no message"
        assert "Traceback" not in details
        assert len(details) <= 2000, f"{what}: a {len(details)}-character message"
    seen[f"{what}:{code}"] += 1
    return code


def stream_error(item: Any, what: str) -> None:
    """v2 stream answers carry ``error_message``; attnserve ones an ``error`` with its code."""
    if isinstance(item, pb.ModelStreamInferResponse) and item.error_message:
        assert "internal server error" not in item.error_message, f"{what}: {item.error_message}"
        assert "Traceback" not in item.error_message
    elif hasattr(item, "error") and item.HasField("error"):
        assert item.error.code in CLIENT_ERRORS, f"{what}: {item.error.code} {item.error.message!r}"
        assert item.error.message.strip() and "Traceback" not in item.error.message
