"""Peak memory (and time) of the causal-LM loss: plain full logits against `train.loss_kernel: chunked`.

One process per variant, one at a time, on the same inputs (seeded): final hidden states `[tokens,
hidden]` that need gradients, a frozen output layer `[vocab, hidden]` (LoRA) or a trainable one
(`--trainable-head`, full fine-tuning), and SFT-like labels (`--supervised` of the tokens have a target,
the rest -100). Each variant computes the loss and its backward pass:

- plain: `lm_head(hidden)` then transformers' `ForCausalLMLoss` (upcast, shift, cross-entropy), as the
  model does;
- chunked: `tuneline.train.loss.linear_cross_entropy` on the shifted labels (what `LossKernel` runs).

Reported per variant: the rise of the process's peak RSS over its RSS just before the loss (inputs
already allocated), wall time of forward + backward, the loss, and the gradient's max difference from
plain (the same run's plain variant is the baseline).

    OMP_NUM_THREADS=1 python bench/loss_memory.py                 # 8k tokens x 32k vocab, hidden 2048
    OMP_NUM_THREADS=1 python bench/loss_memory.py --tokens 16384 --trainable-head
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

from common import report_results

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def _rss_mib() -> float:
    with open("/proc/self/statm", encoding="ascii") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _inputs(args: argparse.Namespace) -> tuple:
    import torch

    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(1, args.tokens, args.hidden, generator=gen).requires_grad_(True)
    weight = (torch.randn(args.vocab, args.hidden, generator=gen) * args.hidden ** -0.5)
    weight.requires_grad_(args.trainable_head)
    labels = torch.randint(0, args.vocab, (1, args.tokens), generator=gen)
    labels[torch.rand(1, args.tokens, generator=gen) >= args.supervised] = -100
    return hidden, weight, labels


def run_variant(args: argparse.Namespace) -> dict:
    """One variant in this process (the parent starts one process per variant)."""
    import torch
    from transformers.loss.loss_utils import ForCausalLMLoss

    from tuneline.train.loss import linear_cross_entropy

    hidden, weight, labels = _inputs(args)
    before = _rss_mib()
    began = time.perf_counter()
    if args.variant == "plain":
        logits = torch.nn.functional.linear(hidden, weight)
        loss = ForCausalLMLoss(logits, labels, vocab_size=args.vocab)
    else:
        shifted = torch.nn.functional.pad(labels, (0, 1), value=-100)[..., 1:]
        total, count = linear_cross_entropy(hidden, weight, shifted)
        loss = total / count
    loss.backward()
    seconds = time.perf_counter() - began
    out = {"variant": args.variant, "loss": float(loss), "seconds": seconds,
           "peak_rise_mib": _peak_mib() - before, "rss_before_mib": before}
    torch.save({"hidden": hidden.grad, "weight": weight.grad}, args.grads)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=8192, help="tokens in the batch (all sequences together)")
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--supervised", type=float, default=0.6, help="fraction of tokens with a target")
    ap.add_argument("--trainable-head", action="store_true", help="the output layer trains (full FT)")
    ap.add_argument("--out", type=Path, default=Path("bench/.cache/loss_memory"))
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument("--variant", choices=["plain", "chunked"], help=argparse.SUPPRESS)
    ap.add_argument("--grads", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args)), flush=True)
        return

    import torch

    args.out.mkdir(parents=True, exist_ok=True)
    common = [f"--tokens={args.tokens}", f"--vocab={args.vocab}", f"--hidden={args.hidden}",
              f"--supervised={args.supervised}"] + (["--trainable-head"] if args.trainable_head else [])
    variants, grads = [], {}
    for variant in ("plain", "chunked"):
        path = args.out / f"grads-{variant}.pt"
        done = subprocess.run([sys.executable, __file__, *common, f"--variant={variant}", f"--grads={path}"],
                              check=True, capture_output=True, text=True)
        variants.append(json.loads(done.stdout.strip().splitlines()[-1]))
        grads[variant] = torch.load(path)
        print(json.dumps(variants[-1]), flush=True)
    plain, chunked = variants
    diff = {k: float((grads["chunked"][k] - grads["plain"][k]).abs().max())
            for k in ("hidden", "weight") if grads["plain"][k] is not None}
    results = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "tokens": args.tokens, "vocab": args.vocab, "hidden": args.hidden, "supervised": args.supervised,
        "trainable_head": args.trainable_head,
        "logits_fp32_mib": args.tokens * args.vocab * 4 / 2**20,
        "variants": variants,
        "peak_rise_ratio_plain_over_chunked": plain["peak_rise_mib"] / max(1.0, chunked["peak_rise_mib"]),
        "time_ratio_plain_over_chunked": plain["seconds"] / chunked["seconds"],
        "loss_abs_diff": abs(plain["loss"] - chunked["loss"]),
        "grad_max_abs_diff": diff,
    }
    report_results(results, args.json)


if __name__ == "__main__":
    main()
