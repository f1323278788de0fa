"""Generate on the real server: the documented seed contract (checked against the v2 surface
with the latent written out here), classes, truncation, and the attention map's geometry."""

from __future__ import annotations

import io

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from PIL import Image

from service.client import Client, Generation
from service.proto.attnserve.v1 import attnserve_pb2 as pb
from tests.integration.support import SAGAN, infer_inputs

Z_DIM = 128
# The same latent through a batch of another size can move a pixel across a rounding edge.
PIXEL_TOLERANCE = 1


def pixels(generation: Generation) -> np.ndarray:
    return np.stack([item.pixels().astype(np.int16) for item in generation.images])


def v2_generate(client: grpcclient.InferenceServerClient, seeds: list[int], classes: list[int]) -> dict[str, np.ndarray]:
    """The documented recipe, by hand: image i uses default_rng(seed_i).standard_normal(z_dim)."""
    z = np.stack([np.random.default_rng(s).standard_normal(Z_DIM) for s in seeds]).astype(np.float32)
    label = np.asarray(classes, np.int64).reshape(-1, 1)
    result = client.infer(SAGAN, infer_inputs({"z": z, "class_label": label}))
    return {"image": result.as_numpy("image"), "attention": result.as_numpy("attention")}


def as_uint8(image: np.ndarray) -> np.ndarray:
    """[-1, 1] -> 0..255, as the API documents it (PNG of (x + 1) * 127.5, rounded)."""
    return np.clip(np.rint((image + 1.0) * 127.5), 0, 255).astype(np.int16)


def test_images_follow_the_documented_seed_recipe(api: Client, client: grpcclient.InferenceServerClient) -> None:
    result = api.generate(3, classes=[1, 4, 7], seed=1234)
    assert (result.model, result.version, result.seed) == (SAGAN, "1", 1234)
    assert [i.seed for i in result.images] == [1234, 1235, 1236]
    assert [i.class_id for i in result.images] == [1, 4, 7]
    expected = v2_generate(client, [1234, 1235, 1236], [1, 4, 7])["image"]
    got = pixels(result)
    assert got.shape == (3, 32, 32)  # one channel: PNG mode L
    assert np.abs(got - as_uint8(expected)[:, 0]).max() <= PIXEL_TOLERANCE


def test_the_same_seed_gives_the_same_images_and_another_seed_others(api: Client) -> None:
    first = pixels(api.generate(4, classes=2, seed=7))
    again = pixels(api.generate(4, classes=2, seed=7))
    other = pixels(api.generate(4, classes=2, seed=8))
    assert np.abs(first - again).max() <= PIXEL_TOLERANCE
    assert np.abs(first[0] - other[0]).mean() > 10  # not a rounding difference: another image
    # seed + i: image i of seed 7 is image 0 of seed 7 + i.
    assert np.abs(first[1:] - other[:3]).max() <= PIXEL_TOLERANCE


def test_one_image_of_a_grid_regenerates_alone(api: Client) -> None:
    grid = api.generate(5, classes=3, seed=100)
    alone = api.generate(1, classes=3, seed=grid.images[4].seed)
    assert np.abs(pixels(grid)[4] - pixels(alone)[0]).max() <= PIXEL_TOLERANCE


def test_without_a_seed_the_server_draws_one_and_reports_it(api: Client) -> None:
    drawn = api.generate(2, classes=5)
    replay = api.generate(2, classes=5, seed=drawn.seed)
    assert np.abs(pixels(drawn) - pixels(replay)).max() <= PIXEL_TOLERANCE


def test_class_labels_and_indices_are_the_same_classes(api: Client, labels: dict) -> None:
    names = labels[SAGAN]
    by_label = api.generate(2, classes=[names[3], names[6]], seed=5)
    by_index = api.generate(2, classes=[3, 6], seed=5)
    assert [i.class_label for i in by_label.images] == [names[3], names[6]]
    assert np.abs(pixels(by_label) - pixels(by_index)).max() <= PIXEL_TOLERANCE
    default = api.generate(1, seed=5)
    assert default.images[0].class_id == 0


def test_truncation_is_reproducible_and_changes_the_latent(api: Client) -> None:
    plain = pixels(api.generate(2, seed=21))
    truncated = pixels(api.generate(2, seed=21, truncation=0.5))
    assert np.abs(truncated - pixels(api.generate(2, seed=21, truncation=0.5))).max() <= PIXEL_TOLERANCE
    assert np.abs(truncated - plain).mean() > 1
    # A threshold no standard normal sample reaches leaves the latent as it was.
    assert np.abs(pixels(api.generate(2, seed=21, truncation=1e6)) - plain).max() <= PIXEL_TOLERANCE


def test_images_are_png(stub) -> None:
    reply = stub.Generate(pb.GenerateRequest(count=2, seed=3))
    for item in reply.images:
        with Image.open(io.BytesIO(item.png)) as image:
            assert (image.format, image.mode, image.size) == ("PNG", "L", (32, 32))


# -- attention --------------------------------------------------------------------------------
def test_attention_grid_and_maps_for_chosen_pixels(api: Client, client: grpcclient.InferenceServerClient) -> None:
    asked = [(0, 0), (10, 21), (31, 31), (17, 2)]
    result = api.generate(2, classes=[3, 8], seed=42, attention=asked)
    grid = result.grid
    assert grid is not None
    # 32x32 image, 16x16 feature map at the attention block, keys max-pooled 2x2 to 8x8.
    assert (grid.image_height, grid.image_width) == (32, 32)
    assert (grid.query_height, grid.query_width, grid.key_height, grid.key_width) == (16, 16, 8, 8)
    expected = v2_generate(client, [42, 43], [3, 8])["attention"]  # [2, 256, 64]
    for item, attention in zip(result.images, expected, strict=True):
        assert [m.pixel for m in item.attention] == asked
        for m, (y, x) in zip(item.attention, asked, strict=True):
            assert m.query_index == (y // 2) * 16 + x // 2
            assert m.weights.shape == (8, 8)
            assert (m.weights >= 0).all()
            assert m.weights.sum() == pytest.approx(1.0, abs=1e-5)  # softmax over the keys
            np.testing.assert_allclose(m.weights.ravel(), attention[m.query_index], atol=1e-5)


def test_all_queries_returns_every_cell_in_order(api: Client) -> None:
    item = api.generate(1, seed=9, attention="all").images[0]
    assert [m.query_index for m in item.attention] == list(range(256))
    assert item.attention[17].pixel == (2, 2)  # cell (1, 1) starts at pixel (2, 2)
    sums = np.array([m.weights.sum() for m in item.attention])
    np.testing.assert_allclose(sums, 1.0, atol=1e-5)


def test_no_attention_unless_asked(api: Client) -> None:
    result = api.generate(1, seed=9)
    assert result.grid is None and result.images[0].attention == []
