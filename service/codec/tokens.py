"""Text and token-id sequences -> the encoder's ``input_ids``, checked against its vocabulary.

No I/O and no model state. The tokenizer is the model's ``tokenizer.json`` side file
(export/models/transformer_encoder.py writes it): byte-level, so every UTF-8 byte ``b`` is id
``byte_offset + b`` and no vocabulary file is needed; ``bos_id``/``eos_id`` are added when the
file says so; text longer than ``max_length`` ids is cut on the right, keeping the EOS.
Token ids sent by a client are used as given (no BOS/EOS added) and must already fit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from service.errors import InvalidInput

TOKENIZER_TYPE = "byte_level"


@dataclass(frozen=True)
class ByteTokenizer:
    pad_id: int
    bos_id: int
    eos_id: int
    unk_id: int
    byte_offset: int
    vocab_size: int
    max_length: int
    add_bos: bool = True
    add_eos: bool = True

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> "ByteTokenizer":
        """Validate ``tokenizer.json``; raises ValueError naming what is wrong."""
        if not isinstance(raw, Mapping) or raw.get("type") != TOKENIZER_TYPE:
            raise ValueError(f"tokenizer type must be {TOKENIZER_TYPE!r}")
        if str(raw.get("encoding", "utf-8")).lower().replace("_", "-") != "utf-8":
            raise ValueError("only utf-8 byte-level tokenizers are supported")
        if str(raw.get("truncation", "right")) != "right":
            raise ValueError("only truncation 'right' is supported")
        try:
            tokenizer = cls(
                **{k: int(raw[k]) for k in ("pad_id", "bos_id", "eos_id", "unk_id", "byte_offset", "vocab_size", "max_length")},
                add_bos=bool(raw.get("add_bos", True)),
                add_eos=bool(raw.get("add_eos", True)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"tokenizer.json is missing or has a non-integer field: {exc}") from exc
        if tokenizer.byte_offset + 256 > tokenizer.vocab_size:
            raise ValueError("vocab_size must cover byte_offset + 256 byte ids")
        if tokenizer.max_length < int(tokenizer.add_bos) + int(tokenizer.add_eos) + 1:
            raise ValueError("max_length leaves no room for text")
        return tokenizer

    @property
    def specials(self) -> dict[int, str]:
        return {self.pad_id: "<pad>", self.bos_id: "<bos>", self.eos_id: "<eos>", self.unk_id: "<unk>"}

    def encode(self, text: str, max_length: int | None = None) -> tuple[np.ndarray, bool]:
        """UTF-8 text -> (int64 ids, whether the text was cut to fit)."""
        limit = min(self.max_length, max_length or self.max_length)
        budget = limit - int(self.add_bos) - int(self.add_eos)
        data = text.encode("utf-8")  # protobuf strings are valid UTF-8 already
        truncated = len(data) > budget
        body = np.frombuffer(data[:budget], dtype=np.uint8).astype(np.int64) + self.byte_offset
        parts = [[self.bos_id]] if self.add_bos else []
        parts += [body]
        parts += [[self.eos_id]] if self.add_eos else []
        return np.concatenate([np.asarray(p, np.int64) for p in parts]), truncated

    def token_text(self, token: int) -> str:
        """A readable piece for one id: ``<bos>``, ``a``, ``\\xc3``, ``<id 300>``."""
        if token in self.specials:
            return self.specials[token]
        byte = token - self.byte_offset
        if 0 <= byte < 256:
            return chr(byte) if 32 <= byte < 127 else f"\\x{byte:02x}"
        return f"<id {token}>"


@dataclass(frozen=True)
class SequenceLimits:
    max_length: int
    vocab_size: int | None  # None: the model declares no vocabulary, ids are not range-checked
    # Lowest id a client may send: 1 where the graph reads id 0 as padding (pair models take no
    # mask), from attnserve.input_limits' "min".
    min_id: int = 0


def check_ids(ids: Sequence[int], limits: SequenceLimits, where: str) -> np.ndarray:
    """Client token ids -> int64 array, or InvalidInput saying which id is wrong."""
    array = np.asarray(ids, dtype=np.int64)
    if array.size == 0:
        raise InvalidInput(f"{where}: empty sequence; send at least one token id")
    if array.size > limits.max_length:
        raise InvalidInput(f"{where}: {array.size} tokens, above the model's maximum of {limits.max_length}")
    if limits.vocab_size is not None:
        bad = np.flatnonzero((array < limits.min_id) | (array >= limits.vocab_size))
        if bad.size:
            first = int(bad[0])
            raise InvalidInput(
                f"{where}: token id {int(array[first])} at position {first} is outside the vocabulary "
                f"[{limits.min_id}, {limits.vocab_size})"
            )
    return array
