"""The compose stack for real: attnserve + Prometheus from docker-compose.yml with the CPU and
no-registry overrides, driven from the host through the published ports only.

The tests run in file order: the stack comes up healthy, serves images and tensors, exposes
metrics, Prometheus scrapes it and evaluates the rules, and last `compose stop` under load
loses nothing.
"""

from __future__ import annotations

import asyncio
import io
import json
import time
import urllib.request
from collections import Counter

import grpc
import numpy as np
import pytest
from PIL import Image

from service.dataplane import REFUSAL
from service.proto.attnserve.v1 import attnserve_pb2 as api_pb
from service.proto.attnserve.v1 import attnserve_pb2_grpc as api_grpc
from service.proto.inference import grpc_service_pb2 as pb
from service.proto.inference import grpc_service_pb2_grpc as pb_grpc
from tests.containers.conftest import Stack, podman, wait_for
from tests.reliability.test_drain import DRAINING, OK, UNAVAILABLE, Load

pytestmark = pytest.mark.containers

SECNN = "se_cnn_classifier"
GRACE_S = 45  # docker-compose.yml stop_grace_period
CLIENTS = 48


def http_json(url: str, timeout: float = 10) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as reply:
        return json.loads(reply.read())


def held_out_digits(count: int) -> tuple[list[bytes], list[int]]:
    """Held-out MNIST digits (never trained on) as PNG files, with their labels."""
    from export.train.digits import mnist_split

    split = mnist_split()
    pngs = []
    for image in split.test_images[:count]:
        buffer = io.BytesIO()
        Image.fromarray((image[0].numpy() * 255).round().astype(np.uint8), mode="L").save(buffer, format="PNG")
        pngs.append(buffer.getvalue())
    return pngs, [int(label) for label in split.test_labels[:count]]


@pytest.fixture(scope="module")
def healthy(stack: Stack, figures_file) -> Stack:
    """The stack once compose's health check for attnserve passes (run by hand where podman has
    no systemd to schedule it), with the time from `up` to healthy recorded."""
    container = stack.container("attnserve")
    started = time.monotonic()
    wait_for(lambda: podman("healthcheck", "run", container, check=False).returncode == 0,
             120, "attnserve's compose health check")
    figures_file("healthy", how="compose up", seconds=round(time.monotonic() - started, 2))
    return stack


def test_attnserve_runs_with_the_compose_security_options(healthy: Stack) -> None:
    info = healthy.inspect("attnserve")
    host = info["HostConfig"]
    assert host["ReadonlyRootfs"] is True
    assert "no-new-privileges" in " ".join(host.get("SecurityOpt") or [])
    assert info["Config"]["User"] == "10001:10001"
    assert info["State"]["Health"]["Status"] == "healthy"
    # cap_drop: [ALL] leaves the process no capabilities at all.
    status = podman("exec", healthy.container("attnserve"), "cat", "/proc/1/status").stdout
    caps = {line.split(":")[0]: line.split()[1] for line in status.splitlines() if line.startswith("Cap")}
    assert int(caps["CapEff"], 16) == 0 and int(caps["CapPrm"], 16) == 0, caps
    # Nothing but /tmp is writable.
    touch = podman("exec", healthy.container("attnserve"), "sh", "-c", "touch /models/x || touch /x", check=False)
    assert touch.returncode != 0 and "Read-only file system" in touch.stderr


def test_classifies_pngs_and_answers_model_infer_through_the_published_port(healthy: Stack) -> None:
    pngs, labels = held_out_digits(20)
    with grpc.insecure_channel(f"127.0.0.1:{healthy.ports['grpc']}") as channel:
        api = api_grpc.AttnServeStub(channel)
        reply = api.Classify(api_pb.ClassifyRequest(model=SECNN, images=pngs, top_k=1), timeout=30)
        predicted = [result.labels[0].index for result in reply.results]
        assert sum(p == y for p, y in zip(predicted, labels)) >= 18, (predicted, labels)

        v2 = pb_grpc.GRPCInferenceServiceStub(channel)
        assert v2.ServerReady(pb.ServerReadyRequest(), timeout=10).ready
        meta = v2.ModelMetadata(pb.ModelMetadataRequest(name=SECNN), timeout=10)
        shape = [1, *meta.inputs[0].shape[1:]]
        image = np.random.default_rng(17).random(shape, dtype=np.float32)
        request = pb.ModelInferRequest(model_name=SECNN)
        request.inputs.add(name=meta.inputs[0].name, datatype="FP32", shape=shape)
        request.raw_input_contents.append(image.tobytes())
        request.outputs.add(name="probabilities")
        answer = v2.ModelInfer(request, timeout=30)
        probabilities = np.frombuffer(answer.raw_output_contents[0], dtype=np.float32)
        assert probabilities.shape == (10,) and abs(float(probabilities.sum()) - 1) < 1e-4
    ready = urllib.request.urlopen(f"http://127.0.0.1:{healthy.ports['http']}/v2/health/ready", timeout=10)
    assert ready.status == 200


def test_metrics_endpoint_counts_the_requests(healthy: Stack) -> None:
    with urllib.request.urlopen(f"http://127.0.0.1:{healthy.ports['metrics']}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    served = [
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
        if line.startswith("attnserve_requests_total{") and f'model="{SECNN}"' in line and 'code="OK"' in line
    ]
    assert served and sum(served) >= 2, [l for l in text.splitlines() if "requests_total" in l][:10]


def test_prometheus_scrapes_attnserve_and_evaluates_the_rules(healthy: Stack) -> None:
    base = f"http://127.0.0.1:{healthy.ports['prometheus']}/api/v1"

    def attnserve_up() -> bool:
        try:
            targets = http_json(f"{base}/targets")["data"]["activeTargets"]
        except OSError:
            return False  # Prometheus still starting
        return any(t["labels"].get("job") == "attnserve" and t["health"] == "up" for t in targets)

    wait_for(attnserve_up, 90, "Prometheus to report the attnserve target up")

    def recorded() -> bool:
        result = http_json(f"{base}/query?query=model:attnserve_requests:rate5m")["data"]["result"]
        return any(r["metric"].get("model") == SECNN for r in result)

    # A recording rule needs two scrapes (5 s apart) and an evaluation (every 15 s).
    wait_for(recorded, 120, "the recording rule model:attnserve_requests:rate5m to have a value")
    groups = http_json(f"{base}/rules")["data"]["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert rules, "no rules loaded"
    unhealthy = {r["name"]: r.get("lastError") for r in rules if r["health"] != "ok"}
    assert not unhealthy, unhealthy


async def test_compose_stop_under_load_loses_no_accepted_request(healthy: Stack, figures_file) -> None:
    """48 closed-loop clients on the published gRPC port, then `compose stop attnserve`
    (SIGTERM, 45 s grace): every request is answered or refused before any work with the
    drain's UNAVAILABLE, each client ends at such a refusal, and the container exits 0 by
    itself well within the grace period."""
    container = healthy.container("attnserve")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{healthy.ports['grpc']}") as channel:
        v2 = pb_grpc.GRPCInferenceServiceStub(channel)
        meta = await v2.ModelMetadata(pb.ModelMetadataRequest(name=SECNN), timeout=10)
        image = np.random.default_rng(18).random([1, *meta.inputs[0].shape[1:]], dtype=np.float32)
        probe = pb.ModelInferRequest(model_name=SECNN)
        probe.inputs.add(name="image", datatype="FP32", shape=list(image.shape))
        probe.raw_input_contents.append(image.tobytes())
        probe.outputs.add(name="probabilities")
        reference = np.frombuffer((await v2.ModelInfer(probe, timeout=30)).raw_output_contents[0], np.float32)
        load = Load(channel, image, reference.reshape(1, -1), b"")
        refusals: Counter[str] = Counter()  # UNAVAILABLE by message: a refusal, or a lost request?
        record = load.outcomes.record

        def keep_details(client: int, code: str, details: str = "") -> None:
            if code == UNAVAILABLE:
                refusals[details] += 1
            record(client, code, details)

        load.outcomes.record = keep_details  # type: ignore[method-assign]
        workers = [asyncio.create_task(load.unary(i)) for i in range(CLIENTS)]
        try:
            deadline = time.monotonic() + 120
            while len(load.outcomes.answered_clients) < CLIENTS and not any(w.done() for w in workers):
                assert time.monotonic() < deadline, "clients never all answered"
                await asyncio.sleep(0.05)  # polling the clients' progress, not waiting for an effect
            assert not any(w.done() for w in workers), (load.outcomes.codes, load.outcomes.strange)
            started = time.monotonic()
            stop = asyncio.create_task(asyncio.to_thread(healthy.compose, "stop", "attnserve"))
            await asyncio.wait_for(asyncio.gather(*workers), timeout=GRACE_S)
            await stop
            stop_s = time.monotonic() - started
        finally:
            for worker in workers:
                worker.cancel()
    seen = load.outcomes
    state = healthy.inspect("attnserve")["State"]
    logs = podman("logs", container).stderr + podman("logs", container).stdout
    figures_file("compose-stop", clients=CLIENTS, requests=sum(seen.codes.values()), answered=seen.codes[OK],
                 refused=seen.codes[UNAVAILABLE], stop_s=round(stop_s, 2), exit_code=state["ExitCode"])
    assert not seen.strange, f"neither answered nor refused: {dict(seen.strange)}"
    assert seen.wrong_answers == 0
    assert seen.codes[UNAVAILABLE] == CLIENTS
    # Every UNAVAILABLE is the data plane's refusal before any work, not a connection cut under
    # a request that had been accepted.
    assert set(refusals) == {REFUSAL}, dict(refusals)
    assert seen.codes[OK] > CLIENTS
    assert state["ExitCode"] == 0, logs[-3000:]
    assert stop_s < GRACE_S
    assert "stopped in" in logs and "exit timeout reached" not in logs, logs[-3000:]
    assert DRAINING in logs, logs[-3000:]
