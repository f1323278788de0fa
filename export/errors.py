"""Every exception the exporter raises on purpose, in one torch-free module.

The CLI maps them to exit codes: ``UsageError`` and its kin (bad names, config overrides,
checkpoints) to 2, ``ExportFailure`` (parity, graph checks) to 1.
"""

from __future__ import annotations


class UsageError(ValueError):
    """A command-line problem the user can fix: exit status 2."""


class ConfigError(UsageError):
    """A config override that does not fit the model's config dataclass."""


class CheckpointError(UsageError):
    """A checkpoint that cannot be read or does not fit the model."""


class ExportFailure(RuntimeError):
    """The export ran but its result is wrong: exit status 1."""


class ExportCheckError(ExportFailure):
    """The exported graph is not what the contract says (names, symbolic dims, ops)."""


class ParityError(ExportFailure):
    """ONNX Runtime and PyTorch disagree beyond tolerance (the message holds the table)."""
