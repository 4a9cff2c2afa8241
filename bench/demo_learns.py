"""Does the demo learn? The candidate against the base on the held-out test split, and the gate against a
deliberately crippled candidate.

1. Reads `reports/evaluate.json` of the last `make run` and prints, overall and per category, the base's and
   the candidate's ROUGE-L, exact match, never-stop rate and schema-valid rate, with the issue's targets
   checked (identity ROUGE-L >= 0.5 vs <= 0.15; schema-valid >= 0.9 vs <= 0.2; overall ROUGE-L >= 2x the
   base's; candidate never-stop <= 0.05; the gate's ROUGE-L margin >= 0.05).
2. `--crippled`: copies the workspace's inputs (splits, base, params, registry) into a temporary folder and
   runs `tuneline train --set train.lr=1e-9`, `evaluate` and `promote` there: the gate must refuse and name
   the criterion. The workspace itself is not touched.

    .venv/bin/python bench/demo_learns.py [--crippled] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import save_results

ROOT = Path(__file__).resolve().parents[1]
METRICS = ("rouge_l", "exact_match", "never_stop_rate", "json_valid_rate")


def fmt(value: Any) -> str:
    return "–" if value is None else f"{value:.3f}"


def table(evaluation: dict[str, Any]) -> list[str]:
    variants = evaluation["variants"]
    rows = [("overall", variants["base"], variants["candidate"])]
    per = evaluation["per_category"]
    rows += [(name, per["base"][name], per["candidate"][name]) for name in sorted(per["candidate"])]
    head = "| category | rows | " + " | ".join(f"{m} base → candidate" for m in METRICS) + " |"
    lines = [head, "|" + "---|" * (2 + len(METRICS))]
    for name, base, cand in rows:
        cells = [f"{fmt(base.get(m))} → {fmt(cand.get(m))}" for m in METRICS]
        lines.append(f"| {name} | {cand['rows']} | " + " | ".join(cells) + " |")
    return lines


def targets(evaluation: dict[str, Any], promote: dict[str, Any] | None) -> dict[str, bool]:
    base, cand = evaluation["variants"]["base"], evaluation["variants"]["candidate"]
    ident = (evaluation["per_category"]["base"].get("identity", {}),
             evaluation["per_category"]["candidate"].get("identity", {}))
    out = {
        "identity ROUGE-L >= 0.5 vs base <= 0.15":
            (ident[1].get("rouge_l") or 0) >= 0.5 and (ident[0].get("rouge_l") or 1) <= 0.15,
        "schema-valid >= 0.9 vs base <= 0.2":
            (cand.get("json_valid_rate") or 0) >= 0.9 and (base.get("json_valid_rate") or 0) <= 0.2,
        "overall ROUGE-L >= 2x base": cand["rouge_l"] >= 2 * base["rouge_l"],
        "candidate never-stop <= 0.05": (cand.get("never_stop_rate") or 0) <= 0.05,
    }
    if promote is not None:
        rows = [r for r in promote.get("decision", {}).get("rows", []) if r.get("criterion") == "beats_base"]
        margin = cand["rouge_l"] - base["rouge_l"]
        passed = bool(rows) and bool(rows[0].get("passed"))
        out["gate passes on ROUGE-L with margin >= 0.05"] = passed and margin >= 0.05
    return out


def crippled(workdir: Path) -> dict[str, Any]:
    """train (lr 1e-9) -> evaluate -> promote on a copy of the workspace's inputs; the gate's verdict."""
    for rel in ("params.yaml", "data/processed", "data/eval", "data/schemas", "models/base", "reports",
                "mlflow.db", "mlruns"):
        src = ROOT / rel
        if src.is_dir():
            shutil.copytree(src, workdir / rel)
        elif src.exists():
            (workdir / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, workdir / rel)
    env = {**os.environ, "TUNELINE_PROGRESS": "0"}
    tool = str(ROOT / ".venv" / "bin" / "tuneline")
    for verb in ("train", "evaluate", "promote"):
        subprocess.run([tool, verb, "--set", "train.lr=1e-9"], cwd=workdir, env=env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    report = json.loads((workdir / "reports" / "promote.json").read_text())
    decision = report["decision"]
    return {"promoted": report["result"].get("promoted"), "status": report["result"].get("status"),
            "failed": decision.get("failed"), "reason": report["result"].get("reason")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--crippled", action="store_true", help="also check that the gate refuses a crippled one")
    ap.add_argument("--json", type=Path, help="write the numbers here")
    args = ap.parse_args()
    evaluation = json.loads((ROOT / "reports" / "evaluate.json").read_text())
    promote_file = ROOT / "reports" / "promote.json"
    promote = json.loads(promote_file.read_text()) if promote_file.exists() else None
    print("\n".join(table(evaluation)))
    checks = targets(evaluation, promote)
    for name, ok in checks.items():
        print(f"{'PASS' if ok else 'MISS'}  {name}")
    out: dict[str, Any] = {"variants": evaluation["variants"], "targets": checks}
    if args.crippled:
        started = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="tuneline-crippled-") as tmp:
            out["crippled"] = crippled(Path(tmp))
        out["crippled"]["seconds"] = round(time.perf_counter() - started, 1)
        print(f"crippled candidate (train.lr=1e-9): {out['crippled']}")
    save_results(out, args.json)
    sys.exit(0 if all(checks.values()) else 1)


if __name__ == "__main__":
    main()
