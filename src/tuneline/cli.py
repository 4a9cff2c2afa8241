"""`tuneline` command line: one command per stage (a row of `tuneline.stages.STAGES`), `data` for any
files, `config show`, and the commands around the pipeline (serve, ab, feedback, lineage, plan, report).

Every command takes `--params FILE` (default: ./params.yaml when present, else built-in defaults) and
any number of `--set section.key=value` overrides.
"""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from tuneline.ab.cli import ab_app
from tuneline.cli_common import WORKSPACE, ParamsOpt, SetOpt, command, load
from tuneline.config import dump_config
from tuneline.data_half import run_data, workspace_report
from tuneline.feedback.cli import feedback_app
from tuneline.jsonio import write_json
from tuneline.lineage import lineage, render
from tuneline.run_report import run_report
from tuneline.serve.server import serve, vllm_recipe
from tuneline.stages import DATA_STAGES, STAGE, STAGES, Stage, run_stage
from tuneline.train import make_plan, render_plan

app = typer.Typer(
    help="tuneline: turn raw, dirty data into a fine-tuned, validated model without silent failures.\n\n"
    f"The data half runs as stages: {' -> '.join(DATA_STAGES)}. Run them all with `dvc repro`, one with "
    "`tuneline <stage>`, or on any files with `tuneline data --input PATH --output DIR`. Then "
    f"{' -> '.join(s.verb for s in STAGES if s.kind == 'model')} (the gate moves the registry alias). "
    "`tuneline serve` puts the champion and challenger behind an OpenAI-compatible API; `tuneline ab` "
    "judges them on live feedback; `tuneline feedback export` turns feedback into raw data for the next run.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
config_app = typer.Typer(help="Inspect the resolved configuration.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(ab_app, name="ab")
app.add_typer(feedback_app, name="feedback")


# ---------------------------------------------------------------- the stages: one command per row of STAGES
# A data stage's command is generic; a model stage adds its options and prints its one-line summary. The
# first line of a stage command's help is the table's description, the rest the body's docstring.


def _data_stage(stage: Stage) -> Callable[..., None]:
    def run(params: ParamsOpt = None, set_: SetOpt = None) -> None:
        """Reads and writes the workspace under ./data and ./reports."""
        run_stage(stage.verb, load(params, set_), WORKSPACE)

    return run


def build_base_command(params: ParamsOpt = None, set_: SetOpt = None) -> None:
    """Saves a Hugging Face model with safetensors, tokenizer and chat template to build_base.output_dir
    (default models/base), loaded later through the same from_pretrained path as any hub model.
    """
    info = STAGE["build_base"].entry()(load(params, set_), WORKSPACE.root)
    if info.get("built") is False:
        typer.echo(f"demo base: not built ({info['reason']})")
        return
    typer.echo(f"demo base: {info.get('parameters')} parameters, loss {info.get('loss_before'):.3f} -> "
               f"{info.get('loss_after'):.3f}")


NodeRankOpt = Annotated[
    int | None,
    typer.Option(
        "--node-rank",
        envvar="TUNELINE_NODE_RANK",
        min=0,
        help="This node's rank when train.num_nodes > 1: 0 on the node at train.master_addr (it writes the "
        "adapter, reports and MLflow run), 1..num_nodes-1 on the others (they only train). Under SLURM: "
        "--node-rank $SLURM_NODEID.",
    ),
]


def train_command(params: ParamsOpt = None, set_: SetOpt = None, node_rank: NodeRankOpt = None) -> None:
    """The pre-flight plan decides LR, warm-up, schedule, batch split, max length and precision; the loss is
    on assistant tokens only; rows are packed (train.packing). With train.num_processes > 1 (or a ZeRO
    stage) it launches torchrun / deepspeed workers; with train.num_nodes > 1 run it on every node, each
    with its --node-rank. A rerun after a crash resumes from the last
    checkpoint; CUDA out-of-memory backs off (smaller per-device batch, same effective batch).

    Writes train.output_dir (models/adapter/), reports/train.json, reports/train_health.json (danger
    signals: NaN, flat or rising val loss, LR off schedule, idle GPU) and reports/train_curves.html, and
    records the run (params, loss / LR / grad-norm curves, val loss and perplexity, lineage tags) in MLflow.
    Exit code 5: the health monitor stopped the run (see the diagnosis in reports/train_health.json).
    """
    cfg = load(params, set_)
    report = STAGE["train"].entry()(cfg, WORKSPACE, node_rank=node_rank)
    if node_rank:
        typer.echo(f"train: node {node_rank} done (world size {report['world_size']}); node 0 wrote the "
                   f"adapter in {cfg.train.output_dir} and the reports")
        return
    typer.echo(f"train: val loss {report.get('val_loss_before')} -> best {report.get('val_loss_best')}; "
               f"adapter in {cfg.train.output_dir}; health {report.get('health_status')} "
               "(reports/train_health.json, reports/train_curves.html)")


def evaluate_command(params: ParamsOpt = None, set_: SetOpt = None) -> None:
    """Loss and perplexity on every test row; greedy generations through the training chat template on
    evaluate.max_rows rows: exact match, ROUGE-L, never-stopping share, JSON metrics with
    task.output_schema; per category. Writes reports/evaluate.json and reports/review.html (prompts side
    by side for human review) and logs an MLflow run with the metrics, the per-row table and the page.
    """
    report = STAGE["evaluate"].entry()(load(params, set_), WORKSPACE)
    v = report["variants"]
    champion = "" if "champion" not in v else f" (champion {v['champion'].get('rouge_l')})"
    typer.echo(f"evaluate: rouge_l base {v['base'].get('rouge_l')} -> candidate "
               f"{v['candidate'].get('rouge_l')}{champion}; reports/evaluate.json, reports/review.html")


def promote_command(
    params: ParamsOpt = None,
    set_: SetOpt = None,
    approve: Annotated[
        str | None, typer.Option("--approve", help="Approve this model version (release gating), promote it.")
    ] = None,
    approver: Annotated[str | None, typer.Option("--approver", help="Who approves (default: $USER).")] = None,
    note: Annotated[str, typer.Option("--note", help="Why, recorded with the approval.")] = "",
) -> None:
    """The gate (params `promote`) compares candidate, base and champion on reports/evaluate.json and adds
    training health, data validation and parity; reports/promote.json has one row per criterion.
    "Not promoted" is a result (exit 0). With promote.require_approval the champion moves only after
    `tuneline promote --approve VERSION`.
    """
    cfg = load(params, set_)
    promote = STAGE["promote"].entry_module()
    if approve is not None:
        who = approver or os.environ.get("USER", "")
        result = promote.approve(cfg, WORKSPACE, approve, who, note)
        typer.echo(f"promote: {result['status']}: {result['reason']}")
        return
    report = STAGE["promote"].entry()(cfg, WORKSPACE)
    result = report["result"]
    typer.echo(f"promote: version {report['version']}: {result['status']} ({result['reason']}); "
               f"champion {report['champion_before']} -> {report['champion_after']}; reports/promote.json")


MODEL_STAGE_COMMANDS: dict[str, Callable[..., None]] = {
    "build_base": build_base_command,
    "train": train_command,
    "evaluate": evaluate_command,
    "promote": promote_command,
}


def _register(stage: Stage) -> None:
    body = MODEL_STAGE_COMMANDS[stage.verb] if stage.kind == "model" else _data_stage(stage)
    details = inspect.getdoc(body) or ""
    app.command(stage.verb, help=f"{stage.description}\n\n{details}" if details else stage.description)(
        command()(body)
    )


for _stage in STAGES:
    _register(_stage)


# ---------------------------------------------------------------- the other commands


@app.command("data")
@command()
def data_command(
    input: Annotated[list[Path], typer.Option("--input", "-i", help="Raw file or directory (repeatable).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Directory for train/val/test and reports.")],
    params: ParamsOpt = None,
    set_: SetOpt = None,
) -> None:
    """Run the whole data half on any files, outside the DVC workspace.

    Writes DIR/train.jsonl, val.jsonl, test.jsonl, rejected.jsonl (every dropped row with stage, reason and
    source), report.json (the funnel) and report.html.
    """
    typer.echo(run_data(input, output, load(params, set_)))


@app.command("rollback")
@command()
def rollback_command(params: ParamsOpt = None, set_: SetOpt = None) -> None:
    """Move the champion alias back to the previous champion (registry.previous_alias)."""
    result = STAGE["promote"].entry_module().rollback(load(params, set_))
    typer.echo(f"rollback: {result['status']}: {result['reason']}")


@app.command("lineage")
@command(logs=False)
def lineage_command(
    version: Annotated[str | None, typer.Argument(help="Version or alias (default: champion).")] = None,
    params: ParamsOpt = None,
    set_: SetOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a tree.")] = False,
) -> None:
    """Trace a registered model back to its data: alias -> version -> MLflow run -> git commit, params and
    data hashes -> dvc.lock at that commit -> processed splits and raw files (path, md5, size)."""
    tree = lineage(load(params, set_), WORKSPACE.root, version)
    typer.echo(json.dumps(tree, indent=2) if as_json else render(tree))


@app.command("plan")
@command()
def plan_command(
    model_config: Annotated[
        Path | None,
        typer.Option("--model-config", help="config.json or model dir (default: model.name_or_path)."),
    ] = None,
    params: ParamsOpt = None,
    set_: SetOpt = None,
) -> None:
    """Pre-flight plan before any GPU time: model size, trainable parameters, LR template, effective batch,
    max length and memory per device for each ZeRO stage, and what LoRA saves over full fine-tuning (memory
    and compute per token); refuses a plan that cannot fit.

    Example: tuneline plan --model-config llama-2-7b/config.json --set train.num_processes=8
    --set train.device_memory_gib=80 --set train.precision=bf16. Also writes reports/plan.json.
    """
    plan = make_plan(load(params, set_), model_config=model_config)
    write_json(WORKSPACE.report("plan"), plan.to_dict())
    typer.echo(render_plan(plan))


@app.command("report")
@command()
def report_command(params: ParamsOpt = None, set_: SetOpt = None) -> None:
    """Write reports/data.{json,html} (funnel, categories, lengths) and reports/run.html: data funnel,
    training numbers, health and loss / LR curves, eval comparison, the gate's table and the lineage."""
    cfg = load(params, set_)
    path = workspace_report(WORKSPACE, cfg)
    run = run_report(WORKSPACE, cfg)
    typer.echo(f"report: {path}, {run}")


@config_app.command("show")
@command(logs=False)
def config_show(params: ParamsOpt = None, set_: SetOpt = None) -> None:
    """Print the resolved configuration (params file + overrides + defaults) as YAML."""
    typer.echo(dump_config(load(params, set_)), nl=False)


@app.command("serve")
@command()
def serve_command(
    params: ParamsOpt = None,
    set_: SetOpt = None,
    host: Annotated[str | None, typer.Option("--host", help="Interface (default serve.host).")] = None,
    port: Annotated[int | None, typer.Option("--port", help="Port (default serve.port).")] = None,
    with_challenger: Annotated[
        bool,
        typer.Option("--with-challenger/--champion-only",
                     help="Serve the challenger beside the champion, to serve.canary_share of users."),
    ] = True,
    old_canary_flag: Annotated[
        bool | None, typer.Option("--canary/--no-canary", hidden=True, help="Deprecated: --with-challenger.")
    ] = None,
    print_vllm: Annotated[
        bool, typer.Option("--print-vllm", help="Download the versions, print the vLLM command, exit.")
    ] = False,
    download_dir: Annotated[
        Path | None, typer.Option("--download-dir", help="Where version files go (default: a temp dir).")
    ] = None,
) -> None:
    """Serve the registry's champion (and challenger, as an A/B canary) with an OpenAI-compatible API.

    POST /v1/chat/completions (the `openai` client works unchanged: base_url=http://HOST:PORT/v1; stream
    or not), GET /v1/models, GET /health, GET /metrics (Prometheus), POST /v1/feedback. Users are routed
    sticky by the serve.user_header header (or the request's `user` field); model "<name>@challenger"
    pins a variant. Every exchange goes to the feedback store (serve.store_url) for `tuneline ab report`
    and `tuneline feedback export`. The server follows the registry aliases (serve.reload_s).
    API keys come from $TUNELINE_API_KEYS (required off loopback).

    On GPUs: `--print-vllm --download-dir DIR` prints the vLLM command serving the base with both
    adapters; then serve with --set serve.backend_url=http://GPU_HOST:8001/v1 to route in front of it.

    Example: tuneline serve --port 8000, then
    curl localhost:8000/v1/chat/completions -d '{"messages":[{"role":"user","content":"hi"}]}'
    """
    if old_canary_flag is not None:
        new = "--with-challenger" if old_canary_flag else "--champion-only"
        typer.echo(f"warning: --{'' if old_canary_flag else 'no-'}canary is deprecated, renamed {new} "
                   "(`canary` alone also named promote's setting and serve.canary_share)", err=True)
        with_challenger = old_canary_flag
    cfg = load(params, set_)
    if print_vllm:
        typer.echo(vllm_recipe(cfg, with_challenger, download_dir))
        return
    serve(cfg, host, port, with_challenger, download_dir)
