"""Encode and EncodeStream on the real server: tokenising by tokenizer.json, outputs equal to
the v2 surface's for the same ids, per-sequence attention cut to each sequence's length."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from service.client import AsyncClient, Client
from service.proto.attnserve.v1 import attnserve_pb2 as pb
from tests.integration.support import ENCODER, infer_inputs

ATOL = 1e-4


def by_tokenizer(text: str, spec: dict) -> list[int]:
    """tokenizer.json written out: BOS, each UTF-8 byte + byte_offset, EOS."""
    body = [b + spec["byte_offset"] for b in text.encode("utf-8")]
    return [spec["bos_id"], *body, spec["eos_id"]]


def v2_encode(client: grpcclient.InferenceServerClient, ids: list[int]) -> dict[str, np.ndarray]:
    array = np.asarray([ids], np.int64)
    result = client.infer(ENCODER, infer_inputs({"input_ids": array, "attention_mask": np.ones_like(array)}))
    return {name: result.as_numpy(name)[0] for name in ("embedding", "logits", "attention")}


def test_text_is_tokenised_as_tokenizer_json_says(api: Client, tokenizer_spec: dict) -> None:
    item = api.encode(["Grüße, world"]).items[0]
    assert item.ids.tolist() == by_tokenizer("Grüße, world", tokenizer_spec)
    assert item.tokens[:3] == ["<bos>", "G", "r"] and item.tokens[-1] == "<eos>"
    assert item.tokens[3] == "\\xc3"  # first byte of "ü"
    assert not item.truncated


def test_outputs_equal_the_v2_surface_for_the_same_ids(
    api: Client, client: grpcclient.InferenceServerClient, labels: dict
) -> None:
    result = api.encode(["attention is all you need", [1, 70, 80, 90, 2]], top_k=10, attention=True)
    assert (result.model, result.version) == (ENCODER, "1")
    for item in result.items:
        expected = v2_encode(client, item.ids.tolist())
        np.testing.assert_allclose(item.embedding, expected["embedding"], atol=ATOL)
        np.testing.assert_allclose(item.logits, expected["logits"], atol=ATOL)
        np.testing.assert_allclose(item.attention, expected["attention"], atol=ATOL)
        probabilities = np.exp(expected["logits"] - expected["logits"].max())
        probabilities /= probabilities.sum()
        got = {x.index: x.probability for x in item.labels}
        np.testing.assert_allclose([got[i] for i in range(10)], probabilities, atol=ATOL)
        assert all(x.label == labels[ENCODER][x.index] for x in item.labels)


def test_ids_are_used_as_given(api: Client) -> None:
    item = api.encode([[70, 71, 72]]).items[0]
    assert item.ids.tolist() == [70, 71, 72]  # no BOS/EOS added to ids
    assert item.embedding.shape == (128,) and item.logits.shape == (10,)


def test_sequences_of_different_lengths_get_attention_at_their_own_length(api: Client) -> None:
    texts = ["a", "a somewhat longer sentence", "x" * 60]
    result = api.encode(texts, attention=True)
    for text, item in zip(texts, result.items, strict=True):
        length = len(text) + 2
        assert item.attention is not None and item.attention.shape == (4, length, length)
        np.testing.assert_allclose(item.attention.sum(axis=-1), 1.0, atol=1e-5)  # rows over keys
        assert (item.attention >= 0).all()


def test_sequences_in_one_request_are_independent(api: Client) -> None:
    together = api.encode(["short", "a much, much longer sequence of text"]).items
    alone = api.encode(["short"]).items[0]
    np.testing.assert_allclose(together[0].embedding, alone.embedding, atol=ATOL)


def test_long_text_is_truncated_to_max_length(api: Client, tokenizer_spec: dict) -> None:
    item = api.encode(["y" * 500]).items[0]
    assert item.truncated
    assert len(item.ids) == tokenizer_spec["max_length"]
    assert item.ids[-1] == tokenizer_spec["eos_id"]


def test_top_k_default_and_order(api: Client) -> None:
    item = api.encode(["hello"]).items[0]
    assert len(item.labels) == 5
    ranked = [x.probability for x in item.labels]
    assert ranked == sorted(ranked, reverse=True)
    assert item.attention is None  # only when asked


def test_encode_stream_answers_each_message(api: Client) -> None:
    batches = [["one"], ["two", "three"], [[1, 999999, 2]], ["four"]]
    replies = {r.index: r for r in api.encode_stream(batches)}
    assert sorted(replies) == [0, 1, 2, 3]
    assert replies[2].error is not None and replies[2].error.code == "INVALID_ARGUMENT"
    assert "sequences[0]" in replies[2].error.details and "999999" in replies[2].error.details
    assert len(replies[1].result.items) == 2  # type: ignore[union-attr]
    expected = api.encode(["four"]).items[0]
    np.testing.assert_allclose(replies[3].result.items[0].embedding, expected.embedding, atol=ATOL)  # type: ignore[union-attr]


def test_raw_stream_echoes_ids(stub) -> None:
    requests = [pb.EncodeRequest(sequences=[pb.Sequence(text=t)], id=t) for t in ("a", "b", "c")]
    assert sorted(r.id for r in stub.EncodeStream(iter(requests))) == ["a", "b", "c"]


async def test_async_client_encodes_and_streams(aio_api: AsyncClient, api: Client) -> None:
    result = await aio_api.encode(["async"], attention=True)
    expected = api.encode(["async"]).items[0]
    np.testing.assert_allclose(result.items[0].embedding, expected.embedding, atol=ATOL)

    async def batches():
        for text in ("x", "yy", "zzz"):
            yield [text]

    replies = [r async for r in aio_api.encode_stream(batches())]
    assert sorted(len(r.result.items[0].ids) for r in replies) == [3, 4, 5]  # type: ignore[union-attr]


@pytest.mark.parametrize("length", [1, 128])
def test_shortest_and_longest_sequences(api: Client, length: int) -> None:
    item = api.encode([[5] * length], attention=True).items[0]
    assert item.attention is not None and item.attention.shape == (4, length, length)
