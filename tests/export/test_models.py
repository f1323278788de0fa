"""The PyTorch models on their own: shapes, the SAGAN gate, masking, SE widths, folding."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from export.models.sagan_generator import SaganConfig, SaganGenerator, SelfAttention
from export.models.se_cnn_classifier import SeCnnClassifier, SeCnnConfig
from export.models.transformer_encoder import EncoderConfig, TransformerEncoder
from export.onnx_export import prepare_for_inference
from export.specs import SPECS
from export.weights import seeded_model


def test_sagan_gate_starts_at_zero_so_attention_block_is_identity() -> None:
    torch.manual_seed(0)
    block = SelfAttention(64).eval()
    assert block.gamma.item() == 0.0
    x = torch.randn(2, 64, 16, 16)
    out, attention = block(x)
    assert torch.equal(out, x)
    assert attention.shape == (2, 256, 64)
    with torch.no_grad():
        block.gamma.fill_(0.5)
    assert not torch.allclose(block(x)[0], x)  # the gate really switches the block on


def test_sagan_images_in_range_and_attention_shape() -> None:
    config = SaganConfig()
    model = seeded_model(SPECS["sagan_generator"], config)
    with torch.no_grad():
        image, attention = model(torch.randn(5, 128) * 3, torch.randint(0, 10, (5, 1)))
    assert image.shape == (5, 1, 32, 32)
    assert image.min() >= -1.0 and image.max() <= 1.0
    assert image.std() > 1e-3  # not a constant image
    assert attention.shape == (5, *config.attention_shape) == (5, 256, 64)
    torch.testing.assert_close(attention.sum(-1), torch.ones(5, 256))


def test_sagan_class_label_changes_the_image() -> None:
    model = seeded_model(SPECS["sagan_generator"], SaganConfig())
    z = torch.randn(1, 128).repeat(2, 1)
    with torch.no_grad():
        model.blocks[0].bn1.gain.weight[3] += 1.0  # make class 3 differ from class 4
        image, _ = model(z, torch.tensor([[3], [4]]))
    assert not torch.allclose(image[0], image[1])


def test_sagan_without_attention_output() -> None:
    model = SaganGenerator(SaganConfig(export_attention=False)).eval()
    outputs = model(torch.randn(2, 128), torch.zeros(2, 1, dtype=torch.long))
    assert model.output_names == ["image"] and len(outputs) == 1


def test_sagan_benchmark_shapes_are_consistent() -> None:
    config = SPECS["sagan_generator"].variants["benchmark"]
    assert config.resolutions[-1] == 128 and config.attention_resolution == 64
    assert config.attention_shape == (4096, 1024)


@pytest.mark.parametrize(
    "bad", [{"image_size": 48}, {"attention_resolution": 4}, {"channel_multipliers": (4, 2)}]
)
def test_sagan_config_rejects_inconsistent_shapes(bad: dict) -> None:
    with pytest.raises(ValueError):
        dataclasses.replace(SaganConfig(), **bad)


def test_se_bottleneck_has_a_floor() -> None:
    model = SeCnnClassifier(SeCnnConfig(stage_channels=(32, 256), reduction=16, min_hidden=8))
    assert model.stages[0].attend.reduce.out_features == 8  # 32 // 16 = 2, floored to 8
    assert model.stages[1].attend.reduce.out_features == 16  # 256 // 16


@pytest.mark.parametrize("attention", ["se", "cbam"])
def test_se_cnn_outputs(attention: str) -> None:
    config = SeCnnConfig(attention=attention)
    model = seeded_model(SPECS["se_cnn_classifier"], config)
    with torch.no_grad():
        logits, probabilities, weights = model(torch.randn(3, 1, 28, 28))
    assert logits.shape == probabilities.shape == (3, 10)
    torch.testing.assert_close(probabilities.sum(-1), torch.ones(3))
    assert weights.shape == (3, 32 + 64 + 128)
    assert ((weights > 0) & (weights < 1)).all()  # sigmoid gates


def test_prepare_folds_batch_norm_and_bakes_spectral_norm() -> None:
    for name in ("sagan_generator", "se_cnn_classifier"):
        spec = SPECS[name]
        config = spec.variants["default"]
        model = seeded_model(spec, config)
        prepared = prepare_for_inference(model)
        assert not any(
            isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in prepared.modules()
        )
        assert not any(hasattr(m, "parametrizations") for m in prepared.modules())
        assert any(hasattr(m, "parametrizations") for m in model.modules()) == (
            name == "sagan_generator"
        )
        sample = spec.sample(config, 4, torch.Generator().manual_seed(0))
        with torch.no_grad():
            for want, got in zip(model(*sample.values()), prepared(*sample.values())):
                torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_seeded_weights_are_deterministic_and_calibrated() -> None:
    spec = SPECS["se_cnn_classifier"]
    a = seeded_model(spec, spec.variants["default"]).state_dict()
    b = seeded_model(spec, spec.variants["default"]).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert a["stages.0.convs.0.bn.running_var"].sub(1).abs().max() > 1e-3  # not the init stats


def _encoder_batch() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(4, 260, (3, 12))
    mask = torch.ones(3, 12, dtype=torch.long)
    mask[1, 5:] = 0
    mask[2] = 0  # a row made only of padding
    return ids * mask, mask


def test_encoder_all_padding_row_is_finite_and_rows_sum_to_one() -> None:
    torch.manual_seed(0)
    model = TransformerEncoder(EncoderConfig()).eval()
    with torch.no_grad():
        embedding, logits, attention = model(*_encoder_batch())
    assert torch.isfinite(embedding).all() and torch.isfinite(logits).all()
    assert torch.isfinite(attention).all()
    assert torch.equal(embedding[2], torch.zeros(128))  # mean over no tokens is 0
    torch.testing.assert_close(attention.sum(-1), torch.ones(3, 4, 12))
    assert attention[1, :, :, 5:].abs().max() == 0  # padded keys get exactly zero weight


def test_encoder_ignores_padding_content_and_length() -> None:
    torch.manual_seed(0)
    model = TransformerEncoder(EncoderConfig()).eval()
    ids, mask = _encoder_batch()
    noisy = torch.where(mask.bool(), ids, torch.randint(4, 260, ids.shape))
    longer_ids = torch.cat([ids, torch.zeros(3, 20, dtype=torch.long)], 1)
    longer_mask = torch.cat([mask, torch.zeros(3, 20, dtype=torch.long)], 1)
    with torch.no_grad():
        base = model(ids, mask)
        with_noise = model(noisy, mask)
        padded_more = model(longer_ids, longer_mask)
    for i in (0, 1):  # embedding and logits
        torch.testing.assert_close(with_noise[i][:2], base[i][:2])
        torch.testing.assert_close(padded_more[i][:2], base[i][:2], rtol=1e-5, atol=1e-6)


def test_encoder_config_validation() -> None:
    with pytest.raises(ValueError, match="divisible"):
        EncoderConfig(d_model=130, num_heads=4)
    with pytest.raises(ValueError, match="labels"):
        EncoderConfig(num_classes=3)  # the 10 default labels no longer fit
    assert EncoderConfig(num_classes=3, labels=None).labels is None
