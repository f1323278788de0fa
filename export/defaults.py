"""Defaults other code must agree on, torch-free so the CLI can check names cheaply."""

from __future__ import annotations

# The attention family (issue 15): langid_* share the encoder's tokenizer and phrases.
# langid_pair (cross-attention) starts from langid_dot's trained encoder, so it trains after it.
LANGID_FAMILY = ("langid_dot", "langid_additive", "langid_mha", "langid_pair")

MODEL_NAMES = (
    "sagan_generator",
    "se_cnn_classifier",
    "transformer_encoder",
    "cbam_classifier",
    "stn_classifier",
    "sasa_classifier",
    *LANGID_FAMILY,
)

# config.pbtxt max_batch_size unless --max-batch-size overrides it.
DEFAULT_MAX_BATCH_SIZE = {
    "sagan_generator": 64,
    "se_cnn_classifier": 64,
    "transformer_encoder": 32,
    "cbam_classifier": 64,
    "stn_classifier": 64,
    "sasa_classifier": 64,
    **{name: 32 for name in LANGID_FAMILY},
}

# torch.manual_seed per model: seeded random weights until trained checkpoints exist.
SEEDS = {
    "sagan_generator": 1805,
    "se_cnn_classifier": 1709,
    "transformer_encoder": 1706,
    "cbam_classifier": 1807,  # arXiv 1807.06521
    "stn_classifier": 1506,  # arXiv 1506.02025
    "sasa_classifier": 1906,  # arXiv 1906.05909
    "langid_dot": 1508,  # Luong et al. 2015 (arXiv:1508.04025)
    "langid_additive": 1409,  # Bahdanau et al. 2014 (arXiv:1409.0473)
    "langid_mha": 1707,
    "langid_pair": 1609,
}
