"""Each training process started by torchrun / deepspeed runs `python -m tuneline.train.worker --job F`.

The job file (written by `run_attempt`) holds the config, the plan and the tokenized rows. Every
rank trains; rank 0 writes the result file. A CUDA out-of-memory exits with `OOM_EXIT` after rank 0
records it, so the parent can back off and resume.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from tuneline.config.loader import Config
from tuneline.jsonio import write_json
from tuneline.redact import install_log_redaction
from tuneline.train.distributed import is_main_process
from tuneline.train.plan import Plan


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tuneline.train.worker", description=__doc__)
    parser.add_argument("--job", type=Path, required=True, help="job file written by the train stage")
    parser.add_argument("--local_rank", type=int, default=None, help="set by the deepspeed launcher")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    install_log_redaction()

    import torch  # lazy: torch ~9 s; the worker's `--help` answers without it

    from tuneline.train.run_attempt import (  # lazy: torch ~9 s; the worker's `--help` answers without it
        OOM_EXIT,
        Attempt,
        OutOfMemory,
        outcome_json,
        train_here,
    )

    job = json.loads(args.job.read_text(encoding="utf-8"))
    cfg = Config.model_validate(job["config"])
    plan = Plan.from_dict(job["plan"])
    attempt = Attempt(cfg=cfg, plan=plan, model_path=job["model_path"], train_rows=job["train_rows"],
                      val_rows=job["val_rows"], checkpoints=Path(job["checkpoints"]),
                      save_to=Path(job["save_to"]), work=Path(job["work"]),
                      tracking_uri=job["tracking_uri"], run_id=job["run_id"], node_rank=job.get("node_rank"))
    result = Path(job["result"])
    try:
        outcome = train_here(attempt, plan)
    except OutOfMemory as exc:
        write_json(result.with_name(f"oom.rank{os.environ.get('RANK', '0')}.json"), {"error": str(exc)})
        if is_main_process():
            write_json(result, {"status": "oom", "error": str(exc)})
        return OOM_EXIT
    if is_main_process():
        write_json(result, outcome_json(outcome))
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
