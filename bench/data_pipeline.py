"""Throughput of the data half (everything except near-dup) in MB/s per core.

Generates a synthetic dirty corpus (English + Chinese, HTML / URLs / e-mails, duplicates), runs every data
stage through the same library code as `dvc repro`, with `dedup.near=false`, split's near-dup grouping
and the cross-split near-dup check off, in ONE process (one core), and reports each stage's MB/s against
a baseline measured in the same run: a plain stdlib `json` parse + re-serialize pass over the same file
(the floor every JSONL stage paid before tuneline's codec moved to orjson).

Times are CPU seconds of this process (`time.process_time`, the honest "per core" figure on a shared
machine) with wall seconds beside them. Great Expectations is imported once, before the stages, and shown
as its own row: under `dvc repro` each contract stage (validate_raw, validate_splits) pays it again.

    .venv/bin/python bench/data_pipeline.py --mb 200
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import random
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TUNELINE_PROGRESS", "0")

from tuneline.config import load_config  # noqa: E402
from tuneline.layout import Layout  # noqa: E402
from tuneline.stages import DATA_STAGES, run_stage  # noqa: E402

EN = ("the a model data train river city history learn quick answer question small large value number "
      "system user good bad write explain summary paper result method simple clear step first next "
      "because however therefore example market science music garden").split()
ZH = list("的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主"
          "发年动同工也能下过子说产种面而方后多定行学法所民得经十三之进着等部度家电力里如水化高自二理起小物现实加量都两体制机当使点从业本去把性")
DIRT = [" <p>see <b>this</b></p>", " visit https://example.com/page?id=7", " mail me: someone@example.org",
        " &amp; more", ""]


def make_row(rng: random.Random, i: int) -> dict:
    if rng.random() < 0.3:
        text = "".join(rng.choice(ZH) for _ in range(rng.randint(40, 200)))
        answer = "".join(rng.choice(ZH) for _ in range(rng.randint(60, 300)))
        cat = "zh"
    else:
        text = " ".join(rng.choice(EN) for _ in range(rng.randint(20, 80))).capitalize() + "?"
        answer = " ".join(rng.choice(EN) for _ in range(rng.randint(40, 160))).capitalize() + "."
        cat = rng.choice(["qa", "summary", "howto"])
    text += rng.choice(DIRT)
    return {"messages": [{"role": "user", "content": f"{text} ({i})"},
                         {"role": "assistant", "content": answer}], "category": cat}


def generate(path: Path, mb: float, seed: int = 0) -> int:
    rng = random.Random(seed)
    target = int(mb * 1_000_000)
    size = n = 0
    with path.open("w", encoding="utf-8") as fh:
        prev = None
        while size < target:
            row = prev if prev is not None and rng.random() < 0.02 else make_row(rng, n)  # 2 % exact dups
            line = json.dumps(row, ensure_ascii=False) + "\n"
            fh.write(line)
            size += len(line.encode("utf-8"))
            n += 1
            prev = row
    return n


def baseline(src: Path, dst: Path) -> tuple[float, float]:
    """Wall and CPU seconds of one stdlib JSON parse + re-serialize pass (canonical compact lines)."""
    wall, cpu = time.perf_counter(), time.process_time()
    with src.open(encoding="utf-8") as fin, dst.open("w", encoding="utf-8") as fout:
        for line in fin:
            row = json.loads(line)
            fout.write(json.dumps(row, ensure_ascii=False, allow_nan=False, separators=(",", ":")) + "\n")
    return time.perf_counter() - wall, time.process_time() - cpu


def timed(fn: Any) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=float, default=200, help="size of the synthetic corpus in MB")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        raw = root / "data" / "raw" / "bench.jsonl"
        raw.parent.mkdir(parents=True)
        rows = generate(raw, args.mb)
        mb = raw.stat().st_size / 1e6
        base = baseline(raw, root / "baseline.jsonl")
        cfg = load_config(None, [
            f"ingest.sources=[{{path: {raw}}}]", "dedup.near=false",
            "validate_splits.cross_split_near_dup=false", "split.group_near_duplicates=false",
            "split.eval_dir=null", f"validate_raw.min_rows={min(rows, 100)}",
        ])
        layout = Layout(root)
        gx = timed(lambda: importlib.import_module("great_expectations"))
        times = {stage: timed(lambda stage=stage: run_stage(stage, cfg, layout)) for stage in DATA_STAGES}
        rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    total = (gx[0] + sum(w for w, _ in times.values()), gx[1] + sum(c for _, c in times.values()))
    print(f"corpus: {rows} rows, {mb:.1f} MB; machine: {platform.machine()}, {os.cpu_count()} cores; "
          f"one process (OMP_NUM_THREADS=1); peak RSS {rss_gb:.2f} GB")
    print("| step | wall s | CPU s | MB/s/core (CPU) | vs JSON baseline |")
    print("|---|---:|---:|---:|---:|")

    def line(name: str, t: tuple[float, float], bold: bool = False, per_mb: bool = True) -> None:
        rate = f"{mb / t[1]:.2f}" if t[1] and per_mb else "-"
        ratio = f"{base[1] / t[1]:.2f}" if t[1] and per_mb else "-"
        b = "**" if bold else ""
        print(f"| {b}{name}{b} | {t[0]:.1f} | {t[1]:.1f} | {b}{rate}{b} | {ratio} |")

    line("baseline: stdlib JSON parse + write", base)
    line("import Great Expectations (once)", gx, per_mb=False)  # a fixed cost, not a rate
    for stage, t in times.items():
        line(stage, t)
    line("data half (no near-dup)", total, bold=True)

if __name__ == "__main__":
    main()
