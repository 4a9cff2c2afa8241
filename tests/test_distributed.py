"""Data-parallel training: DeepSpeed config and launch commands (unit), and real 2-process runs (integration).

The unit tests check the generated config against the plan, against the transformers integration that
fills and cross-checks it, and against DeepSpeed's own validation; the launch commands are parsed back
with torchrun's and DeepSpeed's real argument parsers. The integration tests train the tiny Llama with
LoRA through `tests/dist_runner.py` under torchrun + gloo (DDP), DeepSpeed ZeRO-2 and ZeRO-3 on CPU.
The first DeepSpeed run on a machine compiles its shm comm op (~30 s, cached in ~/.cache/torch_extensions).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from helpers import this_machines_address
from tuneline.config.loader import Config
from tuneline.errors import ConfigError
from tuneline.train.distributed import (
    MAX_GRAD_NORM,
    WORKER_MODULE,
    check_same_job,
    deepspeed_config,
    free_port,
    fsdp_config,
    is_main_process,
    launch_command,
    launcher_for,
    process_info,
    training_kwargs,
    worker_env,
)
from tuneline.train.plan import SHARDING_STRATEGIES, Plan, make_plan

TESTS = Path(__file__).resolve().parent
PY = "/venv/bin/python"


def tiny_config() -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=320,
        hidden_size=16,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )


def plan_for(**train: Any) -> tuple[Config, Plan]:
    cfg = Config.model_validate({"train": {"max_length": 64, **train}})
    return cfg, make_plan(cfg, model_config=tiny_config(), device_memory_gib=80.0)


# ---- deepspeed_config ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("zero", "precision", "per_device", "effective", "procs", "nodes"),
    [(2, "bf16", 4, 64, 2, 1), (3, "fp16", 2, 64, 4, 2), (3, "fp32", 1, 8, 8, 1), (0, "bf16", 4, 16, 1, 1)],
)
def test_config_follows_plan(
    zero: int, precision: str, per_device: int, effective: int, procs: int, nodes: int
) -> None:
    cfg, plan = plan_for(
        zero_stage=zero,
        precision=precision,
        per_device_batch=per_device,
        effective_batch=effective,
        num_processes=procs,
        num_nodes=nodes,
    )
    ds = deepspeed_config(plan, cfg.train)
    assert ds["zero_optimization"]["stage"] == zero
    assert ds["bf16"]["enabled"] is (precision == "bf16") and ds["fp16"]["enabled"] is (precision == "fp16")
    micro, accum = ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"]
    assert (micro, accum) == (plan.per_device_batch, plan.grad_accum)
    assert ds["train_batch_size"] == micro * accum * procs * nodes == effective
    assert ds["gradient_clipping"] == MAX_GRAD_NORM
    # The Trainer's AdamW and the plan's schedule run: no DeepSpeed optimizer (no op to compile).
    assert "optimizer" not in ds and "scheduler" not in ds
    assert json.loads(json.dumps(ds)) == ds


def test_zero2_and_zero3_sections() -> None:
    cfg, plan2 = plan_for(zero_stage=2, num_processes=2, effective_batch=16)
    z2 = deepspeed_config(plan2, cfg.train)["zero_optimization"]
    assert z2["overlap_comm"] and z2["contiguous_gradients"] and z2["allgather_bucket_size"] > 0
    assert not [k for k in z2 if k.startswith("stage3")]
    cfg, plan3 = plan_for(zero_stage=3, num_processes=2, effective_batch=16)
    z3 = deepspeed_config(plan3, cfg.train)["zero_optimization"]
    assert z3["stage3_gather_16bit_weights_on_model_save"] is True  # save_model writes real weights
    assert z3["stage3_prefetch_bucket_size"] == "auto" and "allgather_bucket_size" not in z3


def test_fp16_uses_dynamic_loss_scaling() -> None:
    cfg, plan = plan_for(zero_stage=2, precision="fp16")
    fp16 = deepspeed_config(plan, cfg.train)["fp16"]
    assert fp16["enabled"] and fp16["loss_scale"] == 0 and fp16["initial_scale_power"] == 16


def test_inconsistent_plan_is_refused() -> None:
    cfg, plan = plan_for(zero_stage=2, num_processes=2, effective_batch=16)
    with pytest.raises(ConfigError, match="not the effective batch 16"):
        deepspeed_config(dataclasses.replace(plan, grad_accum=plan.grad_accum + 1), cfg.train)
    other = cfg.train.model_copy(update={"num_processes": 4})
    with pytest.raises(ConfigError, match="world_size 2"):
        deepspeed_config(plan, other)


@pytest.fixture
def hf_fill() -> Any:
    """Fill a config the way the Trainer does; the global ZeRO-3 flag it sets is cleared afterwards."""
    from transformers import LlamaForCausalLM, TrainingArguments
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig, unset_hf_deepspeed_config

    model = LlamaForCausalLM(tiny_config())  # built before any ZeRO-3 config is registered

    def fill(ds: dict, plan: Plan) -> HfTrainerDeepSpeedConfig:
        args = TrainingArguments(
            output_dir="unused",
            per_device_train_batch_size=plan.per_device_batch,
            gradient_accumulation_steps=plan.grad_accum,
            bf16=plan.precision == "bf16",
            max_grad_norm=MAX_GRAD_NORM,
            use_cpu=True,
            report_to="none",
        )
        hf = HfTrainerDeepSpeedConfig(json.loads(json.dumps(ds)))
        hf.trainer_config_process(args)
        hf.trainer_config_finalize(args, model, num_training_steps=10)
        return hf

    yield fill
    unset_hf_deepspeed_config()


@pytest.mark.parametrize(("zero", "precision"), [(2, "fp32"), (3, "bf16")])
def test_trainer_fills_autos_and_deepspeed_accepts_the_result(
    hf_fill: Any, zero: int, precision: str
) -> None:
    from deepspeed.runtime.config import DeepSpeedConfig

    cfg, plan = plan_for(zero_stage=zero, precision=precision, per_device_batch=2, effective_batch=8)
    hf = hf_fill(deepspeed_config(plan, cfg.train), plan)
    assert '"auto"' not in json.dumps(hf.config)
    assert hf.config["zero_optimization"]["reduce_bucket_size"] == 16 * 16  # hidden_size**2
    checked = DeepSpeedConfig(hf.config)  # DeepSpeed's own validation: unknown ZeRO keys are rejected
    assert checked.zero_optimization_stage == zero and checked.train_batch_size == 8
    assert checked.bfloat16_config.enabled is (precision == "bf16") and not checked.float16_config.enabled


def test_launch_with_another_world_size_fails_before_training(hf_fill: Any) -> None:
    # The plan is for 2 processes; this process is a world of 1: the Trainer refuses the explicit batch.
    cfg, plan = plan_for(zero_stage=2, num_processes=2, per_device_batch=2, effective_batch=8)
    with pytest.raises(ValueError, match="train_batch_size"):
        hf_fill(deepspeed_config(plan, cfg.train), plan)


# ---- launchers ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("train", "expected"),
    [
        ({"num_processes": 1, "zero_stage": 2}, "single"),
        ({"num_processes": 1, "zero_stage": 0, "launcher": "deepspeed"}, "single"),
        ({"num_processes": 2, "zero_stage": 0}, "torchrun"),
        ({"num_processes": 2, "zero_stage": 2}, "deepspeed"),
        ({"num_processes": 2, "zero_stage": 3, "launcher": "torchrun"}, "torchrun"),
        ({"num_processes": 2, "zero_stage": 0, "launcher": "deepspeed"}, "deepspeed"),
        ({"num_processes": 2, "num_nodes": 2, "zero_stage": 3}, "torchrun"),  # no hostfile: rendezvous
        ({"num_processes": 2, "num_nodes": 2, "zero_stage": 3, "hostfile": "hosts"}, "deepspeed"),
    ],
)
def test_launcher_for(train: dict, expected: str) -> None:
    cfg, plan = plan_for(effective_batch=16, **train)
    assert launcher_for(cfg.train, plan) == expected


def test_deepspeed_on_many_nodes_needs_a_hostfile() -> None:
    cfg, plan = plan_for(num_processes=2, num_nodes=2, zero_stage=2, launcher="deepspeed", effective_batch=16)
    with pytest.raises(ConfigError, match="hostfile"):
        launcher_for(cfg.train, plan)


def test_single_process_runs_the_worker_module() -> None:
    cfg, plan = plan_for(zero_stage=2)
    assert launch_command(cfg.train, plan, ["--job", "j.json"], PY) == [
        PY,
        "-m",
        WORKER_MODULE,
        "--job",
        "j.json",
    ]


def test_torchrun_one_node_parses_back() -> None:
    from torch.distributed.run import get_args_parser

    cfg, plan = plan_for(num_processes=2, zero_stage=0, master_port=29611, effective_batch=16)
    cmd = launch_command(cfg.train, plan, ["--job", "j.json"], PY)
    assert cmd[:3] == [PY, "-m", "torch.distributed.run"]
    args = get_args_parser().parse_args(cmd[3:])
    assert (args.nnodes, args.nproc_per_node, args.node_rank) == ("1", "2", 0)
    assert (args.master_addr, args.master_port) == ("127.0.0.1", 29611)
    assert args.module and args.training_script == WORKER_MODULE
    assert args.training_script_args == ["--job", "j.json"]


def test_torchrun_many_nodes_uses_the_rendezvous_address() -> None:
    from torch.distributed.run import get_args_parser

    cfg, plan = plan_for(
        num_processes=4,
        num_nodes=2,
        zero_stage=3,
        master_addr="10.1.2.3",
        master_port=29400,
        effective_batch=32,
    )
    args = get_args_parser().parse_args(launch_command(cfg.train, plan, [], PY, node_rank=1)[3:])
    assert (args.nnodes, args.nproc_per_node, args.node_rank) == ("2", "4", 1)
    assert (args.master_addr, args.master_port) == ("10.1.2.3", 29400)
    with pytest.raises(ConfigError, match="node_rank 2"):
        launch_command(cfg.train, plan, [], PY, node_rank=2)
    loopback = cfg.train.model_copy(update={"master_addr": "127.0.0.1"})
    with pytest.raises(ConfigError, match="loopback"):
        launch_command(loopback, plan, [], PY)


def test_deepspeed_one_node_parses_back() -> None:
    from deepspeed.launcher.runner import DLTS_HOSTFILE, parse_args

    cfg, plan = plan_for(num_processes=4, zero_stage=2, master_port=29612, effective_batch=16)
    cmd = launch_command(cfg.train, plan, ["--job", "j.json"], PY)
    assert cmd[:3] == [PY, "-m", "deepspeed.launcher.runner"]
    args = parse_args(cmd[3:])
    assert (args.num_gpus, args.master_port, args.hostfile) == (4, 29612, DLTS_HOSTFILE)
    assert args.module and args.no_local_rank and not args.no_ssh
    assert (args.user_script, args.user_args) == (WORKER_MODULE, ["--job", "j.json"])


def test_deepspeed_hostfile(tmp_path: Path) -> None:
    from deepspeed.launcher.runner import fetch_hostfile, parse_args

    hosts = tmp_path / "hostfile"
    hosts.write_text("# two nodes\nnode-a slots=8\nnode-b slots=8\n\nnode-c slots=4\n")
    cfg, plan = plan_for(
        num_processes=8,
        num_nodes=2,
        zero_stage=3,
        hostfile=str(hosts),
        master_addr="10.0.0.1",
        effective_batch=64,
    )
    args = parse_args(launch_command(cfg.train, plan, ["--job", "j.json"], PY)[3:])
    assert (args.hostfile, args.num_nodes, args.num_gpus, args.master_addr) == (str(hosts), 2, 8, "10.0.0.1")
    assert not args.no_ssh
    assert fetch_hostfile(args.hostfile) == {"node-a": 8, "node-b": 8, "node-c": 4}  # DeepSpeed reads it so
    no_ssh = parse_args(launch_command(cfg.train, plan, [], PY, node_rank=1)[3:])
    assert no_ssh.no_ssh and no_ssh.node_rank == 1
    cfg3, plan3 = plan_for(
        num_processes=8,
        num_nodes=3,
        zero_stage=3,
        hostfile=str(hosts),
        master_addr="10.0.0.1",
        effective_batch=96,
    )
    with pytest.raises(ConfigError, match="slots=4 has fewer slots"):
        launch_command(cfg3.train, plan3, [], PY)
    hosts.write_text("node-a 8\n")
    with pytest.raises(ConfigError, match="line 1"):
        launch_command(cfg.train, plan, [], PY)
    hosts.unlink()
    with pytest.raises(ConfigError, match="no such file"):
        launch_command(cfg.train, plan, [], PY)


# ---- environment and ranks ---------------------------------------------------------------------------


def test_worker_env_gives_single_deepspeed_a_process_group() -> None:
    cfg, plan = plan_for(zero_stage=2)
    env = worker_env(cfg.train, plan, environ={}, use_cpu=True)
    assert {k: env[k] for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR")} == {
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "1",
        "MASTER_ADDR": "127.0.0.1",
    }
    assert 0 < int(env["MASTER_PORT"]) < 65536 and env["DS_ACCELERATOR"] == "cpu"
    assert int(env["OMP_NUM_THREADS"]) >= 1


def test_worker_env_leaves_ranks_to_launchers_and_keeps_threads() -> None:
    cfg, plan = plan_for(zero_stage=0, num_processes=2, effective_batch=16)
    env = worker_env(cfg.train, plan, environ={"OMP_NUM_THREADS": "3"}, use_cpu=False)
    assert not {"RANK", "WORLD_SIZE", "MASTER_PORT", "OMP_NUM_THREADS", "DS_ACCELERATOR"} & set(env)
    cfg1, plan1 = plan_for(zero_stage=0)
    assert "RANK" not in worker_env(cfg1.train, plan1, environ={}, use_cpu=True)  # plain process: no group


def test_process_info_reads_launcher_environment() -> None:
    info = process_info({"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2"})
    assert (info.rank, info.local_rank, info.world_size, info.local_world_size) == (3, 1, 4, 2)
    assert not info.is_main and not info.is_local_main and info.distributed
    alone = process_info({})
    assert (alone.rank, alone.world_size, alone.is_main, alone.distributed) == (0, 1, True, False)
    assert is_main_process({"RANK": "0", "WORLD_SIZE": "2"}) and not is_main_process({"RANK": "1"})


def test_training_kwargs() -> None:
    cfg, plan = plan_for(zero_stage=3, num_processes=2, effective_batch=16)
    kw = training_kwargs(cfg.train, plan, use_cpu=True)
    assert kw["deepspeed"] == deepspeed_config(plan, cfg.train) and kw["save_only_model"] is False
    assert (kw["ddp_backend"], kw["use_cpu"], kw["max_grad_norm"]) == ("gloo", True, MAX_GRAD_NORM)
    cfg0, plan0 = plan_for(zero_stage=0, num_processes=2, effective_batch=16)
    kw0 = training_kwargs(cfg0.train, plan0, use_cpu=False)
    assert kw0["deepspeed"] is None and kw0["ddp_backend"] == "nccl" and "save_only_model" not in kw0
    cfg1, plan1 = plan_for(zero_stage=0, num_processes=1, effective_batch=16)
    assert training_kwargs(cfg1.train, plan1, use_cpu=True)["ddp_backend"] is None  # one plain process


# ---- FSDP (train.backend: fsdp) -------------------------------------------------------------------------


def test_backend_defaults_to_deepspeed_and_fsdp_needs_processes() -> None:
    from pydantic import ValidationError

    cfg, plan = plan_for(zero_stage=2, num_processes=2, effective_batch=16)
    assert cfg.train.backend == plan.backend == "deepspeed"
    assert training_kwargs(cfg.train, plan, True)["fsdp"] is False
    with pytest.raises(ValidationError, match="needs world_size > 1"):
        Config.model_validate({"train": {"backend": "fsdp", "zero_stage": 3}})
    Config.model_validate({"train": {"backend": "fsdp"}})  # auto picks ZeRO-0 (no sharding) for one process


@pytest.mark.parametrize(("zero", "reshard"), [(3, True), (2, False)])
def test_fsdp_kwargs_give_the_trainer_fsdp2(zero: int, reshard: bool) -> None:
    from transformers import TrainingArguments

    cfg, plan = plan_for(zero_stage=zero, num_processes=2, effective_batch=16, backend="fsdp",
                         gradient_checkpointing="on")
    kw = training_kwargs(cfg.train, plan, use_cpu=True)
    assert kw["deepspeed"] is None and kw["fsdp"] is True and kw["save_only_model"] is False
    assert kw["fsdp_config"] == fsdp_config(plan) and kw["ddp_backend"] == "gloo"
    # FSDP checkpoints activations itself; the Trainer refuses its own flag on top
    assert kw["fsdp_config"]["activation_checkpointing"] is True and kw["activation_checkpointing"] is False
    assert launcher_for(cfg.train, plan) == "torchrun"  # the deepspeed launcher is for the DeepSpeed engine
    alone = {**kw, "ddp_backend": None}  # this test process has no process group
    plugin = TrainingArguments(output_dir="unused", report_to="none", **alone).fsdp_plugin_args
    assert (plugin["fsdp_version"], plugin["reshard_after_forward"]) == (2, reshard)
    assert plugin["state_dict_type"] == "FULL_STATE_DICT"
    assert plugin["auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    deepspeed_plan = dataclasses.replace(plan, backend="deepspeed")
    with pytest.raises(ConfigError, match="FSDP shards only"):
        fsdp_config(deepspeed_plan)


def test_plan_estimates_memory_per_sharding_strategy() -> None:
    cfg, plan = plan_for(zero_stage=3, num_processes=4, effective_batch=16, backend="fsdp", method="full")
    assert list(plan.sharding) == ["full_shard", "shard_grad_op", "no_shard"]
    full, grad_op, none = (plan.sharding[k] for k in plan.sharding)
    assert full.total < grad_op.total < none.total  # each shards more than the next
    assert grad_op.weights == none.weights and grad_op.optimizer == none.optimizer / 4  # ZeRO-2's split
    assert full.total == pytest.approx(plan.memory.total)  # the chosen stage is full shard
    assert Plan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan  # workers get it back whole
    _, ds = plan_for(zero_stage=2, num_processes=4, effective_batch=16, method="full")
    assert list(ds.sharding) == list(SHARDING_STRATEGIES["deepspeed"]) == ["zero-3", "zero-2", "zero-0"]
    assert ds.sharding["zero-2"].total == pytest.approx(ds.memory.total)
    assert [m.total for m in ds.sharding.values()] == pytest.approx([full.total, grad_op.total, none.total])


# ---- many nodes -------------------------------------------------------------------------------------------


def test_a_node_rank_outside_the_run_is_refused(tmp_path: Path) -> None:
    from tuneline.layout import Layout
    from tuneline.train.train import run

    one = Config.model_validate({"train": {"num_processes": 2, "effective_batch": 16}})
    with pytest.raises(ConfigError, match="node rank 1 is outside 0..0"):
        run(one, Layout(tmp_path), node_rank=1)
    two = Config.model_validate({"train": {"num_nodes": 2, "master_addr": "10.0.0.1", "effective_batch": 16}})
    with pytest.raises(ConfigError, match="node rank 2 is outside 0..1"):
        run(two, Layout(tmp_path), node_rank=2)


CHECK_CASES = {  # case -> (fingerprint, owns_outputs) of rank 0 and rank 1
    "same": (("a", True), ("a", False)),
    "other data": (("a", True), ("b", False)),
    "rank 0 elsewhere": (("a", False), ("a", True)),
}


def _check_two_ranks(rank: int, port: int, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    said = {}
    for case, ranks in CHECK_CASES.items():
        try:
            check_same_job(*ranks[rank])
            said[case] = "ok"
        except ConfigError as exc:
            said[case] = str(exc)
    Path(out, f"{rank}.json").write_text(json.dumps(said))
    dist.destroy_process_group()


@pytest.mark.integration
def test_ranks_refuse_another_job_or_rank_0_outside_node_0(tmp_path: Path) -> None:
    """Every node prepares its own job: a node with other data trained other rows in lockstep, and a
    rendezvous that puts rank 0 on another node writes the outputs where node 0's stage never looks.
    Both stop on every rank before training."""
    import torch.multiprocessing as mp

    mp.spawn(_check_two_ranks, args=(free_port(), str(tmp_path)), nprocs=2)
    for rank in (0, 1):
        said = json.loads((tmp_path / f"{rank}.json").read_text())
        assert said["same"] == "ok"
        assert said["other data"].startswith(f"rank 1 on {socket.gethostname()} prepared another job")
        assert said["rank 0 elsewhere"].startswith("global rank 0 runs on")
    check_same_job("a", owns_outputs=False)  # no process group: one process, nothing to compare


def test_free_port_is_bindable() -> None:
    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


# ---- real runs (CPU) ------------------------------------------------------------------------------------

STEPS = 6
ROWS = 32
PER_DEVICE = 2


@pytest.fixture(scope="module")
def base(tiny_base: Path) -> Path:
    return tiny_base


def launch(
    base: Path, out: Path, resume: Path | None = None, nodes: int = 1, **train: Any
) -> dict[int, dict[str, Any]]:
    """Train the tiny base through launch_command + worker_env; the rank reports by rank. `resume`: a
    checkpoint folder to continue from. `nodes` > 1: one command per node rank on this machine, all at once
    (node rank 0 first), as each node of a cluster runs its own."""
    train = {
        "per_device_batch": PER_DEVICE,
        "effective_batch": 8,
        "lr": 5e-3,
        "master_port": free_port(),
        "lora": {"target_modules": ["q_proj", "v_proj"]},
        **train,
    }
    cfg = Config.model_validate({"seed": 0, "train": train})
    plan = make_plan(cfg, model_config=str(base))
    out.mkdir(parents=True, exist_ok=True)
    job = out / "job.json"
    job.write_text(
        json.dumps({"train": train, "base": str(base), "out": str(out), "steps": STEPS, "rows": ROWS,
                    "resume": str(resume) if resume else None})
    )
    path = os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, **worker_env(cfg.train, plan), "PYTHONPATH": path}
    procs = []
    for node in [None] if nodes == 1 else list(range(nodes)):
        cmd = launch_command(cfg.train, plan, ["--job", str(job)], sys.executable, node_rank=node,
                             module="dist_runner")
        log = out / f"node{node or 0}.log"  # a file, not a pipe: a full pipe would stall that node
        with log.open("w") as sink:
            procs.append((cmd, log, subprocess.Popen(cmd, env=env, stdout=sink, stderr=subprocess.STDOUT)))
    for cmd, log, proc in procs:
        proc.wait(timeout=600)
        assert proc.returncode == 0, f"{' '.join(cmd)}\n{log.read_text()[-6000:]}"
    return {r: json.loads((out / f"rank{r}.json").read_text()) for r in range(plan.world_size)}


def saved_weights(out: Path) -> dict[str, list[float]]:
    """The tensors rank 0 saved: the adapter (LoRA) or the whole model (full)."""
    from safetensors.torch import load_file

    files = [out / "adapter" / n for n in ("adapter_model.safetensors", "model.safetensors")]
    found = [f for f in files if f.is_file()]
    assert len(found) == 1, f"expected one weights file in {out / 'adapter'}"
    return {k: v.float().flatten().tolist() for k, v in load_file(found[0]).items()}


def max_diff(a: dict[str, list[float]], b: dict[str, list[float]]) -> float:
    assert a.keys() == b.keys()
    return max(abs(x - y) for k in a for x, y in zip(a[k], b[k], strict=True))


def check_run(
    ranks: dict[int, dict[str, Any]], out: Path, world: int, deepspeed: bool, fsdp: int = 0
) -> None:
    """Every rank trained the same steps; gradients were averaged; rank 0 saved the trained adapter."""
    assert sorted(ranks) == list(range(world))
    main = ranks[0]
    assert main["is_main"] and not any(r["is_main"] for r in list(ranks.values())[1:])
    for r in ranks.values():
        assert r["world_size"] == r["trainer_world_size"] == world and r["deepspeed"] is deepspeed
        assert r["fsdp_version"] == fsdp
        assert r["steps"] == STEPS and len(r["losses"]) == STEPS
        assert all(math.isfinite(x) for x in r["losses"] + r["eval_losses"])
        assert r["val_best"] < r["val_before"]  # the adapter learned something on val
        assert r["best_checkpoint"] is not None  # load_best_model_at_end restored a checkpoint
    # LoRA B starts at zero: after training every adapter matrix (or every weight, full) moved.
    assert all(
        max(abs(x - y) for x, y in zip(main["after"][k], main["before"][k], strict=True)) > 1e-4
        for k in main["after"]
    )
    # Each rank saw its own shard of the data, yet all ended with the same weights: synchronized gradients.
    per_epoch = ROWS // (world * PER_DEVICE)  # batches of one rank in the first epoch
    shards = [{i for batch in r["batches"][:per_epoch] for i in batch} for r in ranks.values()]
    assert set.union(*shards) == {f"r{i}" for i in range(ROWS)}
    if world > 1:
        assert not set.intersection(*shards) and max_diff(main["after"], ranks[1]["after"]) < 1e-6
    # The file rank 0 wrote holds the trained weights (ZeRO-3: gathered, not the empty local shard);
    # a tied LM head is saved once, as the embedding (FSDP's full state dict names it twice, same values).
    on_disk = saved_weights(out)
    if fsdp and "lm_head.weight" in on_disk:
        assert on_disk.pop("lm_head.weight") == on_disk["model.embed_tokens.weight"]
    assert max_diff(on_disk, {k.replace(".default", ""): v for k, v in main["after"].items()}) < 1e-6


@pytest.fixture(scope="module")
def ddp_run(base: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ddp") / "run"
    # Gradient checkpointing on: with a peft model DDP needs find_unused_parameters off (training_kwargs).
    ranks = launch(base, out, num_processes=2, zero_stage=0, gradient_checkpointing="on")
    check_run(ranks, out, world=2, deepspeed=False)
    assert all(r["checkpointing"] for r in ranks.values())
    return out


@pytest.mark.integration
def test_torchrun_gloo_two_ranks(ddp_run: Path) -> None:
    assert (ddp_run / "adapter" / "adapter_config.json").is_file()


@pytest.mark.integration
def test_deepspeed_zero2_two_ranks_matches_ddp(base: Path, ddp_run: Path, tmp_path: Path) -> None:
    ranks = launch(base, tmp_path / "run", num_processes=2, zero_stage=2)  # deepspeed launcher
    check_run(ranks, tmp_path / "run", world=2, deepspeed=True)
    assert ranks[0]["ds_config"]["zero_optimization"]["stage"] == 2
    # Same data, seed and effective batch: ZeRO-2 computes what DDP computes.
    assert max_diff(saved_weights(tmp_path / "run"), saved_weights(ddp_run)) < 1e-5


@pytest.mark.integration
def test_deepspeed_zero3_under_torchrun_saves_gathered_weights(
    base: Path, ddp_run: Path, tmp_path: Path
) -> None:
    ranks = launch(base, tmp_path / "run", num_processes=2, zero_stage=3, launcher="torchrun")
    check_run(ranks, tmp_path / "run", world=2, deepspeed=True)
    zero = ranks[0]["ds_config"]["zero_optimization"]
    assert zero["stage"] == 3 and zero["stage3_param_persistence_threshold"] == 10 * 16  # auto filled
    assert max_diff(saved_weights(tmp_path / "run"), saved_weights(ddp_run)) < 1e-5


@pytest.mark.integration
def test_deepspeed_zero2_single_process(base: Path, tmp_path: Path) -> None:
    ranks = launch(base, tmp_path / "run", num_processes=1, zero_stage=2)  # no launcher: worker_env's group
    check_run(ranks, tmp_path / "run", world=1, deepspeed=True)
    assert (
        ranks[0]["ds_config"]["train_batch_size"] == 8
        and ranks[0]["ds_config"]["gradient_accumulation_steps"] == 4
    )


@pytest.mark.integration
def test_deepspeed_zero3_full_fine_tuning_saves_the_whole_model(base: Path, tmp_path: Path) -> None:
    # Full weights are partitioned across the ranks; save_model must gather them (the config's
    # stage3_gather_16bit_weights_on_model_save), else it writes no weights at all.
    ranks = launch(base, tmp_path / "run", num_processes=2, zero_stage=3, method="full", lr=1e-3)
    check_run(ranks, tmp_path / "run", world=2, deepspeed=True)
    assert len(ranks[0]["after"]) > 4 and "model.embed_tokens.weight" in ranks[0]["after"]


@pytest.mark.integration
def test_deepspeed_hostfile_two_nodes_without_ssh_match_one_node(
    base: Path, ddp_run: Path, tmp_path: Path
) -> None:
    """The hostfile form started by hand on every node (`--no_ssh --node_rank K`): two "nodes" on this
    machine, one process each, train what one node with two processes trains."""
    addr = this_machines_address()
    if addr is None:
        pytest.skip("no non-loopback address on this machine")
    hosts = tmp_path / "hostfile"
    hosts.write_text(f"{addr} slots=1\nlocalhost slots=1\n")
    ranks = launch(base, tmp_path / "run", nodes=2, num_nodes=2, num_processes=1, zero_stage=2,
                   hostfile=str(hosts), master_addr=addr)
    check_run(ranks, tmp_path / "run", world=2, deepspeed=True)
    assert max_diff(saved_weights(tmp_path / "run"), saved_weights(ddp_run)) < 1e-5


@pytest.fixture(scope="module")
def fsdp_run(base: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[int, dict[str, Any]]]:
    out = tmp_path_factory.mktemp("fsdp") / "run"
    ranks = launch(base, out, num_processes=2, zero_stage=3, backend="fsdp")  # full shard, torchrun
    return out, ranks


@pytest.mark.integration
def test_fsdp_full_shard_two_ranks_matches_ddp(
    fsdp_run: tuple[Path, dict[int, dict[str, Any]]], ddp_run: Path
) -> None:
    """accelerate drops the FSDP plugin on CPU without a word (the run trains as DDP and matches DDP
    trivially): the ranks must report FSDP2 on, with their weights as sharded DTensors."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out, ranks = fsdp_run
    check_run(ranks, out, world=2, deepspeed=False, fsdp=2)
    assert all(r["dtensors"] > 0 for r in ranks.values())  # fully_shard really sharded the parameters
    assert (out / "checkpoints" / "checkpoint-6" / "pytorch_model_fsdp.bin").is_file()  # FSDP's checkpoint
    # The same data, seed and effective batch: sharded training computes what DDP computes.
    assert max_diff(saved_weights(out), saved_weights(ddp_run)) < 1e-5
    ddp_losses = json.loads((ddp_run / "rank0.json").read_text())["losses"]
    assert max(abs(a - b) for a, b in zip(ranks[0]["losses"], ddp_losses, strict=True)) < 1e-5
    # The adapter on disk is a plain peft adapter: it loads onto the base without FSDP.
    base = Path(json.loads((out / "job.json").read_text())["base"])
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), out / "adapter")
    loaded = {k: v for k, v in model.state_dict().items() if "lora_" in k}
    assert len(loaded) == len(saved_weights(out)) and all(v.abs().sum() > 0 for k, v in loaded.items()
                                                          if "lora_B" in k)


@pytest.mark.integration
def test_fsdp_resumes_from_its_checkpoint(
    base: Path, fsdp_run: tuple[Path, dict[int, dict[str, Any]]], tmp_path: Path
) -> None:
    """A run resumed from an FSDP checkpoint (sharded weights and optimizer gathered into
    pytorch_model_fsdp.bin / optimizer.bin) ends with the weights of the uninterrupted run."""
    import shutil

    done, ranks = fsdp_run
    out = tmp_path / "run"
    checkpoint = out / "checkpoints" / "checkpoint-4"
    shutil.copytree(done / "checkpoints" / "checkpoint-4", checkpoint)
    resumed = launch(base, out, resume=checkpoint, num_processes=2, zero_stage=3, backend="fsdp")
    assert resumed[0]["fsdp_version"] == 2 and resumed[0]["steps"] == STEPS
    assert resumed[0]["losses"][4:] == pytest.approx(ranks[0]["losses"][4:], abs=1e-6)  # steps 5 and 6
    assert max_diff(saved_weights(out), saved_weights(done)) < 1e-6


@pytest.mark.integration
def test_fsdp_full_fine_tuning_saves_the_whole_model(base: Path, tmp_path: Path) -> None:
    # Every weight sharded over the ranks; save_model gathers the full state dict, rank 0 writes it.
    ranks = launch(base, tmp_path / "run", num_processes=2, zero_stage=3, backend="fsdp", method="full",
                   lr=1e-3)
    check_run(ranks, tmp_path / "run", world=2, deepspeed=False, fsdp=2)
    assert len(ranks[0]["after"]) > 4 and "model.embed_tokens.weight" in ranks[0]["after"]


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count()


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda(), reason="needs a CUDA GPU")
@pytest.mark.parametrize(("zero", "method"), [(2, "lora"), (3, "lora"), (3, "full")])
def test_single_process_deepspeed_bf16_on_gpu(base: Path, tmp_path: Path, zero: int, method: str) -> None:
    # One GPU: nccl process group from init_worker, bf16 from the plan (auto), save gathered weights.
    ranks = launch(base, tmp_path / "run", num_processes=1, zero_stage=zero, method=method, lr=1e-3)
    check_run(ranks, tmp_path / "run", world=1, deepspeed=True)
    assert ranks[0]["ds_config"]["bf16"]["enabled"] is True


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda() or _gpu_count() < 2, reason="needs 2 CUDA GPUs (nccl: one rank per GPU)")
@pytest.mark.parametrize("zero", [2, 3])
def test_fsdp_bf16_on_two_gpus(base: Path, tmp_path: Path, zero: int) -> None:
    # FSDP2 over nccl with bf16 from the plan: shard grad op / full shard, gathered adapter on save.
    ranks = launch(base, tmp_path / "run", num_processes=2, zero_stage=zero, backend="fsdp", lr=1e-3)
    check_run(ranks, tmp_path / "run", world=2, deepspeed=False, fsdp=2)
    assert all(r["dtensors"] > 0 for r in ranks.values())


@pytest.mark.parametrize("node_rank", [None, 1])
def test_many_nodes_with_a_loopback_master_addr_stop_before_anything_runs(
    tmp_path: Path, node_rank: int | None
) -> None:
    """train.num_nodes 2 with the default master_addr 127.0.0.1 was refused only by `launch_command`: node
    0 had tokenized the splits and begun an MLflow run (left FAILED) first. Now the stage refuses at once,
    naming the key, on every node, before reading a split or the base model."""
    from tuneline.layout import Layout
    from tuneline.train.train import run

    cfg = Config.model_validate({"model": {"name_or_path": str(tmp_path / "no-base")},
                                 "tracking": {"uri": f"sqlite:///{tmp_path}/mlflow.db"},
                                 "train": {"num_nodes": 2, "effective_batch": 16}})
    with pytest.raises(ConfigError, match=r"train\.master_addr '127\.0\.0\.1' with train\.num_nodes 2"):
        run(cfg, Layout(tmp_path), node_rank=node_rank)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("train", [{"backend": "fsdp", "zero_stage": 3}, {"zero_stage": 0}])
def test_hostfile_without_node_rank_under_torchrun_is_refused(tmp_path: Path, train: dict) -> None:
    """A hostfile and no --node-rank means "node 0 starts the others over ssh" (docs/training.md), which only
    the deepspeed launcher does. Under train.backend fsdp (or DDP) `auto` picks torchrun and the hostfile was
    ignored without a word: node 0 then waited at the rendezvous for nodes nobody started."""
    hosts = tmp_path / "hosts"
    hosts.write_text("10.0.0.1 slots=2\n10.0.0.2 slots=2\n")
    cfg, plan = plan_for(num_processes=2, num_nodes=2, effective_batch=16, hostfile=str(hosts),
                         master_addr="10.0.0.1", **train)
    assert launcher_for(cfg.train, plan) == "torchrun"
    refused = r"train\.hostfile is read by the deepspeed launcher only.*--node-rank"
    with pytest.raises(ConfigError, match=refused):
        launch_command(cfg.train, plan, ["--job", "j.json"], PY)
    # each node started by hand (its node rank given): torchrun's static rendezvous, as documented
    cmd = launch_command(cfg.train, plan, ["--job", "j.json"], PY, node_rank=1)
    assert cmd[2] == "torch.distributed.run" and cmd[cmd.index("--node_rank") + 1] == "1"
