"""Packing (no attention across rows, every row once) and the tokenization cache."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from helpers import repeat_records
from tuneline.jsonio import write_jsonl
from tuneline.lm.batching import TokenCounter, collate_padded
from tuneline.lm.chat import ChatFormat
from tuneline.lm.labels import IGNORE_INDEX, encode_records
from tuneline.train import token_cache
from tuneline.train.packing import collate_packed, pack_rows


def rows_of_lengths(lengths: list[int]) -> list[dict[str, Any]]:
    return [
        {"input_ids": [10 + i % 50] * n, "labels": [7] * n, "row_id": f"r{i}"} for i, n in enumerate(lengths)
    ]


def test_every_row_packed_once_within_max_length() -> None:
    rng = random.Random(0)
    lengths = [rng.randint(5, 300) for _ in range(500)]
    packed = pack_rows(rows_of_lengths(lengths), 512)
    ids = [r for p in packed for r in p["row_ids"]]
    assert sorted(ids) == sorted(f"r{i}" for i in range(500))  # each row exactly once
    assert all(len(p["input_ids"]) <= 512 for p in packed)
    assert sum(len(p["input_ids"]) for p in packed) == sum(lengths)
    # best-fit decreasing leaves little room: >= 95 % of the packed slots hold real tokens
    assert sum(lengths) / (512 * len(packed)) >= 0.95
    assert pack_rows(rows_of_lengths(lengths), 512) == packed  # deterministic


def test_positions_restart_and_first_label_of_each_row_masked() -> None:
    packed = pack_rows(rows_of_lengths([3, 2]), 8)
    (only,) = packed
    assert only["position_ids"] == [0, 1, 2, 0, 1]
    assert only["labels"] == [IGNORE_INDEX, 7, 7, IGNORE_INDEX, 7]


def test_row_longer_than_max_length_is_an_error() -> None:
    with pytest.raises(ValueError, match="r0 has 9 tokens > max_length 8"):
        pack_rows(rows_of_lengths([9]), 8)


def test_collate_counts_useful_tokens() -> None:
    packed = pack_rows(rows_of_lengths([6, 3, 3]), 6)  # [6], [3, 3]
    counter = TokenCounter()
    batch = collate_packed(packed, pad_id=0, counter=counter)
    assert "attention_mask" not in batch  # the mask comes from the restarting positions
    assert batch["input_ids"].shape == (2, 6) and counter.useful_fraction == 1.0
    counter = TokenCounter()
    padded = collate_padded(rows_of_lengths([6, 2]), pad_id=0, counter=counter)
    assert padded["attention_mask"].tolist()[1] == [1, 1, 0, 0, 0, 0] and counter.useful_fraction == 8 / 12


def test_packed_batch_has_no_attention_across_rows(tiny_base: Path) -> None:
    """The loss of a packed sequence equals each row's loss computed alone (token-weighted)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    model = AutoModelForCausalLM.from_pretrained(tiny_base).eval()
    model.config.use_cache = False  # as the trainer sets it: a KV cache hides the restarting positions
    rows = encode_records(ChatFormat(tokenizer), repeat_records(5), max_length=512).rows
    (packed,) = pack_rows(rows, 512)
    with torch.no_grad():
        batch = collate_packed([packed], tokenizer.pad_token_id or 0)
        together = model(**batch).logits[0]
        offset = 0
        for row in [rows[i] for i in sorted(range(5), key=lambda i: (-len(rows[i]["input_ids"]), i))]:
            alone = model(input_ids=torch.tensor([row["input_ids"]])).logits[0]
            n = len(row["input_ids"])
            torch.testing.assert_close(together[offset : offset + n], alone, atol=1e-4, rtol=1e-4)
            offset += n


def test_tokenization_cache_tokenizes_once(
    tiny_base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    path = tmp_path / "train.jsonl"
    records = repeat_records(7)
    write_jsonl(path, records)
    first = token_cache.tokenize_split(ChatFormat(tokenizer), records, path, tmp_path)
    assert not first.from_cache and list((tmp_path / token_cache.CACHE_DIR).glob("*.npz"))

    def no_tokenizing(*a: Any, **kw: Any) -> Any:
        raise AssertionError("re-tokenized although the cache holds this split")

    monkeypatch.setattr(token_cache, "encode_all", no_tokenizing)
    again = token_cache.tokenize_split(ChatFormat(tokenizer), records, path, tmp_path)
    assert again.from_cache and again.ids == first.ids and again.masks == first.masks
    assert again.record_ids == [r["id"] for r in records]

    write_jsonl(path, records[:6])  # other data: another key, so it must tokenize (and here, fail)
    with pytest.raises(AssertionError, match="re-tokenized"):
        token_cache.tokenize_split(ChatFormat(tokenizer), records[:6], path, tmp_path)


def test_a_change_to_the_rendering_code_is_a_new_cache_key(
    tiny_base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fix to masking (lm/chat.py, ...) must re-tokenize: a cache from the old code would train (and
    record in dvc.lock) the old masks."""
    from transformers import AutoTokenizer

    chat = ChatFormat(AutoTokenizer.from_pretrained(tiny_base))
    path = tmp_path / "train.jsonl"
    write_jsonl(path, repeat_records(3))
    before = token_cache.cache_key(path, chat)
    monkeypatch.setattr(token_cache, "rendering_code_hash", lambda: "another version of lm/chat.py")
    assert token_cache.cache_key(path, chat) != before


def test_damaged_cache_is_rebuilt(tiny_base: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    path = tmp_path / "val.jsonl"
    records = repeat_records(3)
    write_jsonl(path, records)
    first = token_cache.tokenize_split(ChatFormat(tokenizer), records, path, tmp_path)
    (cached,) = (tmp_path / token_cache.CACHE_DIR).glob("*.npz")
    cached.write_bytes(b"not a zip")
    again = token_cache.tokenize_split(ChatFormat(tokenizer), records, path, tmp_path)
    assert not again.from_cache and again.ids == first.ids
