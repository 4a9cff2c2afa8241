"""`tuneline build_base`: the built-in demo base model, built offline.

No hub download is needed anywhere: a byte-level BPE tokenizer is trained (`tokenizers`), wrapped as a
`PreTrainedTokenizerFast` with the chat template of `tuneline.train.chat_template`, and a tiny
`LlamaForCausalLM` is pre-trained (full-parameter causal LM, plain torch loop, CPU). A LoRA adapter
barely moves random weights, so the pre-training gives later stages something to adapt.

With `build_base.corpus` (the demo: web text, `data/pretrain/`), the weights learn from that corpus
alone, as a real base model knows language but not your data: what fine-tuning teaches (who the
assistant is, the JSON answers, the chat format and when to stop) shows in the evaluation. The tokenizer's
vocabulary comes from the corpus and the train split (so Chinese and the demo's words are whole tokens;
their embeddings stay untrained). Without a corpus the base is pre-trained on the train split rendered
through the chat template. Val and test are never read.

The same records, params and seed give byte-identical files (one CPU thread during the build;
seeded init and seeded data order). The model is saved in Hugging Face format (safetensors; the only
format transformers 5 writes) with its tokenizer, chat template and generation config, into a temp
directory beside `out_dir`; it is reloaded with `AutoModelForCausalLM` / `AutoTokenizer` (the real
loading path), checked to reproduce the trained loss and to generate, and only then renamed into place
(`tuneline.outdirs.replace_dir`: an existing `out_dir` is replaced only when tuneline wrote it).
Input embeddings and the LM head are tied (Llama-3.2-1B style): fewer parameters, same architecture.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import tokenizers
import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from tuneline.config.build_base import BuildBaseParams
from tuneline.config.loader import Config
from tuneline.errors import InputFileError, TunelineError
from tuneline.jsonio import read_jsonl, write_json
from tuneline.layout import Layout
from tuneline.outdirs import check_replaceable, fresh_dir, inside_workspace, replace_dir
from tuneline.progress import track
from tuneline.train.chat_template import BOS, CHAT_TEMPLATE, EOS, PAD, SPECIAL_TOKENS

logger = logging.getLogger(__name__)

BUILD_INFO = "build_info.json"
OUTPUT_SETTING = "build_base.output_dir"
PROBE_BLOCKS = 16  # fixed blocks whose loss is measured before and after pre-training


def conversations(records: list[dict[str, Any]]) -> list[list[dict[str, str]]]:
    """The messages of each record, reduced to role and content (what the chat template renders)."""
    return [[{"role": m["role"], "content": m["content"]} for m in r["messages"]] for r in records]


def corpus_hash(convs: list[list[dict[str, str]]]) -> str:
    """sha256 of the conversations in order: names the exact corpus a base was built from."""
    canon = json.dumps(convs, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canon.encode("utf-8")).hexdigest()


def train_tokenizer(convs: list[list[dict[str, str]]], vocab_size: int, max_length: int) -> Any:
    """Train a byte-level BPE on the message contents and wrap it for transformers.

    Every byte is in the alphabet, so any text encodes (no unknown token). A small corpus may stop
    short of `vocab_size`; the model's vocabulary is the tokenizer's real length.

    Returns:
        A `PreTrainedTokenizerFast` with bos/eos/pad set and the chat template attached.
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator((m["content"] for conv in convs for m in conv), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, model_max_length=max_length
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def make_model(params: BuildBaseParams, tokenizer: Any, seed: int) -> Any:
    """A freshly initialised tiny `LlamaForCausalLM` (seeded), sized by `params` and the tokenizer."""
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=params.hidden_size,
        intermediate_size=4 * params.hidden_size,  # the classic 4x MLP width
        num_hidden_layers=params.num_layers,
        num_attention_heads=params.num_heads,
        num_key_value_heads=params.num_heads,
        max_position_embeddings=params.max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
    )
    return model


def pack_blocks(token_lists: list[list[int]], seq_len: int) -> torch.Tensor:
    """Concatenate the token lists into one stream and cut it into [n, seq_len] blocks (tail dropped).

    A stream shorter than one block becomes a single shorter block.
    """
    stream = [t for ids in token_lists for t in ids]
    if len(stream) < 2:
        raise TunelineError("the demo corpus has fewer than 2 tokens: nothing to pre-train on")
    seq_len = min(seq_len, len(stream))
    n = len(stream) // seq_len
    return torch.tensor(stream[: n * seq_len], dtype=torch.long).view(n, seq_len)


@torch.no_grad()
def probe_loss(model: Any, blocks: torch.Tensor) -> float:
    """Mean causal-LM loss of `model` on `blocks` (eval mode, no gradient)."""
    model.eval()
    return float(model(input_ids=blocks, labels=blocks).loss)


def pretrain(model: Any, blocks: torch.Tensor, params: BuildBaseParams, seed: int) -> dict[str, float]:
    """Full-parameter causal-LM pre-training with AdamW in a seeded order.

    Warmup over the first 10% of steps, then cosine decay to 10% of `params.lr`; gradients clipped at 1.
    Returns the probe loss before and after and the first and last step losses.
    """
    probe = blocks[: min(PROBE_BLOCKS, len(blocks))]
    out = {"loss_before": probe_loss(model, probe)}
    steps = params.pretrain_steps
    if steps == 0:
        out["loss_after"] = out["loss_before"]
        return out
    gen = torch.Generator().manual_seed(seed)
    need = steps * params.batch_size
    epochs = math.ceil(need / len(blocks))
    order = torch.cat([torch.randperm(len(blocks), generator=gen) for _ in range(epochs)])
    optim = torch.optim.AdamW(model.parameters(), lr=params.lr, betas=(0.9, 0.95), weight_decay=0.01)
    warmup = max(1, steps // 10)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.1 + 0.45 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(optim, factor)
    model.train()
    for step in track(range(steps), "pre-training the demo base", total=steps):
        batch = blocks[order[step * params.batch_size : (step + 1) * params.batch_size]]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optim.step()
        sched.step()
        optim.zero_grad(set_to_none=True)
        if step == 0:
            out["first_step_loss"] = loss.item()
        out["last_step_loss"] = loss.item()
    out["loss_after"] = probe_loss(model, probe)
    return out


def _check_saved(path: Path, probe: torch.Tensor, loss_after: float, convs: list[list[dict[str, str]]]
                 ) -> dict[str, str]:
    """Reload with the Auto classes, check the loss is reproduced and that it generates; return a sample."""
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    reloaded = probe_loss(model, probe)
    if not math.isclose(reloaded, loss_after, rel_tol=1e-4, abs_tol=1e-5):
        raise TunelineError(f"the saved demo base does not reproduce its loss ({reloaded} vs {loss_after})")
    prompt = [m for m in convs[0] if m["role"] != "assistant"][:2] or [{"role": "user", "content": "Hello"}]
    enc = tokenizer.apply_chat_template(
        prompt, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    gen = model.generate(**enc, max_new_tokens=16, do_sample=False)
    new = gen[0, enc["input_ids"].shape[1] :]
    if len(new) == 0:
        raise TunelineError("the saved demo base generated no tokens")
    completion = tokenizer.decode(new, skip_special_tokens=True)
    return {"prompt": prompt[-1]["content"][:200], "completion": completion}


def build_demo_base(records: list[dict[str, Any]], params: BuildBaseParams, seed: int, out_dir: Path,
                    corpus: list[str] | None = None) -> dict:
    """Build the demo base and save it atomically into `out_dir`.

    Args:
        records: canonical records of the train split; only `messages` (role, content) is used: the
            tokenizer's vocabulary, and the pre-training text when there is no `corpus`.
        params: the `build_base` settings.
        seed: the global seed (model init and data order).
        out_dir: the Hugging Face model directory to (re)create.
        corpus: pre-training documents; when given, the weights learn from them alone.

    Returns:
        build_info: corpus hash, params, seed, losses, parameter count, vocabulary size, token count,
        a greedy sample, library versions, and `seconds`. All but `seconds` is also written to
        `out_dir/build_info.json`, so the whole directory is byte-identical across identical builds.

    Raises:
        TunelineError: empty corpus, pre-training that did not lower the loss, or a save that does not reload.
        OutputPathError: `out_dir` exists and tuneline did not write it (checked before any work).
    """
    if not records:
        raise TunelineError("no records to build the demo base from (the train split is empty)")
    check_replaceable(Path(out_dir), OUTPUT_SETTING)
    started = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # bit-for-bit results do not depend on the machine's core count
    try:
        convs = conversations(records)
        documents = [[{"role": "user", "content": text}] for text in corpus or ()]
        tokenizer, token_lists = _tokenize(convs, documents, corpus, params)
        blocks = pack_blocks(token_lists, params.seq_len)
        model = make_model(params, tokenizer, seed)
        logger.info("demo base: %d %s, %d tokens, %d blocks of %d; vocab %d; %d parameters",
                    len(token_lists), "corpus documents" if corpus else "records", sum(map(len, token_lists)),
                    len(blocks), blocks.shape[1], len(tokenizer), model.num_parameters())
        losses = _pretrain_lowering_loss(model, blocks, params, seed)
        facts = {
            "corpus_sha256": corpus_hash(convs + documents),
            "records": len(convs),
            "corpus_documents": len(documents),
            "tokens": sum(map(len, token_lists)),
            "params": params.model_dump(mode="json"),
            "seed": seed,
            **losses,
            "parameters": model.num_parameters(),
            "vocab_size": len(tokenizer),
        }
        info = _save_checked(model, tokenizer, Path(out_dir), blocks[:PROBE_BLOCKS], convs, facts)
    finally:
        torch.set_num_threads(threads)
    info["seconds"] = round(time.perf_counter() - started, 2)
    logger.info("demo base saved to %s in %.1fs", out_dir, info["seconds"])
    return info


def _tokenize(convs: list[list[dict[str, str]]], documents: list[list[dict[str, str]]],
              corpus: list[str] | None, params: BuildBaseParams) -> tuple[Any, list[list[int]]]:
    """The tokenizer (trained on the corpus and the conversations) and the token ids of the pre-training
    text: each corpus document ending with EOS, or else the conversations rendered by the chat template."""
    tokenizer = train_tokenizer(documents + convs, params.vocab_size, params.max_position_embeddings)
    if corpus:  # each document ends with EOS, as in causal-LM pre-training
        texts = [text + tokenizer.eos_token for text in corpus]
    else:
        texts = tokenizer.apply_chat_template(convs, tokenize=False)
    return tokenizer, tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]


def _pretrain_lowering_loss(model: Any, blocks: torch.Tensor, params: BuildBaseParams, seed: int) -> dict:
    """`pretrain`, refused when it did not lower the probe loss (a base that learned nothing)."""
    losses = pretrain(model, blocks, params, seed)
    logger.info("demo base pre-training: loss %.4f -> %.4f over %d steps",
                losses["loss_before"], losses["loss_after"], params.pretrain_steps)
    if params.pretrain_steps and not losses["loss_after"] < losses["loss_before"]:
        raise TunelineError(
            f"demo base pre-training did not lower the loss ({losses['loss_before']:.4f} -> "
            f"{losses['loss_after']:.4f}); lower build_base.lr or raise build_base.pretrain_steps"
        )
    return losses


def _save_checked(model: Any, tokenizer: Any, out_dir: Path, probe: torch.Tensor,
                  convs: list[list[dict[str, str]]], facts: dict[str, Any]) -> dict[str, Any]:
    """Save into a temporary folder beside `out_dir`, reload and check it (`_check_saved`), write
    build_info.json (`facts`, the sample, library versions) and rename it into place; returns build_info."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the published model directory is an ordinary one
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        sample = _check_saved(tmp, probe, facts["loss_after"], convs)
        info = {**facts, "sample": sample,
                "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                             "tokenizers": tokenizers.__version__}}
        # No wall time in the saved directory: same inputs give a byte-identical directory (DVC hash).
        write_json(tmp / BUILD_INFO, info)
        replace_dir(tmp, out_dir, OUTPUT_SETTING)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return info


def build_base(cfg: Config, root: Path = Path(".")) -> dict:
    """The `build_base` stage: build `cfg.build_base` from `root/data/processed/train.jsonl`.

    `output_dir` is taken relative to `root` (unless absolute) and must stay inside it unless
    `allow_outside_workspace` is set. Also writes `root/reports/build_base.json`.

    Raises:
        InputFileError: the train split is missing or empty.
        OutputPathError: `output_dir` is outside the workspace, or holds files tuneline did not write.
    """
    layout = Layout(Path(root))
    out_dir = inside_workspace(layout.root, cfg.build_base.output_dir, OUTPUT_SETTING,
                               cfg.allow_outside_workspace)
    check_replaceable(out_dir, OUTPUT_SETTING)  # before any work: refuse now, not after pre-training
    named = Path(cfg.model.name_or_path)
    if (named if named.is_absolute() else layout.root / named).resolve() != out_dir.resolve():
        return _not_needed(cfg, layout, out_dir)
    train = layout.processed("train")
    if not train.is_file():
        raise InputFileError(
            f"{train}: train split not found; run the data stages first (`dvc repro validate_splits`, "
            "or `tuneline data --input ... --output ...`)"
        )
    records = list(read_jsonl(train))
    if not records:
        raise InputFileError(f"{train}: the train split is empty; nothing to build the demo base from")
    corpus = cfg.build_base.corpus
    texts = read_corpus(corpus if corpus.is_absolute() else layout.root / corpus) if corpus else None
    info = build_demo_base(records, cfg.build_base, cfg.seed, out_dir, texts)
    # Wall time goes to the log only, so the DVC metric is identical when the build is.
    write_json(layout.report("build_base"), {k: v for k, v in info.items() if k != "seconds"})
    return info


def read_corpus(path: Path) -> list[str]:
    """The `text` of every line of a JSONL file, or of every `*.jsonl` file under a folder (sorted).

    Raises:
        InputFileError: no such file, no documents, or a line that is not an object with a string `text`
            (named by file and line).
    """
    files = sorted(path.rglob("*.jsonl")) if path.is_dir() else [path]
    if not path.exists() or not files:
        raise InputFileError(f"build_base.corpus: {path}: no such file, or a folder without *.jsonl files")
    texts = []
    for file in files:
        with file.open(encoding="utf-8") as fh:
            for number, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    text = json.loads(line).get("text")
                except (json.JSONDecodeError, AttributeError):
                    text = None
                if not isinstance(text, str) or not text.strip():
                    raise InputFileError(f"{file}:{number}: a corpus line must be a JSON object with a "
                                         "non-empty string `text`")
                texts.append(text)
    if not texts:
        raise InputFileError(f"build_base.corpus: {path}: no documents")
    return texts


NOT_BUILT = "NOT_BUILT.md"


def _not_needed(cfg: Config, layout: Layout, out_dir: Path) -> dict:
    """`model.name_or_path` names another model: the demo base is not built (minutes of CPU for a model
    nobody trains). The stage's output folder holds only a note saying so, so DVC has its output."""
    fresh_dir(out_dir, OUTPUT_SETTING)
    reason = f"model.name_or_path is {cfg.model.name_or_path!r}, not the demo base"
    (out_dir / NOT_BUILT).write_text(f"The demo base was not built: {reason}.\n", encoding="utf-8")
    info = {"built": False, "reason": reason}
    write_json(layout.report("build_base"), info)
    logger.info("build_base: skipped (%s)", info["reason"])
    return info
