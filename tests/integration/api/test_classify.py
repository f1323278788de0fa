"""Classify and ClassifyStream on the real server: preprocessing as the config says (checked
against the v2 surface through tritonclient), labels, top-k, channel weights, order."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from PIL import Image

from service.client import AsyncClient, Client
from service.proto.attnserve.v1 import attnserve_pb2 as pb
from tests.conftest import ServerProcess
from tests.integration.api.helpers import digits, jpeg, normalised, png
from tests.integration.support import SECNN, infer_inputs

ATOL = 1e-5


def v2_outputs(client: grpcclient.InferenceServerClient, tensors: np.ndarray) -> dict[str, np.ndarray]:
    """The classifier through the v2 surface (tritonclient), in batches it accepts."""
    parts = [client.infer(SECNN, infer_inputs({"image": tensors[i:i + 32]})) for i in range(0, len(tensors), 32)]
    return {name: np.concatenate([p.as_numpy(name) for p in parts]) for name in ("probabilities", "channel_weights")}


def test_png_classifies_exactly_as_its_tensor_through_v2(
    api: Client, client: grpcclient.InferenceServerClient, preprocess: dict, labels: dict
) -> None:
    pictures = digits(5, seed=1)
    result = api.classify([png(p) for p in pictures], top_k=10)
    expected = v2_outputs(client, np.concatenate([normalised(p, preprocess) for p in pictures]))["probabilities"]
    assert (result.model, result.version) == (SECNN, "1")
    assert len(result.items) == len(pictures)
    for item, probs in zip(result.items, expected, strict=True):
        got = np.zeros(10, np.float32)
        for label in item.labels:
            got[label.index] = label.probability
            assert label.label == labels[SECNN][label.index]
        np.testing.assert_allclose(got, probs, atol=ATOL)
        ranked = [x.probability for x in item.labels]
        assert ranked == sorted(ranked, reverse=True)


def test_any_size_and_mode_is_converted_and_resized_as_the_config_says(
    api: Client, client: grpcclient.InferenceServerClient, preprocess: dict
) -> None:
    rng = np.random.default_rng(2)
    colour = rng.integers(0, 256, size=(61, 45, 3), dtype=np.uint8)
    result = api.classify([png(colour)], top_k=10)
    size = (preprocess["width"], preprocess["height"])
    model_image = Image.fromarray(colour).convert(preprocess["mode"]).resize(size, Image.Resampling.BILINEAR)
    expected = v2_outputs(client, normalised(np.asarray(model_image), preprocess))["probabilities"][0]
    got = {x.index: x.probability for x in result.items[0].labels}
    np.testing.assert_allclose([got[i] for i in range(10)], expected, atol=ATOL)


def test_jpeg_is_accepted(api: Client) -> None:
    result = api.classify([jpeg(digits(1, seed=3)[0])])
    assert len(result.items[0].labels) == 5


def test_top_k_defaults_to_five_and_is_capped_at_the_class_count(api: Client) -> None:
    image = png(digits(1, seed=4)[0])
    assert len(api.classify([image]).items[0].labels) == 5
    everything = api.classify([image], top_k=50).items[0].labels
    assert sorted(x.index for x in everything) == list(range(10))
    assert sum(x.probability for x in everything) == pytest.approx(1.0, abs=1e-5)
    probabilities = [x.probability for x in everything]
    assert probabilities == sorted(probabilities, reverse=True)


def test_channel_weights_match_the_v2_output(
    api: Client, client: grpcclient.InferenceServerClient, preprocess: dict
) -> None:
    picture = digits(1, seed=5)[0]
    item = api.classify([png(picture)], channel_weights=True).items[0]
    expected = v2_outputs(client, normalised(picture, preprocess))["channel_weights"][0]
    assert item.channel_weights is not None and item.channel_weights.shape == expected.shape
    np.testing.assert_allclose(item.channel_weights, expected, atol=ATOL)
    assert ((item.channel_weights >= 0) & (item.channel_weights <= 1)).all()  # sigmoid gates
    assert sum(w.size for w in item.stages()) == expected.size
    assert api.classify([png(picture)]).items[0].channel_weights is None  # only when asked


def test_more_images_than_max_batch_size_keep_their_order(
    api: Client, client: grpcclient.InferenceServerClient, preprocess: dict
) -> None:
    pictures = digits(70, seed=6)  # max_batch_size is 64: two requests to the batcher
    result = api.classify([png(p) for p in pictures], top_k=1)
    expected = v2_outputs(client, np.concatenate([normalised(p, preprocess) for p in pictures]))["probabilities"]
    assert [item.top.index for item in result.items] == expected.argmax(axis=1).tolist()
    np.testing.assert_allclose([item.top.probability for item in result.items], expected.max(axis=1), atol=ATOL)


def test_api_requests_are_counted_on_their_own_surface(api: Client, server: ServerProcess) -> None:
    before = server.metric("attnserve_requests_total", model=SECNN, surface="api", code="OK")
    api.classify([png(digits(1)[0])])
    api.classify([png(digits(1)[0])] * 3)
    assert server.metric("attnserve_requests_total", model=SECNN, surface="api", code="OK") == before + 2


# -- streams ----------------------------------------------------------------------------------
def test_classify_stream_answers_every_message_and_names_the_bad_one(api: Client) -> None:
    pictures = digits(6, seed=7)
    batches: list[list[bytes]] = [[png(p)] for p in pictures]
    batches.insert(3, [b"not an image"])
    replies = list(api.classify_stream(batches, top_k=3))
    assert sorted(r.index for r in replies) == list(range(7))
    by_index = {r.index: r for r in replies}
    bad = by_index[3]
    assert bad.result is None and bad.error is not None
    assert bad.error.code == "INVALID_ARGUMENT" and "images[0]" in bad.error.details
    unary = api.classify([png(p) for p in pictures], top_k=3)
    good = [by_index[i] for i in range(7) if i != 3]
    for reply, expected in zip(good, unary.items, strict=True):
        assert reply.error is None and reply.result is not None
        assert [x.index for x in reply.result.items[0].labels] == [x.index for x in expected.labels]


def test_raw_stream_echoes_request_ids(stub) -> None:
    requests = [pb.ClassifyRequest(images=[png(p)], id=f"r{i}") for i, p in enumerate(digits(3, seed=8))]
    replies = list(stub.ClassifyStream(iter(requests)))
    assert sorted(r.id for r in replies) == ["r0", "r1", "r2"]
    assert all(r.response.id == r.id and not r.HasField("error") for r in replies)


async def test_async_client_classifies_and_streams(aio_api: AsyncClient, api: Client) -> None:
    pictures = digits(4, seed=9)
    result = await aio_api.classify([png(p) for p in pictures])
    expected = api.classify([png(p) for p in pictures])
    assert [i.top.index for i in result.items] == [i.top.index for i in expected.items]
    replies = [r async for r in aio_api.classify_stream([[png(p)] for p in pictures])]
    assert sorted(r.index for r in replies) == [0, 1, 2, 3]
    for reply in replies:
        assert reply.result is not None
        assert reply.result.items[0].top.index == expected.items[reply.index].top.index
