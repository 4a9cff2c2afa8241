"""Training throughput: packed vs padded batches, and LoRA vs full fine-tuning.

Two comparisons, each in one run on the same model, rows, batch and number of optimizer steps:

**Packing** (default): the same LoRA (r=8, alpha=16, q_proj/v_proj), only batching differs:

- baseline: the plain transformers recipe: `Trainer` + `DataCollatorForSeq2Seq` (each batch padded to
  its longest row, attention mask);
- tuneline: `tuneline.train.packing` (best-fit decreasing packing to max_length, positions restart
  per row, no attention across rows) through tuneline's trainer class.

**Methods** (`--methods`): LoRA (`train.lora`'s defaults, r=8, alpha=16, dropout 0.05, q_proj/v_proj,
through `tuneline.train.lora.prepare_model`) against full fine-tuning of the same model, both packed
through tuneline's trainer class with AdamW. Each variant runs in its own process, so its peak memory
is its own: on CPU the process's peak RSS (ru_maxrss) minus its RSS just before the model was built,
on a GPU `torch.cuda.max_memory_allocated`. Beside the peaks, the bytes of the real tensors after
training (weights, gradients, optimizer states) and what `tuneline plan` estimates for the same
configuration (`tuneline.train.lora_vs_full`). On CPU the model is a Llama built from a config with
random weights, fp32 (`--hidden/--layers/--vocab`); on a GPU TinyLlama-1.1B's shape, where LoRA keeps
the frozen base in bf16 and full fine-tuning keeps fp32 master weights under bf16 autocast (as
`tuneline train` loads them).

Reported per variant: useful (real, non-pad) tokens/s, useful-token fraction, step time, peak memory,
and on a GPU the model FLOPs utilization: (4 N per useful token for LoRA, i.e. forward 2N and
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
    # LoRA vs full fine-tuning (CPU: a 34M-parameter Llama from a config; GPU: TinyLlama's shape)
    OMP_NUM_THREADS=1 .venv/bin/python bench/train_throughput.py --cpu --methods
    python bench/train_throughput.py --gpu --methods --steps 30 --batch 8

Results: bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import report_results

os.environ.setdefault("TUNELINE_PROGRESS", "0")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from tuneline.lm.batching import TokenCounter  # noqa: E402
from tuneline.lm.labels import IGNORE_INDEX  # noqa: E402
from tuneline.train.packing import collate_packed, pack_rows  # noqa: E402

PEAK_BF16 = 989e12  # H100 / H200 SXM dense BF16 tensor FLOP/s
GPU_MODEL = {  # TinyLlama-1.1B's shape: 1.10 B parameters
    "hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22, "num_attention_heads": 32,
    "num_key_value_heads": 4, "vocab_size": 32000, "max_position_embeddings": 4096,
}
METHODS = ("lora", "full")


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


def flops_per_step(
    batches: list[list[list[int]]], n_params: int, layers: int, hidden: int, per_param: int = 4
) -> float:
    """Training FLOPs of the given rows (segments = per-row lengths inside each sequence): `per_param`
    FLOPs per parameter and token, 4 for LoRA (no weight gradients of the frozen base), 6 for full."""
    tokens = sum(sum(seg) for b in batches for seg in b)
    attention = sum(12 * layers * hidden * s * s / 2 for b in batches for seg in b for s in seg)
    return (per_param * n_params * tokens + attention) / len(batches)


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


def rss_bytes() -> int:
    """This process's resident memory now (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def tensor_bytes(model: Any, optimizer: Any) -> dict[str, int]:
    """Bytes of the real tensors after training: weights, gradients (one per trainable weight, as the
    trainer frees them between steps) and optimizer states."""
    params = list(model.parameters())
    states = [v for st in optimizer.state.values() for v in st.values() if hasattr(v, "element_size")]
    return {
        "weights": sum(p.numel() * p.element_size() for p in params),
        "gradients": sum(p.numel() * p.element_size() for p in params if p.requires_grad),
        "optimizer": sum(v.numel() * v.element_size() for v in states),
    }


def run_variant(name: str, model_fn: Any, rows: list[dict], args: argparse.Namespace, pad_id: int) -> dict:
    import torch
    from transformers import Trainer, TrainingArguments

    from tuneline.train.trainer import Rows, _trainer_class

    gpu = torch.cuda.is_available() and not args.cpu
    rss_before = rss_bytes()
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
        learning_rate=2e-5 if name == "full" else 2e-4, max_steps=args.steps, logging_steps=args.steps,
        save_strategy="no",
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
    out = {"variant": name, "steps_timed": len(steps), "median_step_s": step_s, "step_times": steps,
           "useful_tokens_per_s": useful_per_step / step_s, "useful_fraction": counter.useful_fraction,
           "sequences": len(dataset)}
    if gpu:
        base = model if name == "full" else model.get_base_model()
        n = sum(p.numel() for p in base.parameters())
        cfg = base.config
        per_param = 6 if name == "full" else 4  # full also computes the weight gradients (2N)
        flops = flops_per_step(timed, n, cfg.num_hidden_layers, cfg.hidden_size, per_param)
        out["mfu"] = flops / step_s / PEAK_BF16
        out["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
    if name in METHODS:
        out["trainable_params"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
        out["params"] = sum(p.numel() for p in model.parameters())
        out["optim"] = str(targs.optim)
        out["tensor_bytes"] = tensor_bytes(model, trainer.optimizer)
        if not gpu:  # ru_maxrss: KiB on Linux; the process's peak since it started
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            out["peak_rss_bytes"], out["rss_before_model_bytes"] = peak, rss_before
            out["peak_delta_bytes"] = peak - rss_before
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


def cpu_model_config(args: argparse.Namespace) -> dict[str, Any]:
    """A Llama big enough on CPU for optimizer states to matter (34M parameters at the defaults)."""
    return {"hidden_size": args.hidden, "intermediate_size": args.hidden * 8 // 3 // 32 * 32 + 32,
            "num_hidden_layers": args.layers, "num_attention_heads": args.hidden // 64,
            "num_key_value_heads": args.hidden // 64, "vocab_size": args.vocab,
            "max_position_embeddings": max(2048, args.max_length), "tie_word_embeddings": False}


def method_model_fn(args: argparse.Namespace, method: str) -> Any:
    """Build the model for `method` as `tuneline train` would: LoRA via `prepare_model`, or the full base."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from tuneline.config import Config
    from tuneline.train.lora import prepare_model

    params = Config.model_validate({"train": {"method": method}}).train
    shape = GPU_MODEL if args.gpu else cpu_model_config(args)
    # LoRA: frozen base in the compute dtype; full: fp32 master weights (bf16 autocast on a GPU)
    dtype = torch.bfloat16 if args.gpu and method == "lora" else torch.float32

    def model_fn() -> Any:
        torch.manual_seed(0)
        with torch.device("cuda" if args.gpu else "cpu"):
            m = AutoModelForCausalLM.from_config(LlamaConfig(**shape), dtype=dtype,
                                                 attn_implementation=args.attn)
        return prepare_model(m, params)

    return model_fn


def plan_estimate(args: argparse.Namespace) -> dict[str, Any]:
    """What `tuneline plan` estimates for this comparison (same model, precision, batch and length)."""
    from transformers import LlamaConfig

    from tuneline.config.train import LoraParams
    from tuneline.train.lora_vs_full import compare_methods
    from tuneline.train.memory import model_shape

    shape = model_shape(LlamaConfig(**(GPU_MODEL if args.gpu else cpu_model_config(args))))
    c = compare_methods(shape, LoraParams(), "bf16" if args.gpu else "fp32", 0, 1, args.batch,
                        args.max_length, args.checkpointing, "cpu")
    return c.to_dict()


def run_methods(args: argparse.Namespace) -> dict[str, Any]:
    """LoRA and full fine-tuning, each run in a fresh process of this script (`--only`), `--repeat` times
    in the order LoRA, full, full, LoRA, ... so that a drift of a shared machine's load over minutes falls
    on both alike; step times of all runs are pooled, the peak is the highest of the runs."""
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in METHODS}
    for r in range(args.repeat):
        for method in METHODS if r % 2 == 0 else METHODS[::-1]:
            with tempfile.TemporaryDirectory() as tmp:
                result = Path(tmp) / "result.json"
                cmd = [sys.executable, __file__, *sys.argv[1:], "--only", method, "--result", str(result)]
                subprocess.run(cmd, check=True)
                runs[method].append(json.loads(result.read_text()))
            print(json.dumps(runs[method][-1]), flush=True)
    out = {m: pooled(runs[m]) for m in METHODS}
    lo, full = out["lora"], out["full"]
    ratios = {"median_step_s": lo["median_step_s"] / full["median_step_s"],
              "useful_tokens_per_s": lo["useful_tokens_per_s"] / full["useful_tokens_per_s"]}
    for key in ("peak_delta_bytes", "peak_mem_gib"):
        if key in lo:
            ratios[key] = lo[key] / full[key]
    for key in lo["tensor_bytes"]:
        ratios[f"{key}_bytes"] = lo["tensor_bytes"][key] / max(1, full["tensor_bytes"][key])
    return {"variants": [lo, full], "ratios_lora_over_full": ratios, "plan_estimate": plan_estimate(args),
            "repeat": args.repeat}


def pooled(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One method's runs as one: the median of every timed step, the highest peak, each run kept."""
    first = runs[0]
    tokens_per_step = first["useful_tokens_per_s"] * first["median_step_s"]  # same rows and steps each run
    times = sorted(t for r in runs for t in r["step_times"])
    step_s = times[len(times) // 2]
    out = {**first, "steps_timed": len(times), "median_step_s": step_s, "step_times": times,
           "useful_tokens_per_s": tokens_per_step / step_s, "runs": runs}
    for key in ("peak_delta_bytes", "peak_mem_gib"):
        if key in first:
            out[key] = max(r[key] for r in runs)
    return out


def methods_table(results: dict[str, Any]) -> str:
    """The markdown table of bench/RESULTS.md: measured peaks and tensors beside the plan's estimate."""
    mb, gib = 1e6, 2**30
    est = results["plan_estimate"]
    peak_key = "peak_mem_gib" if "peak_mem_gib" in results["variants"][0] else "peak_delta_bytes"
    head = ["variant", "trainable", "step s", "useful tokens/s", "peak MB", "weights MB", "grads MB",
            "optimizer MB", "plan: states MB", "plan: activations MB"]
    rows = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    cells: dict[str, list[float]] = {}
    for v in results["variants"]:
        e, t = est[v["variant"]]["memory"], v["tensor_bytes"]
        peak = v[peak_key] * (gib if peak_key == "peak_mem_gib" else 1)
        states = (e["weights"] + e["gradients"] + e["optimizer"]) * gib
        c = cells[v["variant"]] = [
            v["median_step_s"], v["useful_tokens_per_s"], peak / mb, t["weights"] / mb, t["gradients"] / mb,
            t["optimizer"] / mb, states / mb, e["activations"] * gib / mb,
        ]
        rows.append(f"| {v['variant']} | {v['trainable_params']:,} | {c[0]:.3f} | {c[1]:,.0f} | "
                    + " | ".join(f"{x:,.1f}" for x in c[2:]) + " |")
    ratio = [a / b if b else float("nan") for a, b in zip(cells["lora"], cells["full"], strict=True)]
    rows.append("| **LoRA / full** | | " + " | ".join(f"**{r:.2f}**" if i < 3 else f"{r:.3f}"
                                                  for i, r in enumerate(ratio)) + " |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--cpu", action="store_true", help="demo base on the demo train split, fp32 on CPU")
    mode.add_argument("--gpu", action="store_true", help="~1.1B Llama from a config, bf16, LoRA")
    ap.add_argument("--methods", action="store_true", help="LoRA vs full fine-tuning instead of packing")
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
    ap.add_argument("--rows", type=int, default=4000, help="synthetic rows (GPU mode, --methods)")
    ap.add_argument("--hidden", type=int, default=512, help="--cpu --methods: hidden size")
    ap.add_argument("--layers", type=int, default=8, help="--cpu --methods: decoder layers")
    ap.add_argument("--vocab", type=int, default=8192, help="--cpu --methods: vocabulary")
    ap.add_argument("--repeat", type=int, default=2, help="--methods: runs of each method (LoRA, full, full, "
                    "LoRA, ...); step times pooled")
    ap.add_argument("--only", choices=METHODS, help=argparse.SUPPRESS)  # one --methods variant, in-process
    ap.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=Path("bench/.cache/train_throughput"))
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args()

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    if args.methods:
        args.steps, args.batch = args.steps or (12 if args.cpu else 30), args.batch or (4 if args.cpu else 8)
        args.max_length = args.max_length or (256 if args.cpu else 2048)
        if args.only:
            vocab = args.vocab if args.cpu else GPU_MODEL["vocab_size"]
            rows = synthetic_rows(args.rows, args.max_length, vocab, seed=0)
            res = run_variant(args.only, method_model_fn(args, args.only), rows, args, pad_id=0)
            args.result.write_text(json.dumps(res))
            return
        results = {"device": torch.cuda.get_device_name(0) if args.gpu else platform.processor() or "cpu",
                   "torch": torch.__version__, "attn": args.attn, "steps": args.steps, "batch": args.batch,
                   "max_length": args.max_length, "checkpointing": args.checkpointing,
                   "model": GPU_MODEL if args.gpu else cpu_model_config(args), **run_methods(args)}
        report_results(results, args.json)
        print(methods_table(results))
        return
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
    report_results(results, args.json)


if __name__ == "__main__":
    main()
