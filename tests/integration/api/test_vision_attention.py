"""The vision-attention classifiers served: Classify's extras (CBAM maps, STN crop) equal the
v2 surface's tensors read through tritonclient, and bad input to each is INVALID_ARGUMENT."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from PIL import Image
from tritonclient.utils import InferenceServerException

from service.client import Client
from service.proto.attnserve.v1 import attnserve_pb2 as pb
from service.proto.attnserve.v1 import attnserve_pb2_grpc as api_grpc
from tests.integration.api.helpers import digits, expect_status, normalised, png
from tests.integration.support import CBAM, SASA, SECNN, STN, VISION, infer_inputs, message_of, spec_of, status_of

ATOL = 1e-5


def _preprocess(repository: Path, model: str) -> dict:
    return json.loads(spec_of(repository, model).parameters["attnserve.preprocess"])


def _pictures(repository: Path, model: str, count: int, seed: int) -> list[np.ndarray]:
    pre = _preprocess(repository, model)
    return digits(count, seed=seed, size=(pre["height"], pre["width"]))


def _v2(client: grpcclient.InferenceServerClient, model: str, tensors: np.ndarray) -> grpcclient.InferResult:
    return client.infer(model, infer_inputs({"image": tensors}))


def test_cbam_spatial_maps_and_channel_weights_equal_the_v2_tensors(
    api: Client, client: grpcclient.InferenceServerClient, model_repository: Path
) -> None:
    pictures = _pictures(model_repository, CBAM, 3, seed=21)
    pre = _preprocess(model_repository, CBAM)
    result = api.classify([png(p) for p in pictures], model=CBAM, top_k=10, channel_weights=True,
                          spatial_attention=True)
    v2 = _v2(client, CBAM, np.concatenate([normalised(p, pre) for p in pictures]))
    assert result.model == CBAM
    for row, item in enumerate(result.items):
        assert [m.shape for m in item.spatial_attention] == [(28, 28), (14, 14), (7, 7)]
        for stage, plane in enumerate(item.spatial_attention):
            np.testing.assert_allclose(plane, v2.as_numpy(f"spatial_attention_{stage}")[row], atol=ATOL)
            assert ((plane >= 0) & (plane <= 1)).all()  # sigmoid gates (1.0 once saturated)
        np.testing.assert_allclose(item.channel_weights, v2.as_numpy("channel_weights")[row], atol=ATOL)
        assert item.stage_sizes == (32, 64, 128)
        got = np.zeros(10, np.float32)
        for label in item.labels:
            got[label.index] = label.probability
        np.testing.assert_allclose(got, v2.as_numpy("probabilities")[row], atol=ATOL)


def test_extras_are_only_sent_when_asked_for(api: Client, model_repository: Path) -> None:
    item = api.classify([png(_pictures(model_repository, CBAM, 1, seed=22)[0])], model=CBAM).items[0]
    assert item.spatial_attention == [] and item.theta is None and item.attention == []


@pytest.mark.parametrize(
    ("field", "words"),
    [("spatial_attention", "spatial attention"), ("transform", "theta"), ("attention", "window_attention")],
)
def test_an_extra_the_model_lacks_is_invalid_argument(stub: api_grpc.AttnServeStub, field: str, words: str) -> None:
    request = pb.ClassifyRequest(model=SECNN, images=[png(digits(1)[0])])
    if field == "attention":
        request.attention.all_queries = True
    else:
        setattr(request, field, True)
    expect_status(lambda: stub.Classify(request), "INVALID_ARGUMENT", words)


@pytest.mark.parametrize("model", VISION)
def test_corrupt_image_is_invalid_argument_and_the_server_serves_on(
    stub: api_grpc.AttnServeStub, api: Client, model_repository: Path, model: str
) -> None:
    good = png(_pictures(model_repository, model, 1, seed=23)[0])
    for bad, words in ((b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "images[1]"), (good[: len(good) // 2], "images[1]")):
        request = pb.ClassifyRequest(model=model, images=[good, bad])
        expect_status(lambda: stub.Classify(request), "INVALID_ARGUMENT", words)
    assert api.classify([good], model=model).items[0].labels


@pytest.mark.parametrize("model", VISION)
@pytest.mark.parametrize("change", ["side", "channels"])
def test_wrong_tensor_shape_over_v2_is_invalid_argument(
    client: grpcclient.InferenceServerClient, model_repository: Path, model: str, change: str
) -> None:
    channels, height, width = spec_of(model_repository, model).inputs[0].dims
    shape = (1, channels, height - 1, width) if change == "side" else (1, channels + 2, height, width)
    with pytest.raises(InferenceServerException) as caught:
        _v2(client, model, np.zeros(shape, np.float32))
    assert status_of(caught.value) == "INVALID_ARGUMENT", message_of(caught.value)
    assert "image" in message_of(caught.value)
    good = np.zeros((1, channels, height, width), np.float32)
    assert _v2(client, model, good).as_numpy("probabilities").shape == (1, 10)


def test_stn_theta_and_rectified_image_equal_the_v2_tensors(
    api: Client, client: grpcclient.InferenceServerClient, model_repository: Path
) -> None:
    pre = _preprocess(model_repository, STN)
    pictures = _pictures(model_repository, STN, 2, seed=24)
    result = api.classify([png(p) for p in pictures], model=STN, transform=True)
    v2 = _v2(client, STN, np.concatenate([normalised(p, pre) for p in pictures]))
    mean, std = np.float32(pre["mean"][0]), np.float32(pre["std"][0])
    for row, item in enumerate(result.items):
        np.testing.assert_allclose(item.theta, v2.as_numpy("theta")[row], atol=ATOL)
        assert item.spatial_attention == [] and item.attention == []
        crop = np.asarray(Image.open(io.BytesIO(item.rectified_png)))
        tensor = v2.as_numpy("rectified_image")[row, 0]
        assert crop.shape == tensor.shape == (24, 24)
        # The crop back in 8-bit pixels: (x * std + mean) in [0, 1], to 0..255 (rounding: one step).
        expected = np.clip(tensor * std + mean, 0, 1) * 255
        assert np.abs(crop.astype(np.float32) - expected).max() <= 1.0


def test_sasa_window_of_a_pixel_is_its_cell_of_the_v2_tensor(
    api: Client, client: grpcclient.InferenceServerClient, model_repository: Path
) -> None:
    pre = _preprocess(model_repository, SASA)
    picture = _pictures(model_repository, SASA, 1, seed=25)[0]
    pixels = [(0, 0), (13, 20), (27, 27)]
    item = api.classify([png(picture)], model=SASA, attention=pixels).items[0]
    full = _v2(client, SASA, normalised(picture, pre)).as_numpy("window_attention")[0]  # [heads, H, W, k, k]
    heads, rows, cols, k, _ = full.shape
    assert [q.pixel for q in item.attention] == pixels
    for query in item.attention:
        assert query.grid == (rows, cols)
        assert query.cell == (query.pixel[0] * rows // 28, query.pixel[1] * cols // 28)
        np.testing.assert_allclose(query.weights, full[:, query.cell[0], query.cell[1]], atol=ATOL)
        np.testing.assert_allclose(query.weights.sum(axis=(1, 2)), 1.0, atol=1e-5)
    corner = item.attention[0].weights  # the top-left cell: window positions above/left are outside
    assert np.all(corner[:, : k // 2, :] == 0) and np.all(corner[:, :, : k // 2] == 0)
    every = api.classify([png(picture)], model=SASA, attention="all").items[0].attention
    assert len(every) == rows * cols and every[-1].cell == (rows - 1, cols - 1)


def test_sasa_query_outside_the_input_is_invalid_argument(stub: api_grpc.AttnServeStub, model_repository: Path) -> None:
    request = pb.ClassifyRequest(model=SASA, images=[png(_pictures(model_repository, SASA, 1, seed=26)[0])])
    request.attention.queries.add(y=28, x=3)
    expect_status(lambda: stub.Classify(request), "INVALID_ARGUMENT", "attention.queries[0]")
