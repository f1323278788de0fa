"""The HTTP port through the server's lifecycle: model load/unload over REST, and the drain on
SIGTERM (not ready first, then 503 for new work, every accepted request answered)."""

from __future__ import annotations

import asyncio
import http.client
import json

import numpy as np
import pytest
import tritonclient.http as httpclient
import tritonclient.http.aio as aiohttpclient
from tritonclient.utils import InferenceServerException

from tests.conftest import ServerProcess
from tests.integration.http.conftest import address
from tests.integration.http.test_http_v2 import http_inputs
from tests.integration.support import ENCODER, HOLD_US, SECNN, assert_matches, sample_inputs, wait_for_the_delay, wait_until_async

QUIET = "not ready: serving for the"
DRAINING = "draining: refusing new requests"


def _get(server: ServerProcess, path: str) -> tuple[int, dict[str, str]]:
    host, port = address(server).rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        conn.request("GET", path)
        reply = conn.getresponse()
        reply.read()
        return reply.status, dict(reply.getheaders())
    finally:
        conn.close()


def test_load_and_unload_over_rest(start_server, make_repository) -> None:
    server = start_server("--load-model", SECNN, repository=make_repository(models=(SECNN, ENCODER)))
    client = httpclient.InferenceServerClient(address(server))
    try:
        assert not client.is_model_ready(ENCODER)
        client.load_model(ENCODER)
        assert client.is_model_ready(ENCODER)
        client.unload_model(ENCODER)
        assert not client.is_model_ready(ENCODER)
        # Triton's config override: a JSON ModelConfig for this load only.
        config = client.get_model_config(SECNN)
        config["max_batch_size"] = 8
        config["dynamic_batching"]["preferred_batch_size"] = [8]
        client.load_model(SECNN, config=json.dumps(config))
        assert client.get_model_config(SECNN)["max_batch_size"] == 8
        with pytest.raises(InferenceServerException) as bad:
            client.load_model(SECNN, config="{not json")
        assert bad.value.status() == "400"
        with pytest.raises(InferenceServerException) as missing:
            client.load_model("no_such_model")
        assert missing.value.status() in ("400", "404")
        states = {(r["name"], r.get("state")) for r in client.get_model_repository_index()}
        assert (ENCODER, "UNAVAILABLE") in states or (ENCODER, "UNLOADED") in states, states
    finally:
        client.close()


def test_load_refused_when_model_control_is_none(start_server, make_repository) -> None:
    server = start_server("--model-control-mode", "none", repository=make_repository(models=(SECNN,)))
    client = httpclient.InferenceServerClient(address(server))
    try:
        with pytest.raises(InferenceServerException) as refused:
            client.unload_model(SECNN)
        assert refused.value.status() == "503" and "not allowed" in refused.value.message()
        assert client.is_model_ready(SECNN)
        host, port = address(server).rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        try:
            conn.request("POST", f"/v2/repository/models/{SECNN}/unload", body=b"{}")
            reply = conn.getresponse()
            assert reply.status == 503 and "not allowed" in json.loads(reply.read())["error"]
            assert reply.getheader("Retry-After") == "1"  # retryable: says when
        finally:
            conn.close()
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        try:
            conn.request("GET", "/v2/models/no_such_model")
            reply = conn.getresponse()
            reply.read()
            assert reply.status == 404 and reply.getheader("Retry-After") is None  # not retryable
        finally:
            conn.close()
    finally:
        client.close()


def _hold_queue(config) -> None:
    config.dynamic_batching.max_queue_delay_microseconds = HOLD_US
    wait_for_the_delay(config)
    del config.dynamic_batching.preferred_batch_size[:]


async def test_drain_over_http(start_server, make_repository, model_repository, reference) -> None:
    """SIGTERM: readiness 503 at once while inference still works (the quiet period); a second
    signal starts the drain: new requests 503 with Connection: close, the held ones answered."""
    repository = make_repository(models=(SECNN, ENCODER), edits={SECNN: _hold_queue})
    server = start_server("--drain-quiet-secs", "300", repository=repository)
    client = aiohttpclient.InferenceServerClient(address(server))
    rng = np.random.default_rng(18)
    held = [sample_inputs(model_repository, SECNN, 1 + i % 2, rng) for i in range(6)]
    encoder_input = sample_inputs(model_repository, ENCODER, 1, rng, length=7)
    try:
        tasks = [asyncio.create_task(client.infer(SECNN, http_inputs(h, aiohttpclient))) for h in held]
        await wait_until_async(lambda: server.metric("attnserve_queue_depth", model=SECNN) == len(held), what="held")
        assert _get(server, "/v2/health/ready")[0] == 200

        server.terminate()
        await asyncio.to_thread(server.wait_for_log, QUIET)
        assert _get(server, "/v2/health/ready")[0] == 503
        assert _get(server, f"/v2/models/{SECNN}/ready")[0] == 503
        assert _get(server, "/v2/health/live")[0] == 200
        result = await client.infer(ENCODER, http_inputs(encoder_input, aiohttpclient))  # still served
        assert_matches(result, reference.run(ENCODER, encoder_input))

        server.terminate()  # the second signal ends the quiet period
        await asyncio.to_thread(server.wait_for_log, DRAINING)
        late = httpclient.InferenceServerClient(address(server))
        try:
            with pytest.raises(InferenceServerException) as refused:
                late.infer(ENCODER, http_inputs(encoder_input))
            assert refused.value.status() == "503" and "shutting down" in refused.value.message()
        finally:
            late.close()
        for arrays, answer in zip(held, await asyncio.gather(*tasks)):
            assert_matches(answer, reference.run(SECNN, arrays))
    finally:
        await client.close()
    assert await asyncio.to_thread(server.wait, 60) == 0
    assert " ERROR " not in server.log, server.log[-3000:]
