"""Evaluation generation on a tiny base and a real LoRA adapter: extraction, greedy batching, EOS, loss."""

from __future__ import annotations

import copy
import logging
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from helpers import save_adapter, tiny_records
from tuneline.evaluate.loss import loss_and_perplexity
from tuneline.evaluate.metrics import score_rows
from tuneline.lm.chat import ChatFormat
from tuneline.lm.generate import generate, prompts_and_references, split_prompts
from tuneline.lm.labels import IGNORE_INDEX, encode_records
from tuneline.lm.load import load_variant


def _record(rid: str, messages: list[tuple[str, str]], category: str | None = None) -> dict[str, Any]:
    return {
        "id": rid,
        "messages": [{"role": r, "content": c} for r, c in messages],
        "category": category,
        "meta": {},
        "source": {},
    }


def eval_records() -> list[dict[str, Any]]:
    """Prompts of different lengths (left padding matters), a multi-turn one and a no-answer one."""
    records = tiny_records(9)
    records.append(
        _record(
            "multi",
            [
                ("system", "Answer in one sentence."),
                ("user", "What sound does the cat make?"),
                ("assistant", "The cat makes the cat sound, number 0."),
                ("user", "And what sound does the owl make?"),
                ("assistant", "The owl makes the owl sound, number 1."),
            ],
            "multi",
        )
    )
    records.append(_record("zh", [("user", "猫怎么叫？"), ("assistant", "喵喵。")], "zh"))
    records.append(_record("no-answer", [("user", "What sound does the dog make?")]))
    return records


@pytest.fixture(scope="module")
def adapter(learned_tiny_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real peft LoRA adapter with non-zero B (so it changes the model), saved with its tokenizer."""
    out = tmp_path_factory.mktemp("adapter")
    return save_adapter(learned_tiny_base, out, noisy=True, alpha=8, only_b=True)


@pytest.fixture(scope="module")
def base_variant(learned_tiny_base: Path) -> tuple[Any, Any]:
    return load_variant(learned_tiny_base, device="cpu")


@pytest.fixture(scope="module")
def lora_variant(learned_tiny_base: Path, adapter: Path) -> tuple[Any, Any]:
    return load_variant(learned_tiny_base, adapter, dtype="fp32", device="cpu")


def test_prompt_is_everything_before_the_last_assistant_turn() -> None:
    records = {r["id"]: r for r in eval_records()}
    prompt, reference = prompts_and_references(records["multi"])
    assert reference == "The owl makes the owl sound, number 1."
    assert [m["role"] for m in prompt] == ["system", "user", "assistant", "user"]
    assert prompt[-1]["content"] == "And what sound does the owl make?"
    trailing = _record("t", [("user", "q"), ("assistant", "a"), ("user", "thanks")])
    assert prompts_and_references(trailing) == ([{"role": "user", "content": "q"}], "a")
    assert prompts_and_references(records["no-answer"]) is None
    prompts, skipped = split_prompts(list(records.values()))
    assert [s["id"] for s in skipped] == ["no-answer"] and len(prompts) == len(records) - 1
    assert skipped[0]["reason"] == "no_assistant_turn"
    assert prompts[-1]["category"] == "zh" and prompts[-1]["reference"] == "喵喵。"


def test_variant_loading(
    learned_tiny_base: Path, adapter: Path, base_variant: tuple[Any, Any], lora_variant: tuple[Any, Any]
) -> None:
    from peft import PeftModel

    base, base_chat = base_variant
    lora, lora_chat = lora_variant
    base_tok, lora_tok = base_chat.tokenizer, lora_chat.tokenizer
    assert not isinstance(base, PeftModel) and isinstance(lora, PeftModel)
    assert not base.training and not lora.training
    assert base.config.use_cache and lora.config.use_cache
    # The adapter's own tokenizer (what training saved), left-padding for generation.
    assert Path(lora_tok.name_or_path) == adapter and Path(base_tok.name_or_path) == learned_tiny_base
    assert lora_tok.padding_side == "left" and lora_tok.chat_template
    assert lora_chat.stop_ids == [lora_tok.eos_token_id]
    assert next(lora.parameters()).dtype == torch.float32
    with pytest.raises(ValueError, match="dtype 'int8'"):
        load_variant(learned_tiny_base, dtype="int8", device="cpu")


def test_greedy_generation_stops_at_eos_and_batching_changes_nothing(base_variant: tuple[Any, Any]) -> None:
    model, chat = base_variant
    tok = chat.tokenizer
    records = eval_records()
    rows = generate(model, chat, records, max_new_tokens=24, batch_size=4)
    one_by_one = generate(model, chat, records, max_new_tokens=24, batch_size=1)
    assert rows == one_by_one
    assert [r["id"] for r in rows] == [r["id"] for r in records if r["id"] != "no-answer"]
    first = rows[0]
    assert first["prompt"] == tok.apply_chat_template(
        records[0]["messages"][:-1], tokenize=False, add_generation_prompt=True
    )
    assert (
        first["prompt"].endswith("<|assistant|>\n")
        and first["reference"] == records[0]["messages"][-1]["content"]
    )
    # The learnt replies end with EOS; decoded text carries no special token.
    stopped = [r for r in rows if r["stopped"]]
    assert stopped and all(0 < r["new_tokens"] < 24 for r in stopped)
    assert all("<|" not in r["prediction"] for r in rows)
    assert len({r["prediction"] for r in rows}) > 1  # replies depend on the prompt
    # The new-token count includes the EOS: re-encoding the reply gives one token fewer.
    for r in stopped:
        assert len(tok(r["prediction"], add_special_tokens=False)["input_ids"]) == r["new_tokens"] - 1
    assert generate(model, chat, records, max_new_tokens=24, batch_size=3) == rows  # deterministic


def test_budget_hits_are_counted_as_never_stopped(base_variant: tuple[Any, Any]) -> None:
    model, chat = base_variant
    rows = generate(model, chat, eval_records(), max_new_tokens=3, batch_size=4)
    assert all(not r["stopped"] and r["new_tokens"] == 3 for r in rows)
    assert score_rows(rows)["overall"]["never_stop_rate"] == 1.0


def test_never_stop_judges_only_references_that_fit_the_budget(base_variant: tuple[Any, Any]) -> None:
    """Each row carries what its reference takes to generate (its tokens and the end of turn); a row whose
    reference is longer than max_new_tokens could never have stopped, so it is left out of never_stop_rate
    and counted in never_stop_excluded."""
    model, chat = base_variant
    tok = chat.tokenizer
    records = eval_records()
    long_answer = "The cat makes the cat sound, " * 4 + "number 3."
    records.append(_record("long", [("user", "What sound does the cat make?"), ("assistant", long_answer)]))
    rows = generate(model, chat, records, max_new_tokens=24, batch_size=4)
    for r in rows:
        assert r["reference_tokens"] == len(tok(r["reference"], add_special_tokens=False)["input_ids"]) + 1
    budget = sorted(r["reference_tokens"] for r in rows)[-2]  # every reference but the long one fits
    rows = generate(model, chat, records, max_new_tokens=budget, batch_size=4)
    fits = [r for r in rows if r["reference_tokens"] <= budget]
    assert 0 < len(fits) < len(rows)
    overall = score_rows(rows, max_new_tokens=budget)["overall"]
    assert overall["never_stop_excluded"] == len(rows) - len(fits)
    assert overall["never_stop_rate"] == pytest.approx(sum(not r["stopped"] for r in fits) / len(fits))


def test_generation_config_eos_ids_also_stop(base_variant: tuple[Any, Any]) -> None:
    model, chat = base_variant
    tok = chat.tokenizer
    records = tiny_records(3)
    full = generate(model, chat, records, max_new_tokens=24, batch_size=3)
    ids = tok(full[0]["prediction"], add_special_tokens=False)["input_ids"]
    extra = ids[2]  # the third token of the first reply becomes an extra stop token
    config = copy.deepcopy(model.generation_config)
    config.eos_token_id = [config.eos_token_id, extra]
    cut = generate(model, ChatFormat(tok, config), records, max_new_tokens=24, batch_size=3)
    assert cut[0]["stopped"] and cut[0]["new_tokens"] == ids.index(extra) + 1
    assert cut[0]["prediction"] == tok.decode(ids[: ids.index(extra)])


def test_adapter_changes_outputs_and_batches_match(
    base_variant: tuple[Any, Any], lora_variant: tuple[Any, Any], caplog: pytest.LogCaptureFixture
) -> None:
    records = eval_records()
    with caplog.at_level(logging.WARNING, logger="tuneline.lm.generate"):
        lora_rows = generate(*lora_variant, records, max_new_tokens=12, batch_size=5)
    assert "1 of 12 rows are not generated for" in caplog.text and "no-answer" in caplog.text
    base_rows = generate(*base_variant, records, max_new_tokens=12, batch_size=5)
    assert [r["prediction"] for r in lora_rows] != [r["prediction"] for r in base_rows]
    assert generate(*lora_variant, records, max_new_tokens=12, batch_size=1) == lora_rows


def manual_loss(model: Any, chat: Any, records: list[dict[str, Any]], max_length: int) -> tuple[float, int]:
    """Sum of per-token cross-entropies, one unpadded row at a time, through the model's own loss."""
    total, tokens = 0.0, 0
    for row in encode_records(chat, records, max_length).rows:
        n = sum(1 for t in row["labels"][1:] if t != IGNORE_INDEX)
        with torch.no_grad():
            out = model(input_ids=torch.tensor([row["input_ids"]]), labels=torch.tensor([row["labels"]]))
        total += float(out.loss) * n
        tokens += n
    return total / tokens, tokens


def test_loss_is_token_weighted_over_assistant_tokens(
    base_variant: tuple[Any, Any], lora_variant: tuple[Any, Any]
) -> None:
    records = eval_records()
    model, chat = base_variant
    result = loss_and_perplexity(model, chat, records, max_length=256, batch_size=3)
    expected, tokens = manual_loss(model, chat, records, 256)
    assert result["tokens"] == tokens and result["rows"] == len(records) - 1
    assert result["skipped"] == ["no-answer"] and result["truncated_rows"] == 0
    assert result["loss"] == pytest.approx(expected, rel=1e-5)
    assert result["perplexity"] == pytest.approx(math.exp(expected), rel=1e-5)
    # Not a mean of row (or batch) means: rows have different numbers of answer tokens.
    per_row = result["per_row"]
    assert len({r["tokens"] for r in per_row}) > 1
    assert sum(r["loss"] for r in per_row) / len(per_row) != pytest.approx(result["loss"], rel=1e-6)
    assert sum(r["loss"] * r["tokens"] for r in per_row) / tokens == pytest.approx(result["loss"], rel=1e-6)
    # Batch size does not change the result; truncation is counted.
    assert loss_and_perplexity(model, chat, records, 256, batch_size=1)["loss"] == pytest.approx(
        result["loss"], rel=1e-6
    )
    assert loss_and_perplexity(model, chat, records, 20, batch_size=4)["truncated_rows"] > 0
    lora_loss = loss_and_perplexity(*lora_variant, records, 256, batch_size=3)["loss"]
    assert lora_loss != pytest.approx(result["loss"], rel=1e-3)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_variants_match_cpu_and_batch(
    learned_tiny_base: Path, adapter: Path, lora_variant: tuple[Any, Any]
) -> None:
    records = eval_records()
    model, chat = load_variant(learned_tiny_base, adapter, dtype="fp32", device="cuda")
    assert next(model.parameters()).is_cuda
    rows = generate(model, chat, records, max_new_tokens=12, batch_size=5)
    assert rows == generate(model, chat, records, max_new_tokens=12, batch_size=1)
    cpu_loss = loss_and_perplexity(*lora_variant, records, 256, batch_size=3)["loss"]
    assert loss_and_perplexity(model, chat, records, 256, batch_size=3)["loss"] == pytest.approx(
        cpu_loss, rel=1e-4
    )
    half, _ = load_variant(learned_tiny_base, adapter, device="cuda")  # auto: bf16 where the GPU has it
    assert next(half.parameters()).dtype == (
        torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    )
    assert len(generate(half, chat, records, max_new_tokens=12, batch_size=5)) == len(rows)
