"""Every RPC of inference.GRPCInferenceService through tritonclient (sync and aio), plus
grpc.health.v1 and server reflection, against the real server on loopback."""

from __future__ import annotations

import asyncio
import queue
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from tritonclient.utils import InferenceServerException

from service.proto.inference import grpc_service_pb2 as pb
from service.proto.inference import grpc_service_pb2_grpc as pb_grpc
from tests.conftest import DEFAULT_MODELS, ServerProcess, read_model_config
from tests.integration.support import (
    ENCODER,
    MODELS,
    NOT_SERVING,
    SAGAN,
    SECNN,
    SERVING,
    assert_matches,
    infer_inputs,
    message_of,
    model_stats,
    requested,
    sample_inputs,
    spec_of,
    status_of,
)


# -- health and metadata ------------------------------------------------------------------------
def test_server_live_and_ready(client: grpcclient.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()


@pytest.mark.parametrize("model", MODELS)
def test_model_ready(client: grpcclient.InferenceServerClient, model: str) -> None:
    assert client.is_model_ready(model)
    assert client.is_model_ready(model, "1")
    assert not client.is_model_ready(model, "7")


def test_unknown_model_is_not_ready(client: grpcclient.InferenceServerClient) -> None:
    assert not client.is_model_ready("no_such_model")


def test_server_metadata(client: grpcclient.InferenceServerClient) -> None:
    metadata = client.get_server_metadata()
    assert metadata.name == "attnserve"
    assert metadata.version
    # What the server implements; clients (perf_analyzer too) look for these.
    assert {"model_repository", "model_configuration", "statistics"} <= set(metadata.extensions)


@pytest.mark.parametrize("model", MODELS)
def test_model_metadata_follows_config(
    client: grpcclient.InferenceServerClient, model_repository: Path, model: str
) -> None:
    spec = spec_of(model_repository, model)
    metadata = client.get_model_metadata(model)
    assert metadata.name == model
    assert list(metadata.versions) == ["1"]
    assert metadata.platform == "onnxruntime_onnx"
    # The batch dim is reported as -1 in front of each config dims (max_batch_size > 0).
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs] == [
        (t.name, t.datatype, [-1, *t.dims]) for t in spec.inputs
    ]
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.outputs] == [
        (t.name, t.datatype, [-1, *t.dims]) for t in spec.outputs
    ]


@pytest.mark.parametrize("model", MODELS)
def test_model_config_is_the_parsed_config_pbtxt(
    client: grpcclient.InferenceServerClient, model_repository: Path, model: str
) -> None:
    config = client.get_model_config(model).config
    on_disk = read_model_config(model_repository / model)
    assert config.max_batch_size == on_disk.max_batch_size > 0
    assert config.HasField("dynamic_batching")
    assert list(config.dynamic_batching.preferred_batch_size) == list(on_disk.dynamic_batching.preferred_batch_size)
    # tritonclient parsed the reply with Triton's own model_config.proto: same bytes on the wire
    # means every field number and type agrees with the proto the server parsed the file with.
    assert config.SerializeToString(deterministic=True) == on_disk.SerializeToString(deterministic=True)


def test_repository_index(client: grpcclient.InferenceServerClient) -> None:
    index = client.get_model_repository_index()
    assert sorted((m.name, m.version, m.state) for m in index.models) == [
        (name, "1", "READY") for name in sorted(DEFAULT_MODELS)
    ]


def test_statistics_count_a_request(client: grpcclient.InferenceServerClient, model_repository: Path) -> None:
    before = model_stats(client, SECNN)
    client.infer(SECNN, infer_inputs(sample_inputs(model_repository, SECNN, 2, np.random.default_rng(1))))
    after = model_stats(client, SECNN)
    assert after.success == before.success + 1
    assert after.inference_count == before.inference_count + 2  # rows, not requests
    assert after.execution_count == before.execution_count + 1
    everything = client.get_inference_statistics()  # no name: every ready model
    assert sorted(s.name for s in everything.model_stats) == sorted(DEFAULT_MODELS)


def test_statistics_of_unknown_model_is_not_found(client: grpcclient.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException) as caught:
        client.get_inference_statistics("no_such_model")
    assert status_of(caught.value) == "NOT_FOUND"


def test_unload_then_load(server: ServerProcess, client: grpcclient.InferenceServerClient, model_repository: Path) -> None:
    arrays = sample_inputs(model_repository, SECNN, 1, np.random.default_rng(2))
    try:
        client.unload_model(SECNN)
        assert not client.is_model_ready(SECNN)
        states = {m.name: (m.state, m.reason) for m in client.get_model_repository_index().models}
        assert states[SECNN][0] == "UNAVAILABLE"
        assert states[SECNN][1]  # a reason is given
        assert {states[m][0] for m in (SAGAN, ENCODER)} == {"READY"}
        with pytest.raises(InferenceServerException) as caught:
            client.infer(SECNN, infer_inputs(arrays))
        assert status_of(caught.value) == "UNAVAILABLE"
        assert _health(server, SECNN) == NOT_SERVING
        assert client.is_server_ready()  # the other models still serve
    finally:
        client.load_model(SECNN)
    assert client.is_model_ready(SECNN)
    assert _health(server, SECNN) == SERVING
    result = client.infer(SECNN, infer_inputs(arrays))
    assert result.as_numpy("logits").shape == (1, 10)


@pytest.mark.parametrize("name", ["no_such_model", f"../{SECNN}", f"{SECNN}/1", ""])
def test_load_unknown_model_is_not_found(client: grpcclient.InferenceServerClient, name: str) -> None:
    with pytest.raises(InferenceServerException) as caught:
        client.load_model(name)
    assert status_of(caught.value) == "NOT_FOUND"
    # A failed load leaves no trace: the index still lists only the repository's models.
    assert sorted(m.name for m in client.get_model_repository_index().models) == sorted(DEFAULT_MODELS)
    assert not client.is_model_ready(name)


# -- inference ------------------------------------------------------------------------------------
@pytest.mark.parametrize("model", MODELS)
def test_infer_matches_onnxruntime(client, model_repository, reference, model: str) -> None:
    arrays = sample_inputs(model_repository, model, 3, np.random.default_rng(10))
    result = client.infer(model, infer_inputs(arrays), request_id=f"sync-{model}")
    response = result.get_response()
    assert response.id == f"sync-{model}"
    assert response.model_name == model
    assert response.model_version == "1"
    expected = reference.run(model, arrays)
    assert [o.name for o in response.outputs] == [t.name for t in spec_of(model_repository, model).outputs]
    assert_matches(result, expected)


@pytest.mark.parametrize("model", MODELS)
async def test_aio_infer_matches_onnxruntime(
    aio_client: aioclient.InferenceServerClient, model_repository, reference, model: str
) -> None:
    arrays = sample_inputs(model_repository, model, 2, np.random.default_rng(11))
    result = await aio_client.infer(model, infer_inputs(arrays, aioclient), request_id=f"aio-{model}")
    assert result.get_response().id == f"aio-{model}"
    assert_matches(result, reference.run(model, arrays))


@pytest.mark.parametrize(
    ("model", "outputs"),
    [(SECNN, ["probabilities"]), (SAGAN, ["image"]), (ENCODER, ["logits", "embedding"])],
)
def test_requested_outputs_only(client, model_repository, reference, model: str, outputs: list[str]) -> None:
    arrays = sample_inputs(model_repository, model, 2, np.random.default_rng(12))
    result = client.infer(model, infer_inputs(arrays), outputs=requested(outputs))
    assert [o.name for o in result.get_response().outputs] == outputs
    assert_matches(result, reference.run(model, arrays), outputs)


def test_encoder_sequence_of_its_own_length(client, model_repository, reference) -> None:
    # Variable dims: the attention map comes back at the request's own length.
    arrays = sample_inputs(model_repository, ENCODER, 2, np.random.default_rng(13), length=7)
    result = client.infer(ENCODER, infer_inputs(arrays))
    heads = spec_of(model_repository, ENCODER).output("attention").dims[0]
    assert result.as_numpy("attention").shape == (2, heads, 7, 7)
    assert_matches(result, reference.run(ENCODER, arrays))


def _typed_request(model: str, arrays: dict[str, np.ndarray]) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model, id="typed")
    for name, array in arrays.items():
        tensor = request.inputs.add(name=name, shape=list(array.shape))
        if array.dtype == np.float32:
            tensor.datatype = "FP32"
            tensor.contents.fp32_contents.extend(array.ravel().tolist())
        else:
            tensor.datatype = "INT64"
            tensor.contents.int64_contents.extend(array.ravel().tolist())
    return request


@pytest.mark.parametrize("model", MODELS)
def test_typed_contents_give_the_raw_answer(server: ServerProcess, model_repository, reference, model: str) -> None:
    arrays = sample_inputs(model_repository, model, 2, np.random.default_rng(14))
    with grpc.insecure_channel(server.url) as channel:
        reply = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(_typed_request(model, arrays), timeout=30)
    assert reply.id == "typed"
    expected = reference.run(model, arrays)
    # Outputs always come back raw (tritonclient's as_numpy reads only raw_output_contents).
    assert len(reply.raw_output_contents) == len(reply.outputs) == len(expected)
    for tensor, raw in zip(reply.outputs, reply.raw_output_contents):
        got = np.frombuffer(raw, dtype=np.float32).reshape(tuple(tensor.shape))
        np.testing.assert_allclose(got, expected[tensor.name], rtol=1e-4, atol=1e-5, err_msg=tensor.name)


# -- streaming ------------------------------------------------------------------------------------
def _stream_requests(model_repository: Path) -> list[tuple[str, str, dict[str, np.ndarray]]]:
    rng = np.random.default_rng(15)
    good = [
        (SECNN, "s-0", sample_inputs(model_repository, SECNN, 1, rng)),
        (ENCODER, "s-1", sample_inputs(model_repository, ENCODER, 1, rng, length=9)),
        (SAGAN, "s-2", sample_inputs(model_repository, SAGAN, 2, rng)),
        (SECNN, "s-3", sample_inputs(model_repository, SECNN, 3, rng)),
    ]
    bad_arrays = sample_inputs(model_repository, SECNN, 1, rng)
    bad_arrays["image"] = bad_arrays["image"][:, :, :14, :]  # wrong fixed dim
    return [*good[:2], (SECNN, "bad", bad_arrays), *good[2:]]


def test_stream_infer_sync(server: ServerProcess, model_repository, reference) -> None:
    requests = _stream_requests(model_repository)
    answers: queue.Queue = queue.Queue()
    with grpcclient.InferenceServerClient(server.url) as client:
        client.start_stream(callback=lambda result, error: answers.put((result, error)))
        try:
            for model, request_id, arrays in requests:
                client.async_stream_infer(model, infer_inputs(arrays), request_id=request_id)
            received = [answers.get(timeout=60) for _ in requests]
        finally:
            client.stop_stream()
    _check_stream_answers(received, requests, reference)


async def test_stream_infer_aio(server: ServerProcess, model_repository, reference) -> None:
    requests = _stream_requests(model_repository)

    async def outgoing():
        for model, request_id, arrays in requests:
            yield {"model_name": model, "inputs": infer_inputs(arrays, aioclient), "request_id": request_id}

    client = aioclient.InferenceServerClient(server.url)
    try:
        received = []
        async for answer in client.stream_infer(outgoing(), stream_timeout=60):
            received.append(answer)
            if len(received) == len(requests):
                break
    finally:
        await client.close()
    _check_stream_answers(received, requests, reference)


def _check_stream_answers(received, requests, reference) -> None:
    """Every good request answered (by id, in any order), the bad one an error; the stream went on."""
    errors = [error for result, error in received if error is not None]
    results = {result.get_response().id: result for result, error in received if error is None}
    assert len(errors) == 1, [message_of(e) for e in errors]
    assert "image" in message_of(errors[0])
    assert sorted(results) == sorted(rid for _, rid, _ in requests if rid != "bad")
    for model, request_id, arrays in requests:
        if request_id != "bad":
            assert results[request_id].get_response().model_name == model
            assert_matches(results[request_id], reference.run(model, arrays))


# -- grpc.health.v1 and reflection ----------------------------------------------------------------
def _health(server: ServerProcess, service: str) -> int:
    with grpc.insecure_channel(server.url) as channel:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status


@pytest.mark.parametrize("service", ["", "inference.GRPCInferenceService", *MODELS])
def test_health_check_serving(server: ServerProcess, service: str) -> None:
    assert _health(server, service) == SERVING


def test_health_check_unknown_service(server: ServerProcess) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        _health(server, "no_such_model")
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_and_describes_the_services(server: ServerProcess) -> None:
    with grpc.insecure_channel(server.url) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = set(database.get_services())
        assert {"inference.GRPCInferenceService", "grpc.health.v1.Health"} <= services
        # What grpcurl does next: fetch the file defining the service and resolve its methods.
        service = descriptor_pool.DescriptorPool(database).FindServiceByName("inference.GRPCInferenceService")
        methods = {m.name: m for m in service.methods}
        assert {"ModelInfer", "ModelStreamInfer", "ModelMetadata", "RepositoryIndex"} <= set(methods)
        assert methods["ModelInfer"].input_type.full_name == "inference.ModelInferRequest"
        assert methods["ModelStreamInfer"].output_type.full_name == "inference.ModelStreamInferResponse"


async def test_aio_metadata_rpcs(aio_client: aioclient.InferenceServerClient) -> None:
    # The aio client takes the same paths; run a few concurrently on one channel.
    live, ready, model_ready, index = await asyncio.gather(
        aio_client.is_server_live(),
        aio_client.is_server_ready(),
        aio_client.is_model_ready(ENCODER),
        aio_client.get_model_repository_index(),
    )
    assert live and ready and model_ready
    assert {m.name for m in index.models} == set(DEFAULT_MODELS)
