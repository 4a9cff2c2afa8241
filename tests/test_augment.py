"""The augment stage: gating, synonym replacement (English and Chinese), back-translation, the contract."""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from tuneline.config import Config
from tuneline.data import augment
from tuneline.data.synonyms import SynonymReplacer, load_dictionary, match_case
from tuneline.errors import ConfigError
from tuneline.jsonio import read_jsonl, write_jsonl
from tuneline.layout import Layout
from tuneline.records import content_id, make_record

USER_TEXTS = [
    "Please explain this simple idea quickly.",
    "What is a good method to learn fast?",
    "Can you help me fix this big problem?",
    "Describe a beautiful old house.",
    "Give me an easy example of a common mistake.",
]


def row(i: int, user: str, category: str = "qa") -> dict[str, Any]:
    msgs = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": user},
        {"role": "assistant", "content": f"This is a good and simple answer number {i}."},
    ]
    return make_record(msgs, {"file": "data/raw/t.jsonl", "line": i + 1}, category=category)


def workspace(root: Path, n_train: int = 5) -> Layout:
    layout = Layout(root)
    train = [row(i, USER_TEXTS[i % len(USER_TEXTS)] + f" (case {i})") for i in range(n_train)]
    write_jsonl(layout.split_file("train"), train)
    write_jsonl(layout.split_file("val"), [row(100, "Is this a quick check?")])
    write_jsonl(layout.split_file("test"), [row(200, "Is this a big test?")])
    return layout


def cfg(**augment_section: Any) -> Config:
    return Config.model_validate({"augment": augment_section})


# --- gating ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("min_rows", "runs"), [(6, True), (5, False), (4, False)])
def test_runs_only_below_the_threshold(tmp_path: Path, min_rows: int, runs: bool) -> None:
    layout = workspace(tmp_path, n_train=5)
    report = augment.run(cfg(min_train_rows=min_rows), layout)
    assert report["skipped"] is (not runs)
    assert ("< augment.min_train_rows" in report["reason"]) is runs
    train_out = list(read_jsonl(layout.processed("train")))
    assert (len(train_out) > 5) is runs
    assert report["rows_added"] == len(train_out) - 5
    assert report["rows_in"] == report["rows_kept"] == 7 and report["rows_rejected"] == 0
    assert report["splits"]["train"] == {"before": 5, "after": len(train_out)}
    for split in ("val", "test"):
        assert list(read_jsonl(layout.processed(split))) == list(read_jsonl(layout.split_file(split)))
    assert list(read_jsonl(layout.rejected("augment"))) == []


def test_synonym_rows_are_traced_and_user_only(tmp_path: Path) -> None:
    layout = workspace(tmp_path)
    report = augment.run(cfg(min_train_rows=100, copies_per_row=2), layout)
    rows = list(read_jsonl(layout.processed("train")))
    originals = {r["id"]: r for r in rows[:5]}
    added = rows[5:]
    assert added and report["added_by_method"] == {"synonym": len(added)}
    for new in added:
        old = originals[new["meta"]["augmented_from"]]
        assert new["meta"]["augmentation"] == "synonym"
        assert new["id"] == content_id(new["messages"], new["category"]) != old["id"]
        assert new["category"] == old["category"] and new["source"] == old["source"]
        assert new["messages"][0] == old["messages"][0]  # system untouched
        assert new["messages"][2] == old["messages"][2]  # assistant untouched by default
        assert new["messages"][1]["content"] != old["messages"][1]["content"]
    assert len({r["id"] for r in rows}) == len(rows)


def test_assistant_rewritten_only_when_asked(tmp_path: Path) -> None:
    layout = workspace(tmp_path)
    augment.run(cfg(min_train_rows=100, roles=["assistant"]), layout)
    added = list(read_jsonl(layout.processed("train")))[5:]
    assert added
    assert all("number" in r["messages"][2]["content"] for r in added)
    originals = {r["id"]: r for r in read_jsonl(layout.split_file("train"))}
    assert all(r["messages"][1] == originals[r["meta"]["augmented_from"]]["messages"][1] for r in added)


def test_deterministic_across_runs(tmp_path: Path) -> None:
    outs = []
    for name in ("a", "b"):
        layout = workspace(tmp_path / name)
        augment.run(cfg(min_train_rows=100, copies_per_row=3), layout)
        outs.append(layout.processed("train").read_text(encoding="utf-8"))
    assert outs[0] == outs[1]
    other = cfg(min_train_rows=100, copies_per_row=3).model_copy(update={"seed": 7})
    layout = workspace(tmp_path / "c")
    augment.run(other, layout)
    assert layout.processed("train").read_text(encoding="utf-8") != outs[0]


def test_no_variant_when_nothing_is_replaceable(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    write_jsonl(layout.split_file("train"), [row(0, "Zyx qwv plk."), row(1, "`fast` <URL>")])
    for split in ("val", "test"):
        write_jsonl(layout.split_file(split), [])
    report = augment.run(cfg(min_train_rows=100), layout)
    assert report["rows_added"] == 0 and report["skipped"] is False


# --- synonym replacement -----------------------------------------------------------------------------


def test_english_keeps_case_and_whole_words() -> None:
    replacer = SynonymReplacer({"fast": ["quick"], "car": ["automobile"]})
    texts = {0: "Fast cars are FAST. Breakfast is fast; a car."}
    out = replacer.variant(texts, 1.0, random.Random(0))
    assert out == {0: "Quick cars are QUICK. Breakfast is quick; a automobile."}
    assert match_case("Hello", "hi") == "Hi" and match_case("OK", "fine") == "FINE"


def test_chinese_greedy_longest_match() -> None:
    replacer = SynonymReplacer({"机器学习": ["ML"], "机器": ["设备"], "重要": ["关键"]})
    spans = replacer.spans("机器学习很重要，机器也是")
    assert [(s, e) for s, e, _ in spans] == [(0, 4), (5, 7), (8, 10)]
    out = replacer.variant({0: "机器学习很重要，机器也是"}, 1.0, random.Random(0))
    assert out == {0: "ML很关键，设备也是"}


def test_code_and_placeholders_are_never_replaced() -> None:
    replacer = SynonymReplacer({"fast": ["quick"], "url": ["link"]})
    assert replacer.spans("`fast` and <URL> and ```\nfast\n```") == []


def test_bundled_dictionaries() -> None:
    words = load_dictionary()
    english = [w for w in words if w.isascii()]
    chinese = [w for w in words if not w.isascii()]
    assert len(english) >= 200 and len(chinese) >= 200
    assert "quick" in words["fast"] and "高兴" in words["快乐"]
    replacer = SynonymReplacer(words)
    out = replacer.variant({0: "我今天很快乐"}, 1.0, random.Random(1))
    assert out[0] != "我今天很快乐" and out[0].startswith("我今天很")


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("[1, 2]", "JSON object"),
        ('{"fast": "quick"}', "list of non-empty strings"),
        ('{"fast": ["quick"],', "line 1: not valid JSON"),
    ],
)
def test_bad_dictionary_names_the_file(tmp_path: Path, content: str, match: str) -> None:
    path = tmp_path / "my_synonyms.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ConfigError, match=match) as err:
        load_dictionary(path)
    assert "my_synonyms.json" in str(err.value)
    with pytest.raises(ConfigError, match="absent.json"):
        load_dictionary(tmp_path / "absent.json")


def test_custom_dictionary_through_the_stage(tmp_path: Path) -> None:
    path = tmp_path / "syn.json"
    path.write_text(json.dumps({"explain": ["clarify"]}), encoding="utf-8")
    layout = workspace(tmp_path / "ws")
    report = augment.run(cfg(min_train_rows=100, synonyms={"dictionary": str(path)}), layout)
    added = list(read_jsonl(layout.processed("train")))[5:]
    assert report["rows_added"] == 1 and "clarify" in added[0]["messages"][1]["content"]
    assert report["synonyms"] == str(path)


# --- back-translation --------------------------------------------------------------------------------


def test_back_translation_skipped_is_said(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    layout = workspace(tmp_path)
    with caplog.at_level(logging.INFO, logger="tuneline.data.augment"):
        report = augment.run(cfg(min_train_rows=100), layout)
    assert report["back_translation"] == augment.BT_SKIPPED
    assert augment.BT_SKIPPED in caplog.text


def test_back_translation_needs_both_models() -> None:
    with pytest.raises(ValidationError, match="reverse_model_path"):
        cfg(back_translation={"model_path": "models/en-de"})


def test_back_translation_missing_model_dir_is_named(tmp_path: Path) -> None:
    layout = workspace(tmp_path)
    bt = {"model_path": str(tmp_path / "fw"), "reverse_model_path": str(tmp_path / "bw")}
    with pytest.raises(ConfigError, match="fw"):
        augment.run(cfg(min_train_rows=100, back_translation=bt), layout)


def _tiny_marian(path: Path) -> None:
    """A randomly initialised Marian model with a word-level tokenizer, saved for offline loading."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import MarianConfig, MarianMTModel, PreTrainedTokenizerFast

    words = ["<pad>", "</s>", "<unk>", *sorted({w for t in USER_TEXTS for w in t.lower().split()})]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )
    torch.manual_seed(0)
    config = MarianConfig(
        vocab_size=len(words), d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=64,
        pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )
    fast.save_pretrained(path)
    MarianMTModel(config).save_pretrained(path)


@pytest.mark.integration
def test_back_translation_with_tiny_local_models(tmp_path: Path) -> None:
    for name in ("fw", "bw"):
        _tiny_marian(tmp_path / name)
    layout = workspace(tmp_path / "ws")
    bt = {"model_path": str(tmp_path / "fw"), "reverse_model_path": str(tmp_path / "bw"),
          "max_length": 8, "batch_size": 2, "device": "cpu"}
    report = augment.run(cfg(min_train_rows=100, synonyms={"enabled": False}, back_translation=bt), layout)
    assert report["back_translation"].startswith("ran:")
    added = list(read_jsonl(layout.processed("train")))[5:]
    assert report["rows_added"] == len(added) == report["added_by_method"].get("back_translation", 0)
    assert added, "random models still produce (gibberish) text that differs from the input"
    originals = {r["id"]: r for r in read_jsonl(layout.split_file("train"))}
    for new in added:
        old = originals[new["meta"]["augmented_from"]]
        assert new["meta"]["augmentation"] == "back_translation"
        assert new["messages"][2] == old["messages"][2] and new["messages"][1] != old["messages"][1]

