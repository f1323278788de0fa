"""Fixtures of the reliability and security tier.

- ``pki`` (session): a throw-away certificate authority, a server certificate for
  127.0.0.1/localhost, a client certificate from the same CA and one from a second, untrusted CA,
  generated with ``cryptography`` and written as PEM files.
- ``reference`` (session): onnxruntime in this process on the served files (tests/integration's
  helper), so answers are checked against the model, never against written-down numbers.
- ``channel`` / ``still_serves`` / ``outcomes`` (module): for the fuzz tests on the shared
  ``server``: a raw channel without message limits, a check that a good request to a model still
  gets the right answer, and status counts printed at the end.
- ``figures``: prints measured figures (rates, latencies, recovery times, RSS) and, when
  ``ATTNSERVE_FIGURES_DIR`` is set, appends them as JSON lines to ``reliability.jsonl`` there.
  Figures are for the notes; tests never assert on them.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from tests.conftest import ServerProcess
from tests.integration.support import MODELS, Reference, assert_matches, infer_inputs, sample_inputs
from tests.reliability.fuzzing import CALL_TIMEOUT_S

FIGURES_ENV = "ATTNSERVE_FIGURES_DIR"


# -- certificates --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Pki:
    ca: Path  # CA certificate (trust anchor for both sides)
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_client_cert: Path  # signed by a CA the server does not trust
    rogue_client_key: Path
    other_ca: Path  # a CA that did not sign the server certificate


def _write_pki(folder: Path) -> Pki:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def name(common_name: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])

    def usage(**allowed: bool) -> x509.KeyUsage:
        flags = dict.fromkeys(
            ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
             "key_agreement", "key_cert_sign", "crl_sign", "encipher_only", "decipher_only"), False)
        flags.update(allowed)
        return x509.KeyUsage(**flags)

    def builder(subject: str, issuer: x509.Name, public_key: Any) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(name(subject))
            .issuer_name(issuer)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=2))
        )

    def make_ca(common_name: str) -> tuple[Any, Any]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            builder(common_name, name(common_name), key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(usage(digital_signature=True, key_cert_sign=True, crl_sign=True), critical=True)
            .sign(key, hashes.SHA256())
        )
        return key, cert

    def issue(ca: tuple[Any, Any], common_name: str, purpose: Any, sans: list[x509.GeneralName] | None) -> tuple[Any, Any]:
        ca_key, ca_cert = ca
        key = ec.generate_private_key(ec.SECP256R1())
        b = (
            builder(common_name, ca_cert.subject, key.public_key())
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(usage(digital_signature=True, key_agreement=True), critical=True)
            .add_extension(x509.ExtendedKeyUsage([purpose]), critical=False)
        )
        if sans:
            b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return key, b.sign(ca_key, hashes.SHA256())

    def write(stem: str, key: Any, cert: Any) -> tuple[Path, Path]:
        cert_path, key_path = folder / f"{stem}.crt", folder / f"{stem}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        return cert_path, key_path

    ca = make_ca("attnserve test CA")
    other = make_ca("attnserve other CA")
    sans = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    server = issue(ca, "attnserve test server", ExtendedKeyUsageOID.SERVER_AUTH, sans)
    client = issue(ca, "attnserve test client", ExtendedKeyUsageOID.CLIENT_AUTH, None)
    rogue = issue(other, "attnserve rogue client", ExtendedKeyUsageOID.CLIENT_AUTH, None)
    ca_cert, _ = write("ca", *ca)
    other_cert, _ = write("other-ca", *other)
    server_cert, server_key = write("server", *server)
    client_cert, client_key = write("client", *client)
    rogue_cert, rogue_key = write("rogue-client", *rogue)
    return Pki(ca_cert, server_cert, server_key, client_cert, client_key, rogue_cert, rogue_key, other_cert)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    pytest.importorskip("cryptography", reason="certificates for the TLS tests are generated with cryptography")
    return _write_pki(tmp_path_factory.mktemp("pki"))


# -- reference answers --------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def reference(model_repository: Path) -> Reference:
    return Reference(model_repository)


# -- figures ------------------------------------------------------------------------------------------
@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Callable[..., None]:
    """``figures(**values)``: print them (run pytest with -s to see) and keep them for the notes."""

    def record(**values: Any) -> None:
        row = {"test": request.node.nodeid, "at": time.strftime("%Y-%m-%dT%H:%M:%S"), **values}
        print("\nFIGURES " + json.dumps(row, sort_keys=False))
        folder = os.environ.get(FIGURES_ENV)
        if folder:
            Path(folder).mkdir(parents=True, exist_ok=True)
            with open(Path(folder) / "reliability.jsonl", "a", encoding="utf-8") as out:
                out.write(json.dumps(row) + "\n")

    return record


# -- fuzzing: one shared server, a channel to it, and the check that it still serves -----------------
@pytest.fixture(scope="module")
def outcomes(request: pytest.FixtureRequest) -> Iterator[Counter]:
    """Status counts per test, printed for the notes (pytest -s)."""
    seen: Counter = Counter()
    yield seen
    print(f"\nFUZZ OUTCOMES {request.module.__name__}: {dict(sorted(seen.items()))}")


@pytest.fixture(scope="module")
def channel(server: ServerProcess) -> Iterator[grpc.Channel]:
    unlimited = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
    with grpc.insecure_channel(server.url, options=unlimited) as ch:
        yield ch


@pytest.fixture(scope="module")
def triton(server: ServerProcess) -> Iterator[grpcclient.InferenceServerClient]:
    with grpcclient.InferenceServerClient(server.url) as client:
        yield client


@pytest.fixture(scope="module")
def still_serves(server: ServerProcess, triton, model_repository: Path, reference) -> Callable[[str], None]:
    """A good request to ``model`` gets the right answer, and the process is still the same one."""
    good = {m: sample_inputs(model_repository, m, 2, np.random.default_rng(100 + i)) for i, m in enumerate(MODELS)}
    expected = {m: reference.run(m, arrays) for m, arrays in good.items()}

    def check(model: str) -> None:
        assert server.returncode is None, f"the server exited\n{server.log[-3000:]}"
        assert_matches(triton.infer(model, infer_inputs(good[model]), client_timeout=CALL_TIMEOUT_S), expected[model])

    return check
