"""The three served architectures, one file each, forward pass only.

``sagan_generator`` (SAGAN), ``se_cnn_classifier`` (SE-Net / CBAM), ``transformer_encoder``
(Transformer). Each has a frozen config dataclass with a small default and a ``BENCHMARK``.
"""
