"""Defaults other code must agree on, torch-free so the CLI can check names cheaply."""

from __future__ import annotations

MODEL_NAMES = (
    "sagan_generator",
    "se_cnn_classifier",
    "transformer_encoder",
    "cbam_classifier",
    "stn_classifier",
    "sasa_classifier",
)

# config.pbtxt max_batch_size unless --max-batch-size overrides it.
DEFAULT_MAX_BATCH_SIZE = {
    "sagan_generator": 64,
    "se_cnn_classifier": 64,
    "transformer_encoder": 32,
    "cbam_classifier": 64,
    "stn_classifier": 64,
    "sasa_classifier": 64,
}

# torch.manual_seed per model: seeded random weights until trained checkpoints exist.
SEEDS = {
    "sagan_generator": 1805,
    "se_cnn_classifier": 1709,
    "transformer_encoder": 1706,
    "cbam_classifier": 1807,  # arXiv 1807.06521
    "stn_classifier": 1506,  # arXiv 1506.02025
    "sasa_classifier": 1906,  # arXiv 1906.05909
}
