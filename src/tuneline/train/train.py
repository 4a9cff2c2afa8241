"""`tuneline train`: fine-tune the base model on the train split, validated on val, tracked in MLflow.

The stage, in the parent process:

1. reads train and val, renders and tokenizes them once (`token_cache`: a rerun re-tokenizes
   nothing), and makes the plan (`make_plan`: lr, warm-up, schedule, max length, batch split,
   precision, ZeRO stage) from the measured token lengths;
2. builds assistant-only labels, truncates to the plan's max length, packs rows (`packing`);
3. opens one MLflow run (flat params, lineage tags) and trains: in this process on one device, or
   in N worker processes started by torchrun / deepspeed (`distributed`) that read the prepared rows;
4. on CUDA out-of-memory halves the per-device batch, doubles accumulation, turns on gradient
   checkpointing and resumes from the last checkpoint (at most `train.oom_retries` times);
5. writes the adapter, `reports/train.json` (DVC metrics), `reports/train_health.json` (the health
   monitor's alerts) and `reports/train_curves.html` (loss and LR curves).

Checkpoints live in `.tuneline/checkpoints/<run key>`; the key covers params, data and base model,
so a rerun after a crash (even kill -9) resumes its own run and never someone else's, and ends with
the history, the report and the adapter (byte for byte) of an uninterrupted run. While it runs, the
stage holds its output's lock (`recovery`): the rerun removes the work folder of the killed attempt
and marks its MLflow run KILLED. A run stopped by the health monitor (NaN loss) writes its diagnosis,
marks the MLflow run failed and writes no adapter.

`_run` is the recipe; the run key, the MLflow run, the work folder and the final metrics are its
bookkeeping (`bookkeeping`).
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneline.config.loader import Config
from tuneline.errors import ConfigError, InputFileError, TunelineError
from tuneline.jsonio import write_json
from tuneline.layout import Layout
from tuneline.lm.labels import build_rows
from tuneline.lm.load import save_chat_format
from tuneline.lm.source import resolve_model_path
from tuneline.outdirs import check_replaceable, inside_workspace
from tuneline.splits import read_split
from tuneline.train.bookkeeping import (
    OUTPUT_SETTING,
    RunKey,
    TrackedRun,
    finish_run,
    fresh_work_dir,
    open_run,
    publish,
    run_facts,
    run_key,
    tokens_per_second,
)
from tuneline.train.chat_rows import chat_format_for, write_rejected
from tuneline.train.curves import write_curves
from tuneline.train.distributed import check_rendezvous
from tuneline.train.loss import loss_kernel_for
from tuneline.train.outputs import sort_target_modules, train_report
from tuneline.train.packing import pack_rows
from tuneline.train.plan import Plan, backoff, make_plan
from tuneline.train.recovery import OutputClaim, claim_output
from tuneline.train.run_attempt import Attempt, Outcome, OutOfMemory, run_attempt, run_node
from tuneline.train.token_cache import tokenize_split

logger = logging.getLogger(__name__)

SUMMARY = "train_summary.json"


class TrainingError(TunelineError):
    """Training stopped without a usable model (non-finite loss, out of memory after every back-off)."""

    exit_code = 5


def run(cfg: Config, layout: Layout, node_rank: int | None = None) -> dict:
    """The `train` stage; see the module docstring.

    Many nodes (`train.num_nodes` > 1): run the stage on every node with the same config, splits and base
    model (the same workspace paths: a shared filesystem, or a clone with `dvc pull`), each with its
    `node_rank`. Node 0 (`node_rank` 0 or None, at `train.master_addr`) owns the run: the output lock,
    MLflow, checkpoints' cleanup, the adapter and the reports. Every other node prepares the same rows
    and plan, starts its workers into the rendezvous and writes nothing (`follow`). With a DeepSpeed
    hostfile and no `node_rank`, node 0 alone starts every node over ssh.

    Args:
        cfg: the whole config.
        layout: the workspace.
        node_rank: this node's rank in a many-node run; None: node 0 (and, for a hostfile, ssh launch).

    Returns:
        The report (also written to reports/train.json); on a node other than 0, `follow`'s summary.

    Raises:
        InputFileError: a split is missing or empty, or no row has an answer token.
        ConfigError: the model or its chat template cannot serve (no template, no generation block,
            LoRA targets not found).
        PlanError: the plan does not fit the device.
        TrainingError: the health monitor stopped the run, or memory ran out after every back-off.
        OutputPathError: train.output_dir is outside the workspace, or holds files tuneline did not write
            (checked before any training).
        OutputBusy: another `tuneline train` writing the same output is running.
    """
    nodes = cfg.train.num_nodes
    if node_rank is not None and not 0 <= node_rank < nodes:
        raise ConfigError(f"node rank {node_rank} is outside 0..{nodes - 1} (train.num_nodes {nodes})")
    check_rendezvous(cfg.train)  # before tokenizing and the MLflow run, not at launch
    if node_rank:
        return follow(cfg, layout, node_rank)
    out = inside_workspace(layout.root, cfg.train.output_dir, OUTPUT_SETTING, cfg.allow_outside_workspace)
    check_replaceable(out, OUTPUT_SETTING)
    with claim_output(layout.root, out) as claim:
        return _run(cfg, layout, claim, node_rank)


def follow(cfg: Config, layout: Layout, node_rank: int) -> dict:
    """Node `node_rank` (> 0) of a many-node run: prepare what node 0 prepares and start this node's workers.

    The rows, the plan and the checkpoint folder come out the same as node 0's (`prepare` is deterministic),
    so the workers here join node 0's rendezvous with the same job; node 0's rank-0 worker writes every
    output. This node writes only its job file, in a temporary folder it removes afterwards. Resuming
    needs the checkpoint folder on a filesystem every node sees (each rank reads its own optimizer and
    RNG state from it).

    Returns:
        {"node_rank", "world_size", "steps": None} (the numbers are in node 0's report).

    Raises:
        TunelineError: the workers of this node failed (out of memory included: node 0 stops too, rerun
            every node with a smaller train.per_device_batch).
    """
    prep = prepare(cfg, layout, write_rejected_rows=False)
    with tempfile.TemporaryDirectory(prefix=f"tuneline-train-node{node_rank}-") as tmp:
        work = Path(tmp)
        attempt = Attempt(cfg=cfg, plan=prep.plan, model_path=prep.model_path, train_rows=prep.train_rows,
                          val_rows=prep.val_rows, checkpoints=prep.key.checkpoints, save_to=work / "final",
                          work=work, tracking_uri=None, run_id=None, node_rank=node_rank)
        logger.info("train: node %d of %d joins the rendezvous at %s:%d", node_rank, cfg.train.num_nodes,
                    cfg.train.master_addr, cfg.train.master_port)
        try:
            run_node(attempt, prep.plan)
        except OutOfMemory as exc:
            raise TrainingError(
                f"node {node_rank}: out of GPU memory: {exc}; rerun every node with a smaller "
                "train.per_device_batch (it resumes from the last checkpoint)"
            ) from None
    return {"node_rank": node_rank, "world_size": prep.plan.world_size, "steps": None}


@dataclass
class Prepared:
    """What every node derives alike from the config and the splits, before any process starts."""

    plan: Plan
    model_path: str
    chat: Any
    template_source: str
    train_enc: Any
    val_enc: Any
    train_rows: list[dict[str, Any]]
    val_rows: list[dict[str, Any]]
    key: RunKey  # params and data hashes, the checkpoint folder
    rejected: dict[str, Any]
    tokens_cached: bool
    loss_kernel: str  # `train.loss_kernel` resolved for this device and plan


def prepare(cfg: Config, layout: Layout, write_rejected_rows: bool = True) -> Prepared:
    """Read and tokenize the splits (token cache), make the plan, build labels and pack rows; the run key.

    Deterministic: every node of a many-node run prepares the same rows, plan and checkpoint folder from
    the same config, splits and base model. Only node 0 writes the rejected rows (`write_rejected_rows`).
    """
    train_path, val_path = layout.processed("train"), layout.processed("val")
    train_records, val_records = read_split(layout, "train"), read_split(layout, "val")
    model_path = resolve_model_path(cfg, layout)
    chat, template_source = chat_format_for(cfg, layout, model_path)
    tok_train = tokenize_split(chat, train_records, train_path, layout.root)
    tok_val = tokenize_split(chat, val_records, val_path, layout.root)
    splits = {"train": (train_records, tok_train.rejected), "val": (val_records, tok_val.rejected)}
    rejected = write_rejected(layout, splits) if write_rejected_rows else {"rows": 0}

    plan = make_plan(cfg, model_config=model_path, token_lengths=tok_train.lengths)
    # Resolved (or refused) here, before any GPU time.
    loss_kernel = loss_kernel_for(cfg.train.loss_kernel, plan.zero_stage, plan.backend)
    drop = cfg.train.long_rows == "drop"
    train_enc = build_rows(tok_train.record_ids, tok_train.ids, tok_train.masks, plan.max_length, drop)
    val_enc = build_rows(tok_val.record_ids, tok_val.ids, tok_val.masks, plan.max_length, drop)
    if not train_enc.rows or not val_enc.rows:
        why = f" ({rejected['summary']})" if rejected["rows"] else ""
        raise InputFileError(
            f"{train_path if not train_enc.rows else val_path}: no row has an answer token{why}"
        )
    packing = cfg.train.packing
    train_rows = pack_rows(train_enc.rows, plan.max_length) if packing else train_enc.rows
    val_rows = pack_rows(val_enc.rows, plan.max_length) if packing else val_enc.rows

    return Prepared(plan, model_path, chat, template_source, train_enc, val_enc, train_rows, val_rows,
                    run_key(cfg, layout, model_path), rejected, tok_train.from_cache and tok_val.from_cache,
                    loss_kernel)


def _run(cfg: Config, layout: Layout, claim: OutputClaim, node_rank: int | None) -> dict:
    """`run`, holding the output's lock: prepare, track, train, check, save, publish, report."""
    started = time.monotonic()
    prep = prepare(cfg, layout)
    tracked = open_run(cfg, layout, claim, prep.key, prep.plan, prep.loss_kernel)
    work = fresh_work_dir(claim.out, prep.key.checkpoints, cfg.train.resume)
    attempt = Attempt(cfg=cfg, plan=prep.plan, model_path=prep.model_path, train_rows=prep.train_rows,
                      val_rows=prep.val_rows, checkpoints=prep.key.checkpoints, save_to=work / "final",
                      work=work, tracking_uri=tracked.uri, run_id=tracked.run_id, node_rank=node_rank)
    outcome, plan = _train(attempt, tracked)
    _check_health(layout, outcome, tracked, work)
    report = _save_adapter(cfg, prep, plan, outcome, attempt.save_to)
    facts = run_facts(tracked, started, outcome, report, prep.tokens_cached)
    publish(attempt.save_to, claim.out, work, prep.key.checkpoints)
    finish_run(tracked, report, outcome)
    write_json(layout.report("train"), report)
    write_json(layout.report("train_run"), facts)
    _log_done(report, outcome, claim.out)
    return report


def _train(attempt: Attempt, tracked: TrackedRun) -> tuple[Outcome, Plan]:
    """`_train_with_backoff`; whatever stops it ends the MLflow run FAILED and removes the work folder."""
    try:
        return _train_with_backoff(attempt)
    except BaseException:
        tracked.end("FAILED")
        shutil.rmtree(attempt.work, ignore_errors=True)
        raise


def _check_health(layout: Layout, outcome: Outcome, tracked: TrackedRun, work: Path) -> None:
    """Write the health report and the curves; a run the monitor stopped (or without a val loss) fails.

    Raises:
        TrainingError: the health monitor stopped the run (the MLflow run ends FAILED, no adapter).
    """
    health = outcome.health
    write_json(layout.report("train_health"), health)
    write_curves(outcome.history, layout.report("train_curves", "html"), "tuneline train: loss and LR")
    if health.get("status") == "failed" or outcome.fit.val_best is None:
        tracked.end("FAILED", outcome.tags)
        shutil.rmtree(work, ignore_errors=True)
        diagnosis = health.get("diagnosis") or {}
        raise TrainingError(
            f"training stopped by the health monitor at step {diagnosis.get('step', '?')}: "
            f"{diagnosis.get('summary') or health.get('alerts')}; see {layout.report('train_health')}; "
            "no adapter was written"
        )


def _save_adapter(cfg: Config, prep: Prepared, plan: Plan, outcome: Outcome, final: Path) -> dict:
    """Complete the adapter folder (sorted config, chat format, summary); returns the report."""
    sort_target_modules(final / "adapter_config.json")
    train_enc, val_enc = prep.train_enc, prep.val_enc
    report = train_report(cfg, plan, train_enc, val_enc, outcome.fit, outcome.history, prep.key.p_hash,
                          prep.key.data_hash, len(prep.train_rows), len(prep.val_rows), outcome.counts)
    report["health_status"] = outcome.health.get("status")
    report["chat_template"] = prep.template_source
    report["stop_ids"] = prep.chat.stop_ids
    report["rejected"] = prep.rejected
    save_chat_format(final, prep.chat, prep.template_source)
    # The adapter directory (a DVC output) holds only what the training determines, so a rerun of the
    # same inputs yields the same hash; wall time, the MLflow run id and the commit go to train_run.json.
    write_json(final / SUMMARY, {**report, "plan": plan.to_dict(), "history": outcome.history,
                                 "dropped_ids": train_enc.dropped_no_target,
                                 "dropped_too_long_ids": train_enc.dropped_too_long})
    return report


def _log_done(report: dict, outcome: Outcome, out: Path) -> None:
    result = outcome.fit
    speed = tokens_per_second(report, result.train_seconds)
    logger.info(
        "train: %d steps in %.1fs (%.0f tokens/s, %.1f%% useful); train loss %.3f -> %.3f, "
        "val loss %.3f -> %.3f (best); adapter in %s", report["steps"], result.train_seconds,
        speed or 0.0, 100 * (report["useful_token_fraction"] or 0.0),
        report["train_loss_first"] or math.nan, report["train_loss_final"] or math.nan,
        result.val_before, report["val_loss_best"], out,
    )


def _train_with_backoff(attempt: Attempt) -> tuple[Outcome, Plan]:
    """Run the attempt; after a CUDA out-of-memory, back the plan off and resume (bounded)."""
    events: list[str] = []
    plan = attempt.plan
    # The other nodes of a many-node run started with this plan and cannot learn a backed-off one.
    retries = attempt.cfg.train.oom_retries if attempt.cfg.train.num_nodes == 1 else 0
    for _ in range(retries + 1):
        try:
            outcome = run_attempt(attempt, plan)
        except OutOfMemory as exc:
            smaller = backoff(plan)
            if smaller is None or len(events) >= retries:
                raise TrainingError(
                    f"out of GPU memory at per_device_batch {plan.per_device_batch} with gradient "
                    f"checkpointing {'on' if plan.gradient_checkpointing else 'off'} after {len(events)} "
                    f"back-off(s): {exc}; lower train.max_length or use a higher train.zero_stage"
                ) from None
            plan = smaller
            events.append(plan.adjustments[-1])
            logger.warning("train: %s; resuming from the last checkpoint", plan.adjustments[-1])
            continue
        outcome.oom_events = events
        return outcome, plan
    raise AssertionError("unreachable")  # the loop returns or raises
