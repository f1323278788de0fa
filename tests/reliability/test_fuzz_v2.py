"""Bad input to the v2 surface, generated: nothing crashes, every answer is a clear status.

Hypothesis starts from a valid request for a random model and applies random damage: names,
dtypes, shapes with negative, zero and huge dims, byte counts that do not match shapes, typed
and raw contents together, NaN and Inf, out-of-range token ids and labels, empty batches,
random parameters and outputs; unary and streamed. Raw gRPC calls carry bytes that are not the
method's message, to every method that cannot change the shared server. After every case a
good request still gets the right answer (see ``fuzzing.outcome`` for what an answer may be).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import given
from hypothesis import strategies as st
from tritonclient.utils import np_to_triton_dtype

from service.proto.attnserve.v1 import attnserve_pb2 as api_pb
from service.proto.attnserve.v1 import attnserve_pb2_grpc as api_grpc
from service.proto.inference import grpc_service_pb2 as pb
from service.proto.inference import grpc_service_pb2_grpc as pb_grpc
from tests.conftest import ServerProcess
from tests.integration.support import MODELS, SECNN, sample_inputs, spec_of
from tests.reliability.fuzzing import CALL_TIMEOUT_S, FUZZ, odd_floats, odd_ints, odd_text, outcome

V2_TYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
            "FP16", "FP32", "FP64", "BYTES", "BF16", "", "fp32", "STRING"]


# -- ModelInfer: valid requests, damaged ---------------------------------------------------------------
def valid_request(repository: Path, model: str, rows: int, length: int, seed: int) -> pb.ModelInferRequest:
    arrays = sample_inputs(repository, model, rows, np.random.default_rng(seed), length=length)
    request = pb.ModelInferRequest(model_name=model, id="fuzz")
    for name, array in arrays.items():
        request.inputs.add(name=name, datatype=np_to_triton_dtype(array.dtype), shape=array.shape)
        request.raw_input_contents.append(array.tobytes())
    return request


def _pick(draw: Any, request: pb.ModelInferRequest) -> int | None:
    return draw(st.integers(0, len(request.inputs) - 1)) if request.inputs else None


def m_model_name(r, draw, repo):
    r.model_name = draw(odd_text | st.sampled_from(MODELS))


def m_version(r, draw, repo):
    r.model_version = draw(st.sampled_from(["0", "1", "2", "-1", "01", "1 ", "99999999999999999999999"]) | odd_text)


def m_input_name(r, draw, repo):
    if (i := _pick(draw, r)) is not None:
        names = [t.name for m in MODELS for t in spec_of(repo, m).inputs]
        r.inputs[i].name = draw(st.sampled_from(names) | odd_text)


def m_datatype(r, draw, repo):
    if (i := _pick(draw, r)) is not None:
        r.inputs[i].datatype = draw(st.sampled_from(V2_TYPES) | st.text(max_size=6))


def m_shape(r, draw, repo):
    if (i := _pick(draw, r)) is None:
        return
    shape = list(r.inputs[i].shape)
    action = draw(st.sampled_from(["set", "append", "drop", "clear", "batch0", "huge"]))
    if action == "set" and shape:
        shape[draw(st.integers(0, len(shape) - 1))] = draw(odd_ints)
    elif action == "append":
        shape.append(draw(odd_ints))
    elif action == "drop" and shape:
        shape.pop(draw(st.integers(0, len(shape) - 1)))
    elif action == "clear":
        shape = []
    elif action == "batch0" and shape:
        shape[0] = 0
    elif action == "huge":
        shape = [draw(st.sampled_from([2**31, 2**40, 2**62]))] * max(len(shape), 1)
    del r.inputs[i].shape[:]
    r.inputs[i].shape.extend(shape)


def m_raw_bytes(r, draw, repo):
    if not r.raw_input_contents:
        return
    i = draw(st.integers(0, len(r.raw_input_contents) - 1))
    raw = r.raw_input_contents[i]
    action = draw(st.sampled_from(["truncate", "extend", "empty", "odd"]))
    if action == "truncate":
        raw = raw[: draw(st.integers(0, max(len(raw) - 1, 0)))]
    elif action == "extend":
        raw = raw + draw(st.binary(min_size=1, max_size=64))
    elif action == "empty":
        raw = b""
    else:
        raw = raw[:-1] if raw else b"\x01"
    r.raw_input_contents[i] = raw


def m_raw_entries(r, draw, repo):
    if draw(st.booleans()) and r.raw_input_contents:
        del r.raw_input_contents[-1]
    else:
        r.raw_input_contents.append(draw(st.binary(max_size=32)))


def m_also_typed(r, draw, repo):
    """Typed contents next to raw ones (or alone when raw is gone), of any field."""
    if (i := _pick(draw, r)) is None:
        return
    contents = r.inputs[i].contents
    field = draw(st.sampled_from(["fp32", "fp64", "int", "int64", "uint", "uint64", "bool", "bytes"]))
    size = st.integers(0, 40)
    if field in ("fp32", "fp64"):
        getattr(contents, f"{field}_contents").extend(draw(st.lists(odd_floats, max_size=40)))
    elif field == "int":
        contents.int_contents.extend(draw(st.lists(st.integers(-(2**31), 2**31 - 1), max_size=40)))
    elif field == "int64":
        contents.int64_contents.extend(draw(st.lists(st.integers(-(2**63), 2**63 - 1), max_size=40)))
    elif field == "uint":
        contents.uint_contents.extend(draw(st.lists(st.integers(0, 2**32 - 1), max_size=40)))
    elif field == "uint64":
        contents.uint64_contents.extend(draw(st.lists(st.integers(0, 2**64 - 1), max_size=40)))
    elif field == "bool":
        contents.bool_contents.extend(draw(st.lists(st.booleans(), max_size=40)))
    else:
        contents.bytes_contents.extend(draw(st.lists(st.binary(max_size=16), max_size=draw(size))))


def m_to_typed(r, draw, repo):
    """Every input sent typed instead of raw: a valid request, by the other route."""
    for tensor, raw in zip(r.inputs, r.raw_input_contents):
        if tensor.datatype == "FP32" and len(raw) % 4 == 0:
            tensor.contents.fp32_contents.extend(np.frombuffer(raw, np.float32).tolist())
        elif tensor.datatype == "INT64" and len(raw) % 8 == 0:
            tensor.contents.int64_contents.extend(np.frombuffer(raw, np.int64).tolist())
    del r.raw_input_contents[:]


def m_special_values(r, draw, repo):
    """NaN, Inf, extremes, or out-of-range token ids and labels, in right-sized raw contents."""
    if not r.raw_input_contents or (i := _pick(draw, r)) is None or i >= len(r.raw_input_contents):
        return
    raw = r.raw_input_contents[i]
    if r.inputs[i].datatype == "FP32" and len(raw) % 4 == 0:
        value = draw(st.sampled_from([np.nan, np.inf, -np.inf, 3.4e38, -3.4e38, 1e-45, 0.0]))
        array = np.frombuffer(raw, np.float32).copy()
        array[draw(st.sampled_from([slice(None), slice(0, 1)]))] = value
        r.raw_input_contents[i] = array.tobytes()
    elif r.inputs[i].datatype == "INT64" and len(raw) % 8 == 0:
        array = np.frombuffer(raw, np.int64).copy()
        array[draw(st.sampled_from([slice(None), slice(0, 1), slice(-1, None)]))] = draw(odd_ints)
        r.raw_input_contents[i] = array.tobytes()


def m_drop_or_duplicate(r, draw, repo):
    if (i := _pick(draw, r)) is None:
        return
    if draw(st.booleans()):
        del r.inputs[i]
        if i < len(r.raw_input_contents):
            del r.raw_input_contents[i]
    else:
        r.inputs.add().CopyFrom(r.inputs[i])
        if i < len(r.raw_input_contents):
            r.raw_input_contents.append(r.raw_input_contents[i])


def m_parameters(r, draw, repo):
    key = draw(st.sampled_from(["timeout", "priority", "sequence_id", "binary_data_output", "classification"]) | odd_text)
    target = r.parameters if draw(st.booleans()) or not r.inputs else r.inputs[0].parameters
    kind = draw(st.sampled_from(["int64", "uint64", "bool", "string", "double"]))
    if kind == "int64":
        target[key].int64_param = draw(odd_ints)
    elif kind == "uint64":
        target[key].uint64_param = draw(st.integers(0, 2**64 - 1))
    elif kind == "bool":
        target[key].bool_param = draw(st.booleans())
    elif kind == "string":
        target[key].string_param = draw(odd_text)
    else:
        target[key].double_param = draw(st.floats(allow_nan=True, allow_infinity=True))


def m_outputs(r, draw, repo):
    names = [t.name for m in MODELS for t in spec_of(repo, m).outputs]
    for _ in range(draw(st.integers(1, 3))):
        out = r.outputs.add(name=draw(st.sampled_from(names) | odd_text))
        if draw(st.booleans()):
            out.parameters["classification"].int64_param = draw(st.sampled_from([0, 1, 3, -1, 2**40]))


def m_no_inputs(r, draw, repo):
    del r.inputs[:]
    if draw(st.booleans()):
        del r.raw_input_contents[:]


MUTATIONS = [m_model_name, m_version, m_input_name, m_datatype, m_shape, m_shape, m_raw_bytes, m_raw_entries,
             m_also_typed, m_to_typed, m_special_values, m_special_values, m_drop_or_duplicate, m_parameters,
             m_outputs, m_no_inputs]


@FUZZ
@given(data=st.data())
def test_model_infer_fuzz(data, channel, model_repository, still_serves, outcomes) -> None:
    model = data.draw(st.sampled_from(MODELS), label="model")
    max_rows = spec_of(model_repository, model).max_batch_size
    rows = data.draw(st.sampled_from([1, 2, 3, max_rows, max_rows + 1]), label="rows")
    length = data.draw(st.sampled_from([1, 2, 7, 128, 129]), label="length")
    request = valid_request(model_repository, model, rows, length, seed=data.draw(st.integers(0, 2**16)))
    for _ in range(data.draw(st.integers(0, 3), label="mutations")):
        mutation = data.draw(st.sampled_from(MUTATIONS))
        mutation(request, data.draw, model_repository)
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    unary = data.draw(st.booleans(), label="unary")
    if unary:
        outcome(lambda: stub.ModelInfer(request, timeout=CALL_TIMEOUT_S), outcomes, "ModelInfer")
    else:  # the same request through a stream: errors come back as error_message, never INTERNAL
        outcome(lambda: stub.ModelStreamInfer(iter([request, request]), timeout=CALL_TIMEOUT_S), outcomes, "ModelStreamInfer")
    still_serves(model)


# -- bytes that are not the method's message -------------------------------------------------------------
# Methods a random message cannot use to change the shared server (no load or unload).
UNARY_METHODS = [
    "/inference.GRPCInferenceService/ModelInfer",
    "/inference.GRPCInferenceService/ModelMetadata",
    "/inference.GRPCInferenceService/ModelConfig",
    "/inference.GRPCInferenceService/ModelReady",
    "/inference.GRPCInferenceService/ServerLive",
    "/inference.GRPCInferenceService/ModelStatistics",
    "/inference.GRPCInferenceService/RepositoryIndex",
    "/attnserve.v1.AttnServe/Classify",
    "/attnserve.v1.AttnServe/Generate",
    "/attnserve.v1.AttnServe/Encode",
    "/grpc.health.v1.Health/Check",
]
STREAM_METHODS = {
    "/inference.GRPCInferenceService/ModelStreamInfer": pb.ModelStreamInferResponse.FromString,
    "/attnserve.v1.AttnServe/ClassifyStream": api_pb.ClassifyStreamResponse.FromString,
    "/attnserve.v1.AttnServe/EncodeStream": api_pb.EncodeStreamResponse.FromString,
}


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _seeds(repository: Path) -> list[bytes]:
    """Valid serialized messages, to be damaged."""
    good = valid_request(repository, SECNN, 1, 4, seed=5).SerializeToString()
    encode = api_pb.EncodeRequest(sequences=[api_pb.Sequence(text="hello")], top_k=3).SerializeToString()
    generate = api_pb.GenerateRequest(count=1, class_ids=[1]).SerializeToString()
    return [good, encode, generate, b""]


def _damage(draw: Any, message: bytes) -> bytes:
    action = draw(st.sampled_from(["flip", "truncate", "insert", "random", "non-utf8"]))
    if action == "random" or not message:
        return draw(st.binary(max_size=300))
    if action == "flip":
        at = draw(st.integers(0, len(message) - 1))
        return message[:at] + bytes([message[at] ^ draw(st.integers(1, 255))]) + message[at + 1:]
    if action == "truncate":
        return message[: draw(st.integers(0, len(message) - 1))]
    if action == "insert":
        at = draw(st.integers(0, len(message)))
        return message[:at] + draw(st.binary(min_size=1, max_size=16)) + message[at:]
    # a string field (model name, tensor name, text) that is not UTF-8
    return message + _field(draw(st.sampled_from([1, 2, 6])), draw(st.sampled_from([b"\xff\xfe", b"\xc3", b"a\x80b"])))


@FUZZ
@given(data=st.data())
def test_malformed_bytes_fuzz(data, channel, model_repository, still_serves, outcomes) -> None:
    message = _damage(data.draw, data.draw(st.sampled_from(_seeds(model_repository))))
    if data.draw(st.booleans(), label="stream"):
        method = data.draw(st.sampled_from(sorted(STREAM_METHODS)))
        call = channel.stream_stream(method, response_deserializer=STREAM_METHODS[method])  # bytes in
        messages = [message] * data.draw(st.integers(1, 3))
        outcome(lambda: call(iter(messages), timeout=CALL_TIMEOUT_S), outcomes, method.rsplit("/", 1)[1])
    else:
        method = data.draw(st.sampled_from(UNARY_METHODS))
        call = channel.unary_unary(method)
        outcome(lambda: call(message, timeout=CALL_TIMEOUT_S), outcomes, method.rsplit("/", 1)[1])
    still_serves(SECNN)


NON_UTF8 = [
    ("model name", "/inference.GRPCInferenceService/ModelInfer", _field(1, b"se_cnn\xff")),
    ("tensor name", "/inference.GRPCInferenceService/ModelInfer", _field(1, SECNN.encode()) + _field(5, _field(1, b"im\xc3ge"))),
    ("text", "/attnserve.v1.AttnServe/Encode", _field(3, _field(2, b"caf\xe9"))),
    ("truncated varint", "/inference.GRPCInferenceService/ModelInfer", b"\x0a\x80\x80\x80\x80\x10"),
    ("bad tag", "/inference.GRPCInferenceService/ModelInfer", b"\xff\xff\xff\xff\xff"),
]


@pytest.mark.parametrize(("method", "message"), [c[1:] for c in NON_UTF8], ids=[c[0] for c in NON_UTF8])
def test_unparseable_message_is_invalid_argument(channel, still_serves, method: str, message: bytes) -> None:
    """Bytes that do not parse (strings must be UTF-8 in proto3): INVALID_ARGUMENT naming the
    message type, for unary calls and streams alike; the stream does not hang."""
    with pytest.raises(grpc.RpcError) as caught:
        channel.unary_unary(method)(message, timeout=CALL_TIMEOUT_S)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid" in caught.value.details()
    stream_method = method.replace("/ModelInfer", "/ModelStreamInfer").replace("/Encode", "/EncodeStream")
    with pytest.raises(grpc.RpcError) as caught:
        list(channel.stream_stream(stream_method)(iter([message]), timeout=CALL_TIMEOUT_S))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    still_serves(SECNN)


def test_stream_answers_messages_before_a_malformed_one(channel, model_repository) -> None:
    good = valid_request(model_repository, SECNN, 1, 4, seed=6)
    good.id = "before"
    call = channel.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer",
                                 response_deserializer=pb.ModelStreamInferResponse.FromString)
    replies = []
    with pytest.raises(grpc.RpcError) as caught:
        for reply in call(iter([good.SerializeToString(), b"\xff\xff\xff"]), timeout=CALL_TIMEOUT_S):
            replies.append(reply)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [r.infer_response.id for r in replies] == ["before"] and not replies[0].error_message


LONG = "n" * 200_000


@pytest.mark.parametrize(
    ("method", "message", "code"),
    [
        ("ModelInfer", pb.ModelInferRequest(model_name=LONG), "NOT_FOUND"),
        ("ModelInfer", pb.ModelInferRequest(model_name=SECNN, inputs=[pb.ModelInferRequest.InferInputTensor(
            name=LONG, datatype="FP32", shape=[1, 1, 28, 28])]), "INVALID_ARGUMENT"),
        ("ModelMetadata", pb.ModelMetadataRequest(name=LONG), "NOT_FOUND"),
        ("Encode", api_pb.EncodeRequest(model=LONG, sequences=[api_pb.Sequence(text="a")]), "NOT_FOUND"),
    ],
    ids=["model-name", "tensor-name", "metadata", "api-model"],
)
def test_long_names_keep_their_status(channel, still_serves, method: str, message, code: str) -> None:
    """An error message echoing a 200 kB name is shortened: the client gets the real status,
    not grpc's RESOURCE_EXHAUSTED for trailers above its metadata limit."""
    stub = api_grpc.AttnServeStub(channel) if method == "Encode" else pb_grpc.GRPCInferenceServiceStub(channel)
    with pytest.raises(grpc.RpcError) as caught:
        getattr(stub, method)(message, timeout=CALL_TIMEOUT_S)
    assert caught.value.code().name == code, caught.value.details()[:200]
    assert 0 < len(caught.value.details()) <= 2000
    still_serves(SECNN)


def test_oversized_message_is_resource_exhausted(server: ServerProcess, channel, still_serves) -> None:
    """Above --max-message-bytes (64 MiB by default): refused by gRPC before any handler."""
    request = pb.ModelInferRequest(model_name=SECNN)
    request.inputs.add(name="image", datatype="FP32", shape=[1, 1, 28, 28])
    request.raw_input_contents.append(b"\0" * (65 * 1024 * 1024))
    with pytest.raises(grpc.RpcError) as caught:
        pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=CALL_TIMEOUT_S)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    still_serves(SECNN)


def test_writer_style_stream_passes_the_guard(channel) -> None:
    """grpc.health.v1 Watch answers with context.write() rather than yielding; the guard keeps it
    working (it is the only such handler in the server)."""
    watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=SECNN), timeout=CALL_TIMEOUT_S)
    try:
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
    finally:
        watch.cancel()
    with pytest.raises(grpc.RpcError) as caught:
        list(channel.unary_stream("/grpc.health.v1.Health/Watch")(b"\xff\xff\xff", timeout=CALL_TIMEOUT_S))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
