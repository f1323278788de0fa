"""service.codec.tokens: the byte-level tokenizer side file, and token-id checks."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.codec.tokens import ByteTokenizer, SequenceLimits, check_ids
from service.errors import InvalidInput

# What export/models/transformer_encoder.py writes as tokenizer.json for the default encoder.
SPEC = {
    "type": "byte_level", "encoding": "utf-8", "pad_id": 0, "bos_id": 1, "eos_id": 2, "unk_id": 3,
    "byte_offset": 4, "vocab_size": 260, "max_length": 128, "add_bos": True, "add_eos": True,
    "truncation": "right",
}
TOKENIZER = ByteTokenizer.from_json(SPEC)
LIMITS = SequenceLimits(max_length=128, vocab_size=260)


def test_text_is_bytes_plus_offset_between_bos_and_eos() -> None:
    ids, truncated = TOKENIZER.encode("Hi!")
    assert ids.dtype == np.int64
    assert ids.tolist() == [1, ord("H") + 4, ord("i") + 4, ord("!") + 4, 2]
    assert not truncated


def test_multibyte_utf8_is_one_id_per_byte() -> None:
    ids, _ = TOKENIZER.encode("é€")
    assert ids.tolist() == [1, *(b + 4 for b in "é€".encode("utf-8")), 2]


def test_empty_text_is_bos_eos() -> None:
    assert TOKENIZER.encode("")[0].tolist() == [1, 2]


def test_long_text_is_cut_on_the_right_keeping_eos() -> None:
    text = "abcdefghij" * 20  # 200 bytes, room for 126
    ids, truncated = TOKENIZER.encode(text)
    assert truncated and len(ids) == 128
    assert ids[0] == 1 and ids[-1] == 2
    assert bytes((ids[1:-1] - 4).tolist()) == text.encode()[:126]


def test_text_that_exactly_fits_is_not_truncated() -> None:
    ids, truncated = TOKENIZER.encode("x" * 126)
    assert len(ids) == 128 and not truncated


def test_a_smaller_limit_than_the_tokenizer_wins() -> None:
    ids, truncated = TOKENIZER.encode("abcdef", max_length=5)
    assert ids.tolist() == [1, 97 + 4, 98 + 4, 99 + 4, 2] and truncated


def test_without_bos_and_eos() -> None:
    bare = ByteTokenizer.from_json({**SPEC, "add_bos": False, "add_eos": False})
    assert bare.encode("ab")[0].tolist() == [97 + 4, 98 + 4]


@given(st.text(max_size=300))
def test_any_text_round_trips_through_its_bytes(text: str) -> None:
    ids, truncated = TOKENIZER.encode(text)
    data = text.encode("utf-8")
    assert ids[0] == 1 and ids[-1] == 2 and len(ids) <= 128
    assert bytes((ids[1:-1] - 4).tolist()) == data[:126]
    assert truncated == (len(data) > 126)
    check_ids(ids, LIMITS, "sequences[0]")  # whatever the tokenizer makes, the model accepts


def test_token_text_is_readable() -> None:
    pieces = [TOKENIZER.token_text(t) for t in (0, 1, 2, 3, ord("a") + 4, 0xC3 + 4, 300)]
    assert pieces == ["<pad>", "<bos>", "<eos>", "<unk>", "a", "\\xc3", "<id 300>"]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"type": "wordpiece"}, "type"),
        ({"encoding": "latin-1"}, "utf-8"),
        ({"truncation": "left"}, "truncation"),
        ({"vocab_size": 100}, "vocab_size"),
        ({"max_length": 2}, "no room"),
        ({"bos_id": "one"}, "non-integer"),
    ],
)
def test_bad_tokenizer_files_are_rejected(change: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ByteTokenizer.from_json({**SPEC, **change})


def test_missing_field_is_rejected() -> None:
    spec = dict(SPEC)
    del spec["eos_id"]
    with pytest.raises(ValueError, match="eos_id"):
        ByteTokenizer.from_json(spec)


# -- client token ids -----------------------------------------------------------------------
def test_valid_ids_pass_unchanged() -> None:
    ids = check_ids([1, 5, 259, 2], LIMITS, "sequences[0]")
    assert ids.dtype == np.int64 and ids.tolist() == [1, 5, 259, 2]


@pytest.mark.parametrize(
    "ids, message",
    [
        ([], "sequences\\[3\\]: empty sequence"),
        ([1] * 129, "sequences\\[3\\]: 129 tokens, above the model's maximum of 128"),
        ([1, 5, 260, 2], "sequences\\[3\\]: token id 260 at position 2 is outside the vocabulary \\[0, 260\\)"),
        ([-1, 5], "token id -1 at position 0"),
    ],
)
def test_bad_ids_are_invalid_input(ids: list[int], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        check_ids(ids, LIMITS, "sequences[3]")


def test_without_a_vocabulary_ids_are_not_range_checked() -> None:
    assert check_ids([10_000], SequenceLimits(max_length=4, vocab_size=None), "s").tolist() == [10_000]
