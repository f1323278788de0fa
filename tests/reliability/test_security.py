"""Security: TLS and mutual TLS on the gRPC port, the bearer-token check, the metrics endpoint on
its own address, settings that refuse to start, and a read-only model repository."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from tritonclient.utils import InferenceServerException

from service.proto.attnserve.v1 import attnserve_pb2 as api_pb
from service.proto.attnserve.v1 import attnserve_pb2_grpc as api_grpc
from service.proto.inference import grpc_service_pb2 as pb
from service.proto.inference import grpc_service_pb2_grpc as pb_grpc
from tests.conftest import REPO_ROOT, ServerProcess
from tests.deploy.helpers import DOCKERFILE, copy_sources, dockerfile_stages
from tests.integration.support import (
    SECNN,
    SERVING,
    assert_matches,
    infer_inputs,
    message_of,
    sample_inputs,
    status_of,
)
from tests.reliability.conftest import Pki

TOKEN = "attnserve-test-token-0123456789abcdef"
ONE_MODEL = ("--load-model", SECNN)


def tls_flags(pki: Pki, *, mutual: bool = False) -> list[str]:
    flags = ["--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key)]
    return flags + (["--tls-client-ca", str(pki.ca)] if mutual else [])


def secure_channel(url: str, pki: Pki, *, cert: Path | None = None, key: Path | None = None, ca: Path | None = None) -> grpc.Channel:
    credentials = grpc.ssl_channel_credentials(
        (ca or pki.ca).read_bytes(), key.read_bytes() if key else None, cert.read_bytes() if cert else None
    )
    return grpc.secure_channel(url, credentials)


def health(channel: grpc.Channel, service: str = "") -> int:
    return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=30).status


def good_infer(client: grpcclient.InferenceServerClient, repository: Path, reference, **kwargs) -> None:
    arrays = sample_inputs(repository, SECNN, 2, np.random.default_rng(81))
    assert_matches(client.infer(SECNN, infer_inputs(arrays), client_timeout=60, **kwargs), reference.run(SECNN, arrays))


def refused(call, *args, **kwargs) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as caught:
        call(*args, **kwargs)
    return caught.value


def healthcheck(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "service.healthcheck", *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=60)


# -- TLS -----------------------------------------------------------------------------------------------
def test_tls_answers_tls_clients_and_refuses_plaintext(start_server, pki: Pki, model_repository, reference) -> None:
    server = start_server(*tls_flags(pki), *ONE_MODEL)
    assert "grpc=127.0.0.1:" in server.log

    # tritonclient over TLS, trusting the test CA: inference works and is right.
    with grpcclient.InferenceServerClient(server.url, ssl=True, root_certificates=str(pki.ca)) as client:
        assert client.is_server_ready()
        good_infer(client, model_repository, reference)
    # A plain grpc secure channel: health and the v2 service.
    with secure_channel(server.url, pki) as channel:
        assert health(channel) == SERVING
        assert pb_grpc.GRPCInferenceServiceStub(channel).ServerLive(pb.ServerLiveRequest(), timeout=30).live

    # Plaintext on the TLS port fails the handshake: never an answer.
    with grpcclient.InferenceServerClient(server.url) as plain:
        assert status_of(refused(plain.is_server_live, client_timeout=30)) == "UNAVAILABLE"
    # A client that does not trust the server's CA refuses the server.
    with secure_channel(server.url, pki, ca=pki.other_ca) as untrusting:
        with pytest.raises(grpc.RpcError) as caught:
            health(untrusting)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE

    # The operator check speaks TLS when given the CA, and fails without it.
    assert healthcheck("--url", server.url, "--tls-ca", str(pki.ca)).returncode == 0
    assert healthcheck("--url", server.url, "--timeout", "5").returncode == 1


def test_mutual_tls_requires_a_client_certificate_from_the_ca(start_server, pki: Pki, model_repository, reference) -> None:
    server = start_server(*tls_flags(pki, mutual=True), *ONE_MODEL)
    with grpcclient.InferenceServerClient(
        server.url, ssl=True, root_certificates=str(pki.ca),
        private_key=str(pki.client_key), certificate_chain=str(pki.client_cert),
    ) as client:
        good_infer(client, model_repository, reference)

    # No client certificate, or one from a CA the server does not trust: the handshake fails,
    # for health too (probes of an mTLS server need a certificate).
    for cert, key in ((None, None), (pki.rogue_client_cert, pki.rogue_client_key)):
        with secure_channel(server.url, pki, cert=cert, key=key) as channel:
            with pytest.raises(grpc.RpcError) as caught:
                health(channel)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    with grpcclient.InferenceServerClient(server.url, ssl=True, root_certificates=str(pki.ca)) as anonymous:
        assert status_of(refused(anonymous.infer, SECNN, infer_inputs(sample_inputs(
            model_repository, SECNN, 1, np.random.default_rng(82))), client_timeout=30)) == "UNAVAILABLE"

    args = ["--url", server.url, "--tls-ca", str(pki.ca)]
    assert healthcheck(*args, "--tls-cert", str(pki.client_cert), "--tls-key", str(pki.client_key)).returncode == 0
    assert healthcheck(*args, "--timeout", "5").returncode == 1


# -- bearer token --------------------------------------------------------------------------------------
@pytest.fixture(params=["env", "file"])
def token_server(request, start_server, tmp_path: Path) -> ServerProcess:
    if request.param == "env":
        return start_server(*ONE_MODEL, env={"ATTNSERVE_AUTH_TOKEN": TOKEN})
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")  # a trailing newline, as editors and secrets mounts write
    token_file.chmod(0o600)
    return start_server(*ONE_MODEL, "--auth-token-file", str(token_file))


def test_bearer_token_guards_every_rpc_but_health(token_server: ServerProcess, model_repository, reference) -> None:
    server = token_server
    arrays = sample_inputs(model_repository, SECNN, 1, np.random.default_rng(83))
    with grpcclient.InferenceServerClient(server.url) as client:
        # The right token, as tritonclient sends headers: every call works. The scheme is
        # case-insensitive (RFC 6750).
        for scheme in ("Bearer", "bearer"):
            headers = {"authorization": f"{scheme} {TOKEN}"}
            assert client.is_server_ready(headers=headers)
            good_infer(client, model_repository, reference, headers=headers)

        # No token and wrong tokens: UNAUTHENTICATED with a message that says what to send.
        missing = refused(client.infer, SECNN, infer_inputs(arrays), client_timeout=30)
        assert status_of(missing) == "UNAUTHENTICATED"
        assert "authorization: Bearer" in message_of(missing)
        for header in (f"Bearer {TOKEN[:-1]}", f"Bearer {TOKEN}x", "Bearer", TOKEN, f"Basic {TOKEN}"):
            wrong = refused(client.infer, SECNN, infer_inputs(arrays), headers={"authorization": header}, client_timeout=30)
            assert status_of(wrong) == "UNAUTHENTICATED", header
        for call in (client.is_server_live, client.get_model_repository_index, client.get_server_metadata):
            assert status_of(refused(call, client_timeout=30)) == "UNAUTHENTICATED"

    with grpc.insecure_channel(server.url) as channel:
        # grpc.health.v1 needs no token (Kubernetes and Docker probes send none).
        assert health(channel) == SERVING
        assert health(channel, SECNN) == SERVING
        # Streams, reflection and the attnserve API are guarded too.
        stream = pb_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(iter([pb.ModelInferRequest(model_name=SECNN)]), timeout=30)
        with pytest.raises(grpc.RpcError) as caught:
            list(stream)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        reflect = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=30)
        with pytest.raises(grpc.RpcError) as caught:
            list(reflect)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as caught:
            api_grpc.AttnServeStub(channel).Classify(api_pb.ClassifyRequest(images=[b"x"]), timeout=30)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # ... and with the token, reflection answers.
        reflect = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=30,
            metadata=[("authorization", f"Bearer {TOKEN}")])
        names = {s.name for reply in reflect for s in reply.list_services_response.service}
        assert "inference.GRPCInferenceService" in names
    assert TOKEN not in server.log  # the secret never reaches the log


def test_token_and_mutual_tls_together(start_server, pki: Pki, model_repository, reference, tmp_path: Path) -> None:
    """The production shape: mTLS for the channel, a token for the caller."""
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    server = start_server(*tls_flags(pki, mutual=True), "--auth-token-file", str(token_file), *ONE_MODEL)
    with grpcclient.InferenceServerClient(
        server.url, ssl=True, root_certificates=str(pki.ca),
        private_key=str(pki.client_key), certificate_chain=str(pki.client_cert),
    ) as client:
        good_infer(client, model_repository, reference, headers={"authorization": f"Bearer {TOKEN}"})
        assert status_of(refused(client.is_server_live, client_timeout=30)) == "UNAUTHENTICATED"


# -- refusing to start on bad security settings -------------------------------------------------------
def _bad_settings_cases(pki: Pki, tmp: Path) -> list[tuple[str, list[str], dict[str, str], list[str]]]:
    short = tmp / "short-token"
    short.write_text("abc")
    token = tmp / "token"
    token.write_text(TOKEN)
    not_pem = tmp / "not-pem.crt"
    not_pem.write_text("hello")
    return [
        ("cert-without-key", ["--tls-cert", str(pki.server_cert)], {}, ["tls_cert", "tls_key"]),
        ("client-ca-without-tls", ["--tls-client-ca", str(pki.ca)], {}, ["tls_client_ca"]),
        ("key-of-another-cert", ["--tls-cert", str(pki.server_cert), "--tls-key", str(pki.client_key)], {}, ["tls_key"]),
        ("missing-cert-file", ["--tls-cert", str(tmp / "nope.crt"), "--tls-key", str(pki.server_key)], {}, ["nope.crt"]),
        ("cert-not-pem", ["--tls-cert", str(not_pem), "--tls-key", str(pki.server_key)], {}, ["not-pem.crt", "PEM"]),
        ("missing-token-file", ["--auth-token-file", str(tmp / "nope-token")], {}, ["auth_token_file", "nope-token"]),
        ("short-token", ["--auth-token-file", str(short)], {}, ["at least"]),
        ("token-twice", ["--auth-token-file", str(token)], {"ATTNSERVE_AUTH_TOKEN": TOKEN}, ["auth_token_file", "ATTNSERVE_AUTH_TOKEN"]),
        ("negative-tensor-limit", ["--max-tensor-bytes", "-1"], {}, ["max_tensor_bytes"]),
    ]


def test_bad_security_settings_exit_2(model_repository: Path, pki: Pki, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATTNSERVE_")}
    for case, flags, extra_env, words in _bad_settings_cases(pki, tmp_path):
        done = subprocess.run(
            [sys.executable, "-m", "service", "serve", "--model-repository", str(model_repository),
             "--grpc-port", "0", "--metrics-port", "0", "--load-model", SECNN, *flags],
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, env={**env, **extra_env},
        )
        assert done.returncode == 2, (case, done.stderr[-2000:])
        for word in words:
            assert word in done.stderr, (case, done.stderr[-2000:])
        assert "Traceback" not in done.stderr, case
        assert TOKEN not in done.stderr, case


# -- metrics on a separate address -----------------------------------------------------------------
def _connects(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=5):
            return True
    except OSError:
        return False


def test_metrics_bind_their_own_address(start_server) -> None:
    """gRPC on 127.0.0.1 and metrics on 127.0.0.2: each answers only where it was bound."""
    server = start_server("--metrics-host", "127.0.0.2", *ONE_MODEL)
    grpc_port = int(server.url.rsplit(":", 1)[1])
    assert server.metrics_url.startswith("http://127.0.0.2:")
    metrics_port = int(server.metrics_url.rsplit(":", 1)[1].split("/")[0])
    assert "attnserve_model_ready" in server.metrics_text()
    assert not _connects("127.0.0.1", metrics_port)
    assert not _connects("127.0.0.2", grpc_port)
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5)
    with grpcclient.InferenceServerClient(server.url) as client:
        assert client.is_server_ready()


# -- read-only model repository ---------------------------------------------------------------------
def _snapshot(root: Path) -> dict[str, tuple[int, int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_mode, p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def test_serves_a_read_only_repository_without_write_permission(make_repository, model_repository, reference) -> None:
    """Every file and folder of the repository read-only, and the server without the capability
    that lets root ignore file modes (as uid 10001 in the image): it loads, serves, reloads,
    and leaves the repository exactly as it was."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("needs setpriv (util-linux) to drop CAP_DAC_OVERRIDE")
    repository = make_repository(models=(SECNN,))
    for path in [repository, *repository.rglob("*")]:
        path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    before = _snapshot(repository)
    process = ServerProcess(repository)
    process.argv = [setpriv, "--bounding-set", "-dac_override,-dac_read_search", "--inh-caps", "-all", *process.argv]
    try:
        process.start()
        with grpcclient.InferenceServerClient(process.url) as client:
            good_infer(client, model_repository, reference)
            client.unload_model(SECNN)
            client.load_model(SECNN)
            good_infer(client, model_repository, reference)
        # The process really could not write there.
        probe = subprocess.run([setpriv, "--bounding-set", "-dac_override,-dac_read_search", "--inh-caps", "-all",
                                sys.executable, "-c", f"open({str(repository / 'probe')!r}, 'w')"],
                               capture_output=True, text=True, timeout=60)
        assert probe.returncode != 0 and "Permission denied" in probe.stderr
        assert process.stop() == 0
    finally:
        process.stop()
        for path in [repository, *repository.rglob("*")]:
            path.chmod(path.stat().st_mode | stat.S_IWUSR)
    assert _snapshot(repository) == {k: (v[0] | stat.S_IWUSR, *v[1:]) for k, v in before.items()}


def test_image_model_repository_is_not_writable_by_the_service_user() -> None:
    """The runtime images copy /models as root-owned files that group and others (uid 10001)
    can only read: the export stage strips their write bits and the COPY does not chown."""
    _, stages = dockerfile_stages(DOCKERFILE.read_text())
    assert "chmod -R u=rwX,go=rX /models" in " ".join(stages["export"].all("RUN"))
    assert "chmod -R u=rwX,go=rX /models-gpu" in " ".join(stages["export-gpu"].all("RUN"))
    # runtime-gpu takes the KIND_GPU repository of the export-gpu stage (issue 17).
    for stage, source in (("runtime-cpu", "/models"), ("runtime-gpu", "/models-gpu")):
        copies = [copy_sources(args) for args in stages[stage].all("COPY")]
        models = [(flags, sources) for flags, sources in copies if sources == [source]]
        assert models and all("chown" not in flags and "chmod" not in flags for flags, _ in models), stage
        assert stages[stage].last("USER").split(":")[0] != "0"
