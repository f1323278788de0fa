"""The vision-attention classifiers on their own (PyTorch): CBAM's channel-then-spatial order,
its served tensors, and the exported graph's extra outputs under ONNX Runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from export.models.cbam_classifier import CbamClassifier, CbamConfig, CbamStage
from export.models.stn_classifier import StnClassifier, StnConfig
from export.onnx_export import open_session
from export.specs import SPECS
from export.pipeline import load_weights
from export.weights import seeded_model, shipped_weights


def test_cbam_outputs_are_probabilities_gates_and_one_map_per_stage() -> None:
    config = CbamConfig()
    model = seeded_model(SPECS["cbam_classifier"], config)
    with torch.no_grad():
        logits, probabilities, channels, *maps = model(torch.randn(3, 1, 28, 28))
    assert logits.shape == probabilities.shape == (3, 10)
    torch.testing.assert_close(probabilities.sum(-1), torch.ones(3))
    assert channels.shape == (3, 32 + 64 + 128)
    assert [tuple(m.shape) for m in maps] == [(3, 28, 28), (3, 14, 14), (3, 7, 7)]
    for gate in (channels, *maps):
        assert ((gate > 0) & (gate < 1)).all()  # sigmoid gates
    assert model.output_names == [t.name for t in SPECS["cbam_classifier"].outputs(config)]


def test_cbam_stage_applies_channel_then_spatial_attention() -> None:
    """The stage's output is the conv output times M_c, then times M_s computed from the
    channel-refined map (the paper's sequential order), not from the raw conv output."""
    torch.manual_seed(0)
    stage = CbamStage(4, 16, CbamConfig()).eval()
    x = torch.randn(2, 4, 9, 9)
    with torch.no_grad():
        out, channel, spatial = stage(x)
        features = stage.convs(x)
        refined = features * channel[:, :, None, None]
        expected_map = stage.spatial(refined)[:, 0]
        torch.testing.assert_close(spatial, expected_map)
        torch.testing.assert_close(out, refined * spatial[:, None])
        assert not torch.allclose(stage.spatial(features)[:, 0], spatial)  # order matters here


def test_cbam_spatial_map_follows_the_strongest_position() -> None:
    """With the 7x7 conv set to average the two pooled planes, the map peaks where the
    features do: the spatial branch looks at where, not what."""
    stage = CbamStage(1, 8, CbamConfig()).eval()
    with torch.no_grad():
        stage.spatial.conv.weight.zero_()
        stage.spatial.conv.weight[0, :, 3, 3] = 1.0  # centre tap of both planes
        stage.spatial.conv.bias.zero_()
        features = torch.zeros(1, 8, 7, 7)
        features[0, :, 2, 5] = 3.0
        stage.convs = torch.nn.Identity()
        _, _, spatial = stage(features)
    assert np.unravel_index(int(spatial[0].argmax()), (7, 7)) == (2, 5)


def test_cbam_config_rejects_an_even_spatial_kernel() -> None:
    with pytest.raises(ValueError, match="odd"):
        CbamConfig(spatial_kernel=6)
    assert CbamConfig(image_size=27).map_sides == (27, 14, 7)


def test_cbam_exported_maps_match_pytorch(onnx_paths: dict[str, Path]) -> None:
    spec = SPECS["cbam_classifier"]
    config = spec.variants["default"]
    model = load_weights(spec, config, shipped_weights(spec.name))  # what the default export ships
    assert isinstance(model, CbamClassifier)
    images = torch.randn(5, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    names = [t.name for t in spec.outputs(config)]
    got = open_session(onnx_paths["cbam_classifier"]).run(names, {"image": images.numpy()})
    with torch.no_grad():
        want = [t.numpy() for t in model(images)]
    assert [g.shape for g in got] == [w.shape for w in want]
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


def test_stn_starts_as_the_identity_crop_and_pads_with_black() -> None:
    """Before training theta is the identity for any input, so the rectified image is the whole
    canvas resampled; the border of a shrinking crop is black (the normalised background), not
    the normalised zero."""
    torch.manual_seed(0)
    model = StnClassifier(StnConfig()).eval()
    images = torch.randn(3, 1, 40, 40)
    with torch.no_grad():
        _, _, theta, rectified = model(images)
        torch.testing.assert_close(theta, torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]).expand(3, 2, 3))
        expected = torch.nn.functional.interpolate(images, size=(24, 24), mode="bilinear", align_corners=False)
        assert rectified.shape == (3, 1, 24, 24)
        # Identity resampling 40 -> 24 is bilinear interpolation at those points (no antialias).
        torch.testing.assert_close(rectified, expected, atol=1e-4, rtol=1e-4)  # grid rounding on noise
        model.localisation.regress[-1].bias.copy_(torch.tensor([2.0, 0, 0, 0, 2.0, 0]))  # zoom out 2x
        _, _, _, wide = model(images)
    black = -0.1307 / 0.3081
    assert wide[0, 0, 0, 0].item() == pytest.approx(black, abs=1e-5)


def test_stn_twin_keeps_the_identity_and_exports_grid_sample(onnx_paths: dict[str, Path]) -> None:
    import onnx

    twin = StnClassifier(StnConfig(transformer=False)).eval()
    with torch.no_grad():
        twin.localisation.regress[-1].bias.add_(0.3)  # ignored: the twin never uses it
        theta = twin(torch.randn(2, 1, 40, 40))[2]
    torch.testing.assert_close(theta, torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]).expand(2, 2, 3))
    graph = onnx.load(str(onnx_paths["stn_classifier"])).graph
    assert "GridSample" in {n.op_type for n in graph.node}


def test_sasa_window_weights_are_masked_normalised_and_use_relative_positions() -> None:
    from export.models.sasa_classifier import LocalSelfAttention, SasaClassifier, SasaConfig

    torch.manual_seed(0)
    layer = LocalSelfAttention(channels=8, heads=2, window=5, side=6).eval()
    x = torch.randn(2, 8, 6, 6)
    with torch.no_grad():
        _, weights = layer(x)  # [B, heads, k*k, H, W]
        assert weights.shape == (2, 2, 25, 6, 6)
        torch.testing.assert_close(weights.sum(dim=2), torch.ones(2, 2, 6, 6))
        corner = weights[:, :, :, 0, 0].reshape(2, 2, 5, 5)
        assert (corner[:, :, :2, :] == 0).all() and (corner[:, :, :, :2] == 0).all()  # outside the map
        # The relative term: r is [row half | column half] of the offset's embeddings.
        r = layer.relative().reshape(5, 5, 4)
        torch.testing.assert_close(r[1, 3, :2], layer.rel_rows[1])
        torch.testing.assert_close(r[1, 3, 2:], layer.rel_cols[3])
        layer.rel_rows.add_(torch.linspace(-3, 3, 5)[:, None])  # favour lower rows
        _, shifted = layer(x)
    assert not torch.allclose(shifted, weights)
    model = SasaClassifier(SasaConfig()).eval()
    with torch.no_grad():
        logits, probabilities, window = model(torch.randn(3, 1, 28, 28))
    assert logits.shape == (3, 10) and window.shape == (3, 4, 14, 14, 5, 5)
    torch.testing.assert_close(window.sum(dim=(-1, -2)), torch.ones(3, 4, 14, 14))


def test_sasa_has_no_spatial_convolution_after_the_stem(onnx_paths: dict[str, Path]) -> None:
    """Convolutions replaced by attention: every Conv after the stem is 1x1 (projections)."""
    import onnx

    graph = onnx.load(str(onnx_paths["sasa_classifier"])).graph
    kernels = [next(a.ints for a in n.attribute if a.name == "kernel_shape") for n in graph.node if n.op_type == "Conv"]
    assert list(kernels[0]) == [3, 3] and all(list(k) == [1, 1] for k in kernels[1:]), kernels
