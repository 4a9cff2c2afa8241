"""The demo base model: tokenizer + chat template, pre-training, atomic HF save, reload, determinism."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from helpers import ANIMALS, TINY, TINY_BASE_STEPS, build_tiny_base, tiny_records
from tuneline.config.build_base import BuildBaseParams
from tuneline.config.loader import Config
from tuneline.errors import InputFileError
from tuneline.jsonio import write_jsonl
from tuneline.train.build_base import BUILD_INFO, build_base, build_demo_base


def test_saves_hf_safetensors_and_build_info(tiny_base: Path) -> None:
    names = {p.name for p in tiny_base.iterdir()}
    expected = {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json", BUILD_INFO}
    assert expected <= names
    assert not any(n.endswith(".bin") for n in names)
    assert not [p for p in tiny_base.parent.iterdir() if p.name.startswith(".")]  # no temp dir left behind
    info = json.loads((tiny_base / BUILD_INFO).read_text())
    assert info["records"] == 20 and info["seed"] == 0 and info["params"]["pretrain_steps"] == TINY_BASE_STEPS
    assert info["parameters"] > 0 and len(info["corpus_sha256"]) == 64
    gen = json.loads((tiny_base / "generation_config.json").read_text())
    assert (gen["eos_token_id"], gen["pad_token_id"], gen["bos_token_id"]) == (2, 0, 1)


def test_loss_fell_on_repetitive_corpus(tiny_base: Path) -> None:
    info = json.loads((tiny_base / BUILD_INFO).read_text())
    assert info["loss_after"] < info["loss_before"] - 0.5


def test_reloads_with_auto_classes_and_generates(tiny_base: Path, tokenizer: Any) -> None:
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_base)
    assert isinstance(model, LlamaForCausalLM)
    assert model.config.vocab_size == len(tokenizer)
    specials = (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token)
    assert specials == ("<|bos|>", "<|eos|>", "<|pad|>")
    enc = tokenizer.apply_chat_template([{"role": "user", "content": "What sound does the owl make?"}],
                                        add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**enc, max_new_tokens=8, do_sample=False)
    assert out.shape[1] > enc["input_ids"].shape[1]


def test_chat_template_renders_roles_and_generation_prompt(tokenizer: Any) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": "Sunny."},
        {"role": "tool", "content": "{\"t\": 21}"},
    ]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    assert text == ("<|bos|><|system|>\nBe brief.<|end|>\n<|user|>\nWeather?<|end|>\n"
                    "<|assistant|>\nSunny.<|eos|>\n<|tool|>\n{\"t\": 21}<|end|>\n")
    prompt = tokenizer.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|user|>\nWeather?<|end|>\n<|assistant|>\n")
    assert not tokenizer.apply_chat_template(messages[:2], tokenize=False).endswith("<|assistant|>\n")
    # The template adds bos; plain tokenization must not add a second one.
    ids = tokenizer(text)["input_ids"]
    assert ids.count(tokenizer.bos_token_id) == 1
    with pytest.raises(Exception, match="unknown role"):
        tokenizer.apply_chat_template([{"role": "robot", "content": "x"}], tokenize=False)


def test_assistant_mask_marks_exactly_assistant_content_and_eos(tokenizer: Any) -> None:
    messages = [
        {"role": "user", "content": "What sound does the cat make?"},
        {"role": "assistant", "content": "The cat makes the cat sound."},
        {"role": "user", "content": "And the dog?"},
        {"role": "assistant", "content": "Woof, número 2 ünïcode."},
    ]
    enc = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True,
                                        return_assistant_tokens_mask=True)
    ids, mask = enc["input_ids"], enc["assistant_masks"]
    assert len(ids) == len(mask) and 0 < sum(mask) < len(mask)
    # Group the masked tokens into contiguous spans: one per assistant turn, each = content + eos.
    spans: list[list[int]] = []
    for i, (tok, m) in enumerate(zip(ids, mask, strict=True)):
        if m:
            if i == 0 or not mask[i - 1]:
                spans.append([])
            spans[-1].append(tok)
    assert [tokenizer.decode(s) for s in spans] == [
        "The cat makes the cat sound.<|eos|>", "Woof, número 2 ünïcode.<|eos|>"]
    unmasked = tokenizer.decode([t for t, m in zip(ids, mask, strict=True) if not m])
    assert "cat make?" in unmasked and "<|assistant|>" in unmasked and "Woof" not in unmasked


def weights_hash(path: Path) -> str:
    return hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()


def test_builds_are_byte_identical_and_seed_matters(tmp_path: Path, tiny_base: Path) -> None:
    again = build_tiny_base(tmp_path / "a")
    assert weights_hash(again) == weights_hash(tiny_base)
    # Not just the weights: every file (tokenizer, configs, build_info) is byte-identical.
    assert sorted(p.name for p in again.iterdir()) == sorted(p.name for p in tiny_base.iterdir())
    for p in tiny_base.iterdir():
        assert (again / p.name).read_bytes() == p.read_bytes(), p.name
    other = build_tiny_base(tmp_path / "b", seed=1)
    assert weights_hash(other) != weights_hash(tiny_base)


def test_rebuild_replaces_previous_output(tmp_path: Path) -> None:
    out = build_tiny_base(tmp_path, steps=2)
    (out / "stale.txt").write_text("from an older build")
    build_tiny_base(tmp_path, steps=3)
    assert not (out / "stale.txt").exists()
    assert json.loads((out / BUILD_INFO).read_text())["params"]["pretrain_steps"] == 3
    assert [p.name for p in tmp_path.iterdir()] == ["base"]


def test_build_base_reads_train_split_only(tmp_path: Path) -> None:
    processed = tmp_path / "data" / "processed"
    write_jsonl(processed / "train.jsonl", tiny_records())
    # A val split that would change the corpus if it were read: its hash must not show up.
    write_jsonl(processed / "val.jsonl", tiny_records(7))
    cfg = Config.model_validate({"seed": 3, "build_base": {**TINY, "pretrain_steps": 2,
                                                           "output_dir": "models/base"}})
    info = build_base(cfg, tmp_path)
    assert (tmp_path / "models" / "base" / "model.safetensors").is_file()
    assert json.loads((tmp_path / "reports" / "build_base.json").read_text())["corpus_sha256"] == \
        info["corpus_sha256"]
    assert info["records"] == 20 and info["seed"] == 3 and info["seconds"] > 0


def test_missing_or_empty_train_split_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match=r"train\.jsonl.*run the data stages first.*validate_splits"):
        build_base(Config(), tmp_path)
    write_jsonl(tmp_path / "data" / "processed" / "train.jsonl", [])
    with pytest.raises(InputFileError, match="empty"):
        build_base(Config(), tmp_path)


def test_params_reject_heads_that_do_not_divide_width() -> None:
    with pytest.raises(ValueError, match="num_heads"):
        BuildBaseParams(hidden_size=64, num_heads=3)
    with pytest.raises(ValueError, match="num_heads"):
        BuildBaseParams(hidden_size=12, num_heads=4)  # head width 3 is odd: RoPE needs pairs


def test_not_built_when_another_model_is_named(tmp_path: Path) -> None:
    """`dvc exp run -S model.name_or_path=<another model>` must not spend minutes building the demo base
    nobody trains: the stage leaves a note in its output folder and says so in its report."""
    from tuneline.train.build_base import NOT_BUILT

    write_jsonl(tmp_path / "data" / "processed" / "train.jsonl", tiny_records())
    cfg = Config.model_validate({"model": {"name_or_path": "Qwen/Qwen2.5-0.5B-Instruct"},
                                 "build_base": {**TINY, "pretrain_steps": 2}})
    info = build_base(cfg, tmp_path)
    out = tmp_path / "models" / "base"
    assert info["built"] is False and "Qwen/Qwen2.5-0.5B-Instruct" in info["reason"]
    assert (out / NOT_BUILT).is_file() and not (out / BUILD_INFO).is_file()
    assert json.loads((tmp_path / "reports" / "build_base.json").read_text())["built"] is False


def test_corpus_base_learns_only_the_corpus(tmp_path: Path) -> None:
    """With `build_base.corpus`, the weights learn from the corpus alone (the train split only lends its
    vocabulary): the demo's base must not already know what fine-tuning is meant to teach."""
    from tuneline.train.build_base import read_corpus

    processed = tmp_path / "data" / "processed"
    write_jsonl(processed / "train.jsonl", tiny_records())
    corpus = tmp_path / "data" / "pretrain"
    write_jsonl(corpus / "a.jsonl", [{"text": f"The {a} sat on the mat near the {b}."} for a in ANIMALS
                                     for b in ANIMALS])
    write_jsonl(corpus / "b.jsonl", [{"text": "Owls hoot at night."}])
    assert len(read_corpus(corpus)) == 26  # a folder: every *.jsonl under it, sorted
    cfg = Config.model_validate({"build_base": {**TINY, "pretrain_steps": 5, "corpus": "data/pretrain"}})
    info = build_base(cfg, tmp_path)
    assert info["corpus_documents"] == 26 and info["records"] == 20
    # Pre-trained on the corpus: it is the corpus's loss that fell, from blocks of corpus text.
    assert info["loss_after"] < info["loss_before"]
    without = build_demo_base(tiny_records(), BuildBaseParams(pretrain_steps=5, **TINY), 0,
                              tmp_path / "other")
    assert without["corpus_sha256"] != info["corpus_sha256"] and without["corpus_documents"] == 0


@pytest.mark.parametrize("line", ['{"txt": "x"}', "not json", '{"text": ""}', "[1]"])
def test_bad_corpus_line_names_file_and_line(tmp_path: Path, line: str) -> None:
    from tuneline.train.build_base import read_corpus

    path = tmp_path / "c.jsonl"
    path.write_text('{"text": "fine"}\n\n' + line + "\n", encoding="utf-8")
    with pytest.raises(InputFileError, match=r"c\.jsonl:3: a corpus line must be a JSON object"):
        read_corpus(path)
    with pytest.raises(InputFileError, match="no such file"):
        read_corpus(tmp_path / "missing.jsonl")
