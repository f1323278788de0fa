"""The client SDK's own behaviour: the v2 surface, retries only where safe, TLS, discovery."""

from __future__ import annotations

import subprocess
from concurrent import futures
from pathlib import Path
from typing import Iterator

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from service.client import TLS, AsyncClient, Client, ClientError, RetryPolicy
from service.proto.attnserve.v1 import attnserve_pb2 as pb
from service.proto.attnserve.v1 import attnserve_pb2_grpc as api_grpc
from tests.conftest import ServerProcess
from tests.integration.support import Reference, sample_inputs

FAST_RETRY = RetryPolicy(attempts=4, initial_backoff_s=0.001, max_backoff_s=0.002)


# -- both surfaces through one client ----------------------------------------------------------
def test_v2_infer_matches_the_reference(api: Client, model_repository: Path, reference: Reference) -> None:
    arrays = sample_inputs(model_repository, "transformer_encoder", 3, np.random.default_rng(0))
    outputs = api.infer("transformer_encoder", arrays, outputs=["embedding"])
    assert list(outputs) == ["embedding"]
    np.testing.assert_allclose(outputs["embedding"], reference.run("transformer_encoder", arrays)["embedding"], atol=1e-4)


def test_readiness_models_and_health(api: Client) -> None:
    assert api.ready() and api.ready("se_cnn_classifier") and not api.ready("se_cnn_classifier", "9")
    assert {m["name"] for m in api.models()} >= {"sagan_generator", "se_cnn_classifier", "transformer_encoder"}
    assert api.health() == "SERVING"
    assert api.health("attnserve.v1.AttnServe") == "SERVING"


async def test_async_v2_and_health(aio_api: AsyncClient, model_repository: Path, reference: Reference) -> None:
    arrays = sample_inputs(model_repository, "se_cnn_classifier", 2, np.random.default_rng(1))
    outputs = await aio_api.infer("se_cnn_classifier", arrays)
    np.testing.assert_allclose(outputs["probabilities"], reference.run("se_cnn_classifier", arrays)["probabilities"], atol=1e-5)
    assert await aio_api.ready() and await aio_api.health() == "SERVING"


def test_reflection_lists_the_api(server: ServerProcess) -> None:
    with grpc.insecure_channel(server.url) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        assert "attnserve.v1.AttnServe" in database.get_services()
        service = database.FindFileContainingSymbol("attnserve.v1.AttnServe")
        assert service.name == "attnserve/v1/attnserve.proto"


# -- retries, against a scripted server --------------------------------------------------------
class Flaky(api_grpc.AttnServeServicer):
    """Answers Encode with ``failures`` UNAVAILABLE first, then a reply; Classify always with ``code``."""

    def __init__(self, failures: int, code: grpc.StatusCode = grpc.StatusCode.INVALID_ARGUMENT) -> None:
        self.failures, self.code, self.calls = failures, code, 0
        self.metadata: dict[str, str] = {}

    def Encode(self, request: pb.EncodeRequest, context: grpc.ServicerContext) -> pb.EncodeResponse:
        self.calls += 1
        self.metadata = dict(context.invocation_metadata())
        if self.calls <= self.failures:
            context.abort(grpc.StatusCode.UNAVAILABLE, "queue full")
        return pb.EncodeResponse(model="fake", results=[pb.Encoding(ids=[1, 2])])

    def Classify(self, request: pb.ClassifyRequest, context: grpc.ServicerContext) -> pb.ClassifyResponse:
        self.calls += 1
        context.abort(self.code, "scripted")


@pytest.fixture
def flaky() -> Iterator[tuple[Flaky, str]]:
    servicer = Flaky(failures=2)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    api_grpc.add_AttnServeServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, f"127.0.0.1:{port}"
    server.stop(grace=None)


def test_unavailable_is_retried_until_it_succeeds(flaky: tuple[Flaky, str]) -> None:
    servicer, url = flaky
    with Client(url, retry=FAST_RETRY) as client:
        assert client.encode([[1, 2]]).model == "fake"
    assert servicer.calls == 3


def test_retries_stop_after_the_policy_attempts(flaky: tuple[Flaky, str]) -> None:
    servicer, url = flaky
    servicer.failures = 10
    with Client(url, retry=FAST_RETRY) as client, pytest.raises(ClientError) as caught:
        client.encode(["x"])
    assert caught.value.code == "UNAVAILABLE" and servicer.calls == 4


@pytest.mark.parametrize("code", [grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.DEADLINE_EXCEEDED,
                                  grpc.StatusCode.INTERNAL, grpc.StatusCode.RESOURCE_EXHAUSTED])
def test_other_failures_are_not_retried(flaky: tuple[Flaky, str], code: grpc.StatusCode) -> None:
    servicer, url = flaky
    servicer.code = code
    with Client(url, retry=FAST_RETRY) as client, pytest.raises(ClientError) as caught:
        client.classify([b"x"])
    assert caught.value.code == code.name and caught.value.details == "scripted"
    assert servicer.calls == 1


async def test_async_client_retries_unavailable(flaky: tuple[Flaky, str]) -> None:
    servicer, url = flaky
    async with AsyncClient(url, retry=FAST_RETRY) as client:
        assert (await client.encode(["x"])).model == "fake"
    assert servicer.calls == 3


def test_a_bearer_token_goes_with_every_attempt(flaky: tuple[Flaky, str]) -> None:
    servicer, url = flaky
    with Client(url, retry=FAST_RETRY, token="s3cret") as client:
        client.encode(["x"])
    assert servicer.calls == 3 and servicer.metadata["authorization"] == "Bearer s3cret"


def test_a_server_that_is_not_there_is_unavailable() -> None:
    with Client("127.0.0.1:1", retry=FAST_RETRY, timeout=10) as client, pytest.raises(ClientError) as caught:
        client.health()
    assert caught.value.code == "UNAVAILABLE"


def test_a_bad_stream_input_is_raised_not_swallowed(api: Client, tmp_path: Path) -> None:
    replies = api.classify_stream([[tmp_path / "missing.png"]])
    with pytest.raises(FileNotFoundError):
        list(replies)


# -- TLS --------------------------------------------------------------------------------------
def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server certificate for 'localhost' and a client certificate, all signed by it."""
    folder = tmp_path_factory.mktemp("tls")
    try:
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
                "-days", "1", "-subj", "/CN=attnserve test CA", cwd=folder)
        for name in ("server", "client"):
            openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                    "-subj", "/CN=localhost", cwd=folder)
            (folder / f"{name}.ext").write_text("subjectAltName=DNS:localhost\n")
            openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                    "-out", f"{name}.pem", "-days", "1", "-extfile", f"{name}.ext", cwd=folder)
    except (FileNotFoundError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"openssl cannot make test certificates: {exc}")
    return folder


@pytest.fixture
def tls_server(certificates: Path) -> Iterator[str]:
    """A gRPC server with TLS that requires a client certificate, serving health."""
    read = lambda name: (certificates / name).read_bytes()  # noqa: E731
    credentials = grpc.ssl_server_credentials(
        [(read("server.key"), read("server.pem"))], root_certificates=read("ca.pem"), require_client_auth=True
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(grace=None)


def test_mutual_tls_with_root_and_client_certificates(tls_server: str, certificates: Path) -> None:
    tls = TLS(root_certificates=certificates / "ca.pem", certificate_chain=certificates / "client.pem",
              private_key=certificates / "client.key", server_name="localhost")
    with Client(tls_server, tls=tls, timeout=10) as client:
        assert client.health() == "SERVING"


def test_tls_without_a_client_certificate_is_refused(tls_server: str, certificates: Path) -> None:
    tls = TLS(root_certificates=certificates / "ca.pem", server_name="localhost")
    with Client(tls_server, tls=tls, timeout=10, retry=RetryPolicy(attempts=1)) as client:
        with pytest.raises(ClientError) as caught:
            client.health()
    assert caught.value.code == "UNAVAILABLE"


def test_a_half_given_client_certificate_is_a_usage_error(certificates: Path) -> None:
    with pytest.raises(ValueError, match="both certificate_chain and private_key"):
        Client("127.0.0.1:1", tls=TLS(certificate_chain=certificates / "client.pem"))
