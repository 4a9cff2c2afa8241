"""Training throughput: tuneline's packed batches against a plain HF Trainer baseline without packing.

Both variants train the same LoRA (r=8, alpha=16, q_proj/v_proj) on the same rows for the same number
of optimizer steps in the same process; only batching differs:

- baseline: the plain transformers recipe: `Trainer` + `DataCollatorForSeq2Seq` (each batch padded to
  its longest row, attention mask);
- tuneline: `tuneline.train.packing` (best-fit decreasing packing to max_length, positions restart
  per row, no attention across rows) through tuneline's trainer class.

Reported per variant: useful (real, non-pad) tokens/s, useful-token fraction, step time, peak GPU
memory, and on a GPU the model FLOPs utilization: (4 N per useful token for LoRA, i.e. forward 2N and
backward through frozen weights 2N, plus causal attention 3 x 4 x layers x hidden x sum(len^2)/2 over
rows) / step time / peak (989 TFLOPS dense BF16 for H100/H200).

    # CPU: the demo base model and demo data (run `make run` or `dvc repro build_base` first)
    OMP_NUM_THREADS=1 .venv/bin/python bench/train_throughput.py --cpu
    # GPU: a ~1.1B Llama built from a config with random weights, bf16, sequences of 2048
    python bench/train_throughput.py --gpu --steps 30
    # GPU: also transformers' padding-free baseline; tuneline with the fused / chunked loss and flex
    # attention's document mask (block-sparse, instead of sdpa's dense block-diagonal mask)
    python bench/train_throughput.py --gpu --steps 30 --flatten-baseline --loss-kernel auto \
        --attn flex_attention
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TUNELINE_PROGRESS", "0")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from tuneline.lm.labels import IGNORE_INDEX  # noqa: E402
from tuneline.train.packing import TokenCounter, collate_packed, pack_rows  # noqa: E402

PEAK_BF16 = 989e12  # H100 / H200 SXM dense BF16 tensor FLOP/s
GPU_MODEL = {  # TinyLlama-1.1B's shape: 1.10 B parameters
    "hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22, "num_attention_heads": 32,
    "num_key_value_heads": 4, "vocab_size": 32000, "max_position_embeddings": 4096,
}


def synthetic_rows(n: int, max_length: int, vocab: int, seed: int) -> list[dict[str, Any]]:
    """SFT-like rows: lognormal lengths (median ~ max_length / 6), the last 60 % of each row supervised."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        length = int(min(max_length, max(32, rng.lognormvariate(math.log(max_length / 6), 0.8))))
        ids = [rng.randrange(4, vocab) for _ in range(length)]
        cut = int(length * 0.4)
        rows.append({"input_ids": ids, "labels": [IGNORE_INDEX] * cut + ids[cut:], "row_id": str(i)})
    return rows


def demo_rows(root: Path, max_length: int) -> tuple[list[dict[str, Any]], str]:
    """The demo train split rendered with the demo base's tokenizer (assistant-only labels)."""
    from transformers import AutoTokenizer

    from tuneline.jsonio import read_jsonl
    from tuneline.lm.chat import ChatFormat
    from tuneline.lm.labels import encode_records

    base = root / "models" / "base"
    if not (base / "config.json").is_file():
        raise SystemExit(f"{base}: no demo base; run `make run` or `dvc repro build_base` first")
    tokenizer = AutoTokenizer.from_pretrained(base)
    records = list(read_jsonl(root / "data" / "processed" / "train.jsonl"))
    return encode_records(ChatFormat(tokenizer), records, max_length).rows, str(base)


def flops_per_step(batches: list[list[list[int]]], n_params: int, layers: int, hidden: int) -> float:
    """LoRA training FLOPs of the given rows (segments = per-row lengths inside each sequence)."""
    tokens = sum(sum(seg) for b in batches for seg in b)
    attention = sum(12 * layers * hidden * s * s / 2 for b in batches for seg in b for s in seg)
    return (4 * n_params * tokens + attention) / len(batches)


class StepTimer:
    """Times optimizer steps after `skip` warm-up steps (synchronizing the GPU at each boundary)."""

    def __init__(self, skip: int) -> None:
        self.skip, self.times, self.last = skip, [], None

    def callback(self) -> Any:
        import torch
        from transformers import TrainerCallback

        timer = self

        class Timer(TrainerCallback):
            def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                now = time.perf_counter()
                if timer.last is not None and state.global_step > timer.skip:
                    timer.times.append(now - timer.last)
                timer.last = now

        return Timer()


def run_variant(name: str, model_fn: Any, rows: list[dict], args: argparse.Namespace, pad_id: int) -> dict:
    import torch
    from transformers import Trainer, TrainingArguments

    from tuneline.train.trainer import Rows, _trainer_class

    gpu = torch.cuda.is_available() and not args.cpu
    model = model_fn()
    model.config.use_cache = False  # with a KV cache, packed rows would attend to each other
    counter = TokenCounter()
    segments: list[list[list[int]]] = []
    if name == "baseline":
        data = [{"input_ids": r["input_ids"], "labels": r["labels"]} for r in rows]

        def collate(batch: list[dict]) -> dict:
            lengths = [len(b["input_ids"]) for b in batch]
            width = max(lengths)
            counter.real += sum(lengths)
            counter.total += width * len(batch)
            segments.append([[n] for n in lengths])
            gaps = [width - n for n in lengths]
            pairs = list(zip(batch, gaps, strict=True))
            return {  # what DataCollatorWithPadding / ForSeq2Seq produce: padded to the longest row
                "input_ids": torch.tensor([b["input_ids"] + [pad_id] * g for b, g in pairs]),
                "labels": torch.tensor([b["labels"] + [IGNORE_INDEX] * g for b, g in pairs]),
                "attention_mask": torch.tensor([[1] * (width - g) + [0] * g for g in gaps]),
            }

        trainer_cls, dataset = Trainer, data
    elif name == "flatten":
        trainer_cls, dataset, collate, targs_batch = flatten_variant(rows, args, counter, segments)
    else:
        packed = pack_rows(rows, args.max_length)

        def collate(batch: list[dict]) -> dict:
            segments.append([_seg_lengths(b["position_ids"]) for b in batch])
            return collate_packed(batch, pad_id, counter)

        trainer_cls, dataset = _trainer_class(), Rows(packed)
    targs = TrainingArguments(
        output_dir=str(args.out / name),
        per_device_train_batch_size=targs_batch if name == "flatten" else args.batch,
        gradient_accumulation_steps=1,
        learning_rate=2e-4, max_steps=args.steps, logging_steps=args.steps, save_strategy="no",
        eval_strategy="no", bf16=gpu, use_cpu=not gpu, report_to="none", dataloader_num_workers=0,
        remove_unused_columns=False, disable_tqdm=True, seed=0, data_seed=0,
        activation_checkpointing=args.checkpointing, torch_compile=args.compile,
    )
    timer = StepTimer(skip=3)
    trainer = trainer_cls(model=model, args=targs, train_dataset=dataset, data_collator=collate,
                          callbacks=[timer.callback()])
    if name == "tuneline":
        trainer.loss_kernel = tuneline_loss_kernel(model, args.loss_kernel)
    if gpu:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    steps = timer.times
    step_s = sorted(steps)[len(steps) // 2] if steps else float("nan")
    timed = segments  # every collated batch (the loader may run a batch ahead of the timed steps)
    useful_per_step = sum(sum(s) for b in timed for s in b) / max(1, len(timed))
    out = {"variant": name, "steps_timed": len(steps), "median_step_s": step_s,
           "useful_tokens_per_s": useful_per_step / step_s, "useful_fraction": counter.useful_fraction,
           "sequences": len(dataset)}
    if gpu:
        base = model.get_base_model()
        n = sum(p.numel() for p in base.parameters())
        cfg = base.config
        out["mfu"] = flops_per_step(timed, n, cfg.num_hidden_layers, cfg.hidden_size) / step_s / PEAK_BF16
        out["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
    del trainer, model
    if gpu:
        torch.cuda.empty_cache()
    return out


def flatten_variant(rows: list[dict], args: argparse.Namespace, counter: TokenCounter,
                    segments: list) -> tuple[Any, list[dict], Any, int]:
    """The transformers padding-free recipe: `DataCollatorWithFlattening` joins a batch's rows into one
    sequence (position ids restart per row, no padding) for the plain `Trainer`. Rows per step are chosen
    so a step holds about as many tokens as tuneline's packed batch (batch x max_length)."""
    from transformers import DataCollatorWithFlattening, Trainer

    flatten = DataCollatorWithFlattening()
    mean = sum(len(r["input_ids"]) for r in rows) / len(rows)
    per_step = max(1, round(args.batch * args.max_length / mean))

    def collate(batch: list[dict]) -> dict:
        lengths = [len(b["input_ids"]) for b in batch]
        counter.real += sum(lengths)
        counter.total += sum(lengths)
        segments.append([lengths])
        return flatten(batch)

    data = [{"input_ids": r["input_ids"], "labels": r["labels"]} for r in rows]
    return Trainer, data, collate, per_step


def tuneline_loss_kernel(model: Any, setting: str) -> Any:
    """`train.loss_kernel` for the tuneline variant (`plain`: the model's own loss, as before)."""
    from tuneline.train.loss import install_loss_kernel, loss_kernel_for

    kind = loss_kernel_for(setting, zero_stage=0)
    print(json.dumps({"tuneline_loss_kernel": kind}), flush=True)
    return install_loss_kernel(model, kind)


def _seg_lengths(positions: list[int]) -> list[int]:
    """Row lengths inside a packed sequence (positions restart at 0 for every row)."""
    starts = [i for i, p in enumerate(positions) if p == 0] + [len(positions)]
    return [b - a for a, b in zip(starts, starts[1:], strict=False)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--cpu", action="store_true", help="demo base on the demo train split, fp32 on CPU")
    mode.add_argument("--gpu", action="store_true", help="~1.1B Llama from a config, bf16, LoRA")
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps per variant")
    ap.add_argument("--batch", type=int, default=None, help="sequences per step")
    ap.add_argument("--max-length", type=int, default=None)
    ap.add_argument("--attn", default="sdpa", help="attention implementation (sdpa, eager, flex_attention)")
    ap.add_argument("--checkpointing", action="store_true", help="gradient checkpointing")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model (TrainingArguments)")
    ap.add_argument("--loss-kernel", default="plain", choices=["plain", "auto", "chunked", "liger"],
                    help="train.loss_kernel of the tuneline variant")
    ap.add_argument("--flatten-baseline", action="store_true",
                    help="also run transformers' padding-free DataCollatorWithFlattening baseline")
    ap.add_argument("--rows", type=int, default=4000, help="synthetic rows (GPU mode)")
    ap.add_argument("--out", type=Path, default=Path("bench/.cache/train_throughput"))
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args()

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, target_modules=["q_proj", "v_proj"],
                      task_type="CAUSAL_LM")
    if args.cpu:
        args.steps, args.batch = args.steps or 20, args.batch or 4
        args.max_length = args.max_length or 512
        rows, base = demo_rows(Path.cwd(), args.max_length)
        pad_id = 0

        def model_fn() -> Any:
            torch.manual_seed(0)
            m = AutoModelForCausalLM.from_pretrained(base, attn_implementation=args.attn)
            return get_peft_model(m, lora)
    else:
        args.steps, args.batch = args.steps or 30, args.batch or 8
        args.max_length = args.max_length or 2048
        rows = synthetic_rows(args.rows, args.max_length, GPU_MODEL["vocab_size"], seed=0)
        pad_id = 0
        config = LlamaConfig(**GPU_MODEL)

        def model_fn() -> Any:
            torch.manual_seed(0)
            with torch.device("cuda"):
                m = AutoModelForCausalLM.from_config(
                    config, dtype=torch.bfloat16, attn_implementation=args.attn
                )
            return get_peft_model(m, lora)

    results = {"device": torch.cuda.get_device_name(0) if args.gpu else platform.processor() or "cpu",
               "torch": torch.__version__, "attn": args.attn, "steps": args.steps, "batch": args.batch,
               "max_length": args.max_length, "rows": len(rows), "compile": args.compile,
               "loss_kernel": args.loss_kernel, "variants": []}
    names = ("baseline", "flatten", "tuneline") if args.flatten_baseline else ("baseline", "tuneline")
    for name in names:
        results["variants"].append(run_variant(name, model_fn, rows, args, pad_id))
        print(json.dumps(results["variants"][-1]), flush=True)
    by = {v["variant"]: v for v in results["variants"]}
    t = by["tuneline"]
    results["speedup_useful_tokens_per_s"] = t["useful_tokens_per_s"] / by["baseline"]["useful_tokens_per_s"]
    if "flatten" in by:
        results["speedup_vs_flatten"] = t["useful_tokens_per_s"] / by["flatten"]["useful_tokens_per_s"]
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
