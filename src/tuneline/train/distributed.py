"""Data-parallel training: the DeepSpeed config, the launch command and the worker's view of its rank.

The `train` stage trains in one process, or starts N processes that each run
`python -m tuneline.train.worker`. Who starts them (`launcher_for`):

    single     one process; DeepSpeed still needs a process group, so `worker_env` gives it one
               (RANK=0, WORLD_SIZE=1 and a free MASTER_PORT on 127.0.0.1)
    torchrun   `python -m torch.distributed.run`: DDP (ZeRO-0) or DeepSpeed workers, one or many nodes
    deepspeed  `python -m deepspeed.launcher.runner`: one node, or many nodes listed in a hostfile

The DeepSpeed *engine* is used when the plan's ZeRO stage is 2 or 3, whichever launcher started the
processes (both export RANK / LOCAL_RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT, all DeepSpeed reads).
Its config is generated from the plan by `deepspeed_config`, never kept as a hand-edited JSON file.

On CPU (tests, CI) the same code runs with the gloo backend: torchrun + DDP, and DeepSpeed ZeRO-2/3
with its CPU accelerator. DeepSpeed compiles one op there (`deepspeed_shm_comm`, about 30 s with two
cores) on first use and caches it under ~/.cache/torch_extensions.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist
from accelerate.state import PartialState
from accelerate.utils import DistributedType

from tuneline.config.train import TrainParams
from tuneline.errors import ConfigError
from tuneline.train.plan import Plan

Launcher = Literal["single", "torchrun", "deepspeed"]

WORKER_MODULE = "tuneline.train.worker"
# The Trainer's `max_grad_norm` must equal this: the Trainer checks the DeepSpeed config against it.
MAX_GRAD_NORM = 1.0
# Gradient all-gather bucket (elements) for ZeRO-2. DeepSpeed's default 5e8 with overlap_comm costs
# ~4.5 x 5e8 x 2 bytes of buffers; 2e8 is the size the transformers DeepSpeed guide recommends.
ALLGATHER_BUCKET = 200_000_000
# fp16 dynamic loss scaling: start at 2**16, halve on overflow, double after 1000 clean steps.
FP16_SCALING = {
    "loss_scale": 0,
    "initial_scale_power": 16,
    "loss_scale_window": 1000,
    "hysteresis": 2,
    "min_loss_scale": 1,
}


def uses_deepspeed(plan: Plan) -> bool:
    """Whether the DeepSpeed engine trains (ZeRO 2/3, `train.backend: deepspeed`); ZeRO-0 is plain DDP."""
    return plan.zero_stage > 0 and plan.backend == "deepspeed"


def uses_fsdp(plan: Plan) -> bool:
    """Whether PyTorch FSDP shards the training (ZeRO 2/3 under `train.backend: fsdp`)."""
    return plan.zero_stage > 0 and plan.backend == "fsdp"


def is_sharded(plan: Plan) -> bool:
    """Whether an engine shards the training (DeepSpeed or FSDP); it then needs a process group even for
    one process."""
    return plan.zero_stage > 0


def deepspeed_config(plan: Plan, params: TrainParams) -> dict[str, Any]:
    """The DeepSpeed config for `plan`, to pass as `TrainingArguments(deepspeed=...)`.

    Batch numbers, precision and clipping are written out, not "auto": the Trainer's
    `HfTrainerDeepSpeedConfig` compares explicit values with its own arguments and the real world size,
    so a launch with a different process count, or arguments that drifted from the plan, fails before
    the first step instead of training a different effective batch. Only the bucket sizes that depend
    on the model's hidden size are "auto" (the Trainer fills them from the model config). There is no
    optimizer or scheduler section: the Trainer's AdamW and the plan's LR schedule run unchanged (as in
    a single process), and DeepSpeed compiles no optimizer op (`zero_allow_untested_optimizer` lets ZeRO
    wrap a torch optimizer; the Trainer sets it too).

    Under ZeRO-3, `stage3_gather_16bit_weights_on_model_save` makes `Trainer.save_model` gather the
    partitioned weights, so the saved adapter / model holds real tensors. Call `save_model` on every
    rank (the gather is a collective); only rank 0 writes.

    Args:
        plan: the resolved plan (zero_stage, precision, per_device_batch, grad_accum, world_size).
        params: the train section (its world size must be the plan's).

    Returns:
        A JSON-ready dict.

    Raises:
        ConfigError: the plan's batch split does not multiply out to its effective batch, or the plan was
            made for another world size than `params` describes.
    """
    if plan.zero_stage not in (0, 1, 2, 3):
        raise ConfigError(f"train.zero_stage {plan.zero_stage}: DeepSpeed ZeRO stages are 0 to 3")
    if plan.world_size != params.world_size:
        raise ConfigError(
            f"the plan was made for world_size {plan.world_size} but train.num_processes x train.num_nodes "
            f"is {params.world_size}: make the plan again"
        )
    per_step = plan.per_device_batch * plan.grad_accum * plan.world_size
    if per_step != plan.effective_batch:
        raise ConfigError(
            f"plan batch split {plan.per_device_batch} per device x {plan.grad_accum} accumulation x "
            f"{plan.world_size} processes = {per_step}, not the effective batch {plan.effective_batch}"
        )
    zero: dict[str, Any] = {"stage": plan.zero_stage}
    if plan.zero_stage >= 2:
        zero.update(
            overlap_comm=True,  # reduce gradients while the backward pass goes on
            contiguous_gradients=True,  # copy gradients into one buffer: no fragmentation at reduce
            reduce_scatter=True,
            reduce_bucket_size="auto",  # hidden_size**2, filled by the Trainer from the model
        )
    if plan.zero_stage == 2:
        zero["allgather_bucket_size"] = ALLGATHER_BUCKET
    if plan.zero_stage == 3:
        zero.update(
            stage3_prefetch_bucket_size="auto",  # 0.9 x hidden_size**2
            stage3_param_persistence_threshold="auto",  # 10 x hidden_size: small params stay whole
            stage3_max_live_parameters=1_000_000_000,
            stage3_max_reuse_distance=1_000_000_000,
            sub_group_size=1_000_000_000,
            # save_model / save_pretrained write full 16-bit weights, not each rank's empty shard
            stage3_gather_16bit_weights_on_model_save=True,
        )
    fp16 = {"enabled": True, **FP16_SCALING} if plan.precision == "fp16" else {"enabled": False}
    return {
        "train_micro_batch_size_per_gpu": plan.per_device_batch,
        "gradient_accumulation_steps": plan.grad_accum,
        "train_batch_size": plan.effective_batch,
        "gradient_clipping": MAX_GRAD_NORM,
        "bf16": {"enabled": plan.precision == "bf16"},
        "fp16": fp16,
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 1_000_000,  # the Trainer logs every step; DeepSpeed's own print is noise
        "wall_clock_breakdown": False,
    }


def fsdp_config(plan: Plan) -> dict[str, Any]:
    """The FSDP settings for `plan`, to pass as `TrainingArguments(fsdp=True, fsdp_config=...)`.

    FSDP2 (`fully_shard`, accelerate's fsdp_version 2; transformers deprecates FSDP1): every decoder layer
    (the model's `_no_split_modules`) is one shard unit, the root takes the rest. ZeRO-3 is full shard
    (`reshard_after_forward`: each layer frees its gathered weights after forward and gathers them again
    for backward), ZeRO-2 is shard grad op (weights stay gathered from forward to backward; gradients and
    optimizer states stay sharded).

    Checkpoints and the saved adapter use the full state dict: `save_model` gathers it (a collective: call
    it on every rank) and rank 0 writes the same files as DeepSpeed or one process, so the adapter loads
    with peft and a checkpoint resumes on any world size. Activation checkpointing is FSDP's own (the
    Trainer refuses both it and its `activation_checkpointing` argument).

    Raises:
        ConfigError: the plan is not an FSDP plan (zero_stage 2 or 3 with `train.backend: fsdp`).
    """
    if not uses_fsdp(plan) or plan.zero_stage not in (2, 3):
        raise ConfigError(
            f"train.zero_stage {plan.zero_stage} with train.backend {plan.backend}: FSDP shards only at "
            "zero_stage 2 (shard grad op) or 3 (full shard)"
        )
    return {
        "version": 2,
        "reshard_after_forward": plan.zero_stage == 3,
        "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
        "state_dict_type": "FULL_STATE_DICT",
        "activation_checkpointing": plan.gradient_checkpointing,
        "cpu_ram_efficient_loading": False,
    }


@contextmanager
def fsdp_on_cpu(args: Any) -> Iterator[None]:
    """Create the Trainer inside this block so that FSDP also shards on CPU (tests, CI).

    accelerate enables FSDP only on accelerator devices: on CPU its state stays MULTI_CPU, the FSDP plugin
    the Trainer passes is dropped without a word and the run trains as plain DDP. FSDP2 itself runs on CPU
    with gloo, so for an FSDP plan on CPU the process state reads as multi-device while the Trainer's
    `Accelerator` is created: it then keeps the plugin, records FSDP as the distributed type of the
    process (as it does on GPU) and shards with `fully_shard` on the CPU device. On GPU, and for any other
    plan, this does nothing.

    Args:
        args: the `TrainingArguments` the Trainer gets (`fsdp`, `use_cpu`).
    """
    if not (args.fsdp and args.use_cpu):
        yield
        return
    state = PartialState()
    kept = state.distributed_type
    if kept == DistributedType.MULTI_CPU:
        state.distributed_type = DistributedType.MULTI_GPU
    try:
        yield
    finally:
        if state.distributed_type == DistributedType.MULTI_GPU:  # no Accelerator took FSDP: as it was
            state.distributed_type = kept


def launcher_for(params: TrainParams, plan: Plan) -> Launcher:
    """Which launcher starts the workers.

    One process needs none ('single', even under DeepSpeed). `train.launcher: auto` picks the DeepSpeed
    launcher when ZeRO is on, else torchrun; on many nodes without a hostfile it picks torchrun, whose
    rendezvous needs only `master_addr` / `master_port` (torchrun starts DeepSpeed workers just as well).

    Raises:
        ConfigError: `launcher: deepspeed` on many nodes without `train.hostfile`.
    """
    if plan.world_size == 1:
        return "single"
    if params.launcher == "deepspeed":
        if params.num_nodes > 1 and params.hostfile is None:
            raise ConfigError(
                "train.launcher deepspeed on several nodes needs train.hostfile (`host slots=N` per line); "
                "or set train.launcher: torchrun and start it on every node"
            )
        return "deepspeed"
    if params.launcher == "torchrun":
        return "torchrun"
    if uses_deepspeed(plan) and (params.num_nodes == 1 or params.hostfile is not None):
        return "deepspeed"
    return "torchrun"


def launch_command(
    params: TrainParams,
    plan: Plan,
    module_args: list[str],
    python: str,
    node_rank: int | None = None,
    module: str = WORKER_MODULE,
) -> list[str]:
    """The command that starts the workers, each running `python -m tuneline.train.worker <module_args>`.

    Run it with `worker_env` added to the environment. Launchers run through `python -m` so the workers
    use the same interpreter (virtual environment) as the stage.

    One node: torchrun or deepspeed with `num_processes` workers on 127.0.0.1:`master_port`.

    Many nodes, torchrun (static rendezvous): run the same command on every node, each with its own
    `node_rank` (0 on the node at `master_addr`, which hosts rank 0 and so writes the outputs):

        python -m torch.distributed.run --nnodes 2 --nproc_per_node 8 --node_rank 1 \\
            --master_addr 10.0.0.1 --master_port 29500 -m tuneline.train.worker --job job.json

    Many nodes, deepspeed with `train.hostfile` (`host slots=N` per line): run it once, on the node at
    `master_addr`; the runner reaches the other hosts over passwordless ssh (pdsh) and starts
    `num_processes` workers on each of the first `num_nodes` hosts. Pass `node_rank` instead to start it
    on every node yourself (`--no_ssh --node_rank R`, no ssh needed). Either way the job file, the model
    and the virtual environment must be at the same paths on every node (a shared filesystem).

    Args:
        params: the train section (num_processes, num_nodes, launcher, hostfile, master_addr/port).
        plan: the resolved plan (world size, ZeRO stage).
        module_args: arguments for the worker module.
        python: the interpreter (usually `sys.executable`).
        node_rank: this node's rank for multi-node launches (torchrun: default 0; deepspeed: see above).
        module: the module each worker runs (tests start their own worker through the same command).

    Returns:
        argv for `subprocess.run`.

    Raises:
        ConfigError: see `launcher_for`; a node_rank outside 0..num_nodes-1; many nodes with a loopback
            master_addr; a hostfile with fewer hosts than num_nodes or fewer slots than num_processes; a
            hostfile without node_rank where torchrun launches (FSDP, DDP: nobody would start the others).
    """
    launcher = launcher_for(params, plan)
    worker = ["-m", module, *module_args]
    if launcher == "single":
        return [python, *worker]
    nodes = params.num_nodes
    if node_rank is not None and not 0 <= node_rank < nodes:
        raise ConfigError(f"node_rank {node_rank} is outside 0..{nodes - 1} (train.num_nodes {nodes})")
    check_rendezvous(params)
    if launcher == "torchrun":
        return [*_torchrun(params, plan, python, node_rank), *worker]
    # deepspeed: --no_local_rank because the workers read LOCAL_RANK from the environment.
    runner = _deepspeed_runner(params, python, node_rank)
    return [*runner, "--no_local_rank", "--module", module, *module_args]


def _torchrun(params: TrainParams, plan: Plan, python: str, node_rank: int | None) -> list[str]:
    """torchrun's part of the command: a static rendezvous at master_addr (127.0.0.1 on one node)."""
    nodes = params.num_nodes
    if nodes > 1 and params.hostfile is not None and node_rank is None:
        # Without a node rank a hostfile means "node 0 starts the others over ssh", which only the
        # deepspeed launcher does: torchrun would wait at the rendezvous for nodes nobody started.
        raise ConfigError(
            f"train.hostfile is read by the deepspeed launcher only, and this run starts with torchrun "
            f"(train.backend {plan.backend}, zero_stage {plan.zero_stage}, train.launcher "
            f"{params.launcher}): start every node with `tuneline train --node-rank K`"
        )
    addr = params.master_addr if nodes > 1 else "127.0.0.1"
    return [
        python,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        str(nodes),
        "--nproc_per_node",
        str(params.num_processes),
        "--node_rank",
        str(node_rank or 0),
        "--master_addr",
        addr,
        "--master_port",
        str(params.master_port),
    ]


def _deepspeed_runner(params: TrainParams, python: str, node_rank: int | None) -> list[str]:
    """The deepspeed launcher's part of the command: one node, or the hosts of `train.hostfile`."""
    cmd = [python, "-m", "deepspeed.launcher.runner", "--master_port", str(params.master_port)]
    if params.hostfile is None:
        return [*cmd, "--num_gpus", str(params.num_processes)]
    _check_hostfile(params)
    cmd += [
        "--hostfile",
        str(params.hostfile),
        "--master_addr",
        params.master_addr,
        "--num_nodes",
        str(params.num_nodes),
        "--num_gpus",
        str(params.num_processes),
    ]
    if node_rank is not None:
        cmd += ["--no_ssh", "--node_rank", str(node_rank)]
    return cmd


def check_rendezvous(params: TrainParams) -> None:
    """Many nodes need a `master_addr` the other nodes can reach (node 0's address, not a loopback one).

    Not a config validator: `tuneline plan` for a many-node layout needs no address.

    Raises:
        ConfigError: `train.num_nodes` > 1 with a loopback `train.master_addr`.
    """
    nodes = params.num_nodes
    if nodes > 1 and params.master_addr in ("127.0.0.1", "localhost", "::1"):
        raise ConfigError(
            f"train.master_addr {params.master_addr!r} with train.num_nodes {nodes}: the other nodes cannot "
            "reach a loopback address; set it to node 0's address"
        )


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (bind port 0 and let the OS choose)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def worker_env(
    params: TrainParams, plan: Plan, environ: Mapping[str, str] | None = None, use_cpu: bool | None = None
) -> dict[str, str]:
    """Environment variables to add for the workers (merge over `os.environ`).

    - OMP_NUM_THREADS: the cores of this node shared between its workers, unless already set (torch would
      otherwise start one thread per core in every worker and oversubscribe the machine).
    - TOKENIZERS_PARALLELISM=false: workers get pre-tokenized rows; a forked tokenizer pool only warns.
    - DS_ACCELERATOR=cpu on a machine without CUDA (DeepSpeed would detect it anyway, with a warning).
    - single process under DeepSpeed: RANK=0, LOCAL_RANK=0, WORLD_SIZE=1, LOCAL_WORLD_SIZE=1,
      MASTER_ADDR=127.0.0.1 and a free MASTER_PORT. DeepSpeed always builds a process group; without
      these it tries MPI discovery and fails (no mpi4py).

    Args:
        params: the train section.
        plan: the resolved plan.
        environ: the environment the command will inherit (default `os.environ`).
        use_cpu: whether the run is on CPU (default: no CUDA device visible).
    """
    environ = os.environ if environ is None else environ
    if use_cpu is None:
        use_cpu = not torch.cuda.is_available()
    env: dict[str, str] = {"TOKENIZERS_PARALLELISM": "false"}
    if "OMP_NUM_THREADS" not in environ:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // params.num_processes))
    if use_cpu:
        env["DS_ACCELERATOR"] = "cpu"
    if launcher_for(params, plan) == "single" and uses_deepspeed(plan):
        env.update(
            RANK="0",
            LOCAL_RANK="0",
            WORLD_SIZE="1",
            LOCAL_WORLD_SIZE="1",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(free_port()),
        )
    return env


@dataclass(frozen=True)
class ProcessInfo:
    """Where this process stands in the job, from the launcher's environment variables."""

    rank: int
    local_rank: int
    world_size: int
    local_world_size: int

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes outputs, reports and MLflow."""
        return self.rank == 0

    @property
    def is_local_main(self) -> bool:
        """Local rank 0: the one process per node for node-local work (caches)."""
        return self.local_rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def process_info(environ: Mapping[str, str] | None = None) -> ProcessInfo:
    """This process's rank and world size (torchrun, the deepspeed launcher and `worker_env` set them).

    Without them (a plain `python` run) the process is rank 0 of 1.
    """
    env = os.environ if environ is None else environ
    world = int(env.get("WORLD_SIZE", "1"))
    return ProcessInfo(
        rank=int(env.get("RANK", "0")),
        local_rank=int(env.get("LOCAL_RANK", "0")),
        world_size=world,
        local_world_size=int(env.get("LOCAL_WORLD_SIZE", str(world))),
    )


def is_main_process(environ: Mapping[str, str] | None = None) -> bool:
    """Whether this process is rank 0 (also true outside any launcher)."""
    return process_info(environ).is_main


def init_worker(plan: Plan, use_cpu: bool) -> ProcessInfo:
    """Set up this worker's process group before `TrainingArguments` and `from_pretrained`.

    Under DeepSpeed the process group is created through `deepspeed.init_distributed` (gloo on CPU,
    nccl on GPU). On GPU the Trainer would do the same; on CPU (`use_cpu=True`) it creates a plain torch
    group that DeepSpeed's own bookkeeping does not see, and ZeRO-3's `zero.Init` inside
    `from_pretrained` then assumes one process and rejects the batch size. Plain DDP needs nothing here:
    `TrainingArguments(ddp_backend=...)` creates its group.

    Returns:
        The process's rank and world size.
    """
    info = process_info()
    if uses_deepspeed(plan):
        import deepspeed  # lazy: ~7 s on top of torch (python -X importtime); only ZeRO-2/3 workers use it

        deepspeed.init_distributed(dist_backend="gloo" if use_cpu else "nccl", auto_mpi_discovery=False)
    return info


def job_fingerprint(plan: Plan, train_rows: list[Any], val_rows: list[Any], checkpoints: Path) -> str:
    """A hash of what a worker trains: the plan, the rows and the checkpoint folder (`check_same_job`)."""
    text = json.dumps([plan.to_dict(), train_rows, val_rows, str(checkpoints)], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def check_same_job(fingerprint: str, owns_outputs: bool) -> None:
    """Every rank trains the same job, and global rank 0 runs under the stage that owns the outputs.

    On many nodes each node's stage prepares its own job; a node with other splits, another config or
    another base model would train other rows in lockstep with the rest and nobody would notice. And rank
    0 writes the adapter and the result file its stage waits for: it must be one of node 0's processes
    (torchrun's c10d rendezvous orders hosts by name, so it may not be). Call it on every rank once the
    process group exists (a collective); without one (a single process) it does nothing.

    Args:
        fingerprint: `job_fingerprint` of this rank's job.
        owns_outputs: whether this rank was started by the stage that writes the outputs (node 0).

    Raises:
        ConfigError: on every rank, naming the ranks and hosts that differ.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    seen: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(seen, (fingerprint, owns_outputs, socket.gethostname()))
    if not seen[0][1]:
        raise ConfigError(
            f"global rank 0 runs on {seen[0][2]} under a stage that does not write the outputs (node rank "
            "> 0): the rendezvous ordered the nodes otherwise; start each node with `tuneline train "
            "--node-rank K` (static rendezvous: node 0 holds ranks 0..num_processes-1)"
        )
    odd = [f"rank {r} on {host}" for r, (other, _, host) in enumerate(seen) if other != seen[0][0]]
    if odd:
        raise ConfigError(
            f"{', '.join(odd)} prepared another job than rank 0 on {seen[0][2]} (rows, plan or checkpoint "
            "folder differ): every node needs the same config, splits and base model at the same paths"
        )


def training_kwargs(params: TrainParams, plan: Plan, use_cpu: bool) -> dict[str, Any]:
    """The `TrainingArguments` keywords that depend on how the run is distributed.

    - `deepspeed`: the generated config under ZeRO 2/3, else None (DDP or one process).
    - `ddp_backend`: gloo on CPU, nccl on GPU. DeepSpeed on CPU also needs gloo named here: with
      `use_cpu=True` accelerate would pick MPI where torch was built with it.
    - `ddp_find_unused_parameters=False`: every LoRA adapter / full weight gets a gradient, so the
      search for unused ones (the Trainer's default for a peft model) is a wasted graph walk per step,
      and together with gradient checkpointing DDP fails on parameters marked ready twice.
    - `max_grad_norm`, `bf16`, `fp16`: must equal the DeepSpeed config's `gradient_clipping` and
      precision sections (the Trainer refuses a mismatch), so they come from here too.
    - `fsdp`, `fsdp_config`: FSDP2 under `train.backend: fsdp` (`fsdp_config`), else off.
    - `activation_checkpointing`: the plan's gradient checkpointing, by the Trainer; under FSDP by FSDP
      itself (`fsdp_config`), and the Trainer's must then be off.
    - `save_only_model=False` under DeepSpeed / FSDP: the Trainer refuses `save_only_model` together with
      `load_best_model_at_end`, because it restores the best model from the engine's checkpoint.
    """
    use_ds, use_fsdp = uses_deepspeed(plan), uses_fsdp(plan)
    out: dict[str, Any] = {
        "use_cpu": use_cpu,
        "deepspeed": deepspeed_config(plan, params) if use_ds else None,
        "fsdp": use_fsdp,
        "fsdp_config": fsdp_config(plan) if use_fsdp else None,
        # one plain process needs no backend (naming one makes accelerate look for a process group)
        "ddp_backend": ("gloo" if use_cpu else "nccl") if plan.world_size > 1 or use_ds else None,
        "ddp_find_unused_parameters": False,
        "activation_checkpointing": plan.gradient_checkpointing and not use_fsdp,
        "max_grad_norm": MAX_GRAD_NORM,
        "bf16": plan.precision == "bf16",
        "fp16": plan.precision == "fp16",
    }
    if use_ds or use_fsdp:
        out["save_only_model"] = False
    return out


def _check_hostfile(params: TrainParams) -> None:
    """The hostfile names at least `num_nodes` hosts, each of the first ones with `num_processes` slots."""
    assert params.hostfile is not None
    hosts = hostfile_hosts(params.hostfile)
    if len(hosts) < params.num_nodes:
        raise ConfigError(
            f"train.hostfile {params.hostfile} lists {len(hosts)} hosts, train.num_nodes {params.num_nodes}"
        )
    short = [f"{h} slots={n}" for h, n in hosts[: params.num_nodes] if n < params.num_processes]
    if short:
        raise ConfigError(
            f"train.hostfile {params.hostfile}: {', '.join(short)} has fewer slots than train.num_processes "
            f"{params.num_processes}"
        )


def hostfile_hosts(path: Path) -> list[tuple[str, int]]:
    """(host, slots) per line of a DeepSpeed hostfile; blank lines and `#` comments are skipped.

    Raises:
        ConfigError: the file is missing or a line is not `host slots=N`.
    """
    if not path.is_file():
        raise ConfigError(f"train.hostfile {path}: no such file")
    hosts = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        parts = text.split()
        if len(parts) != 2 or not parts[1].startswith("slots=") or not parts[1][6:].isdigit():
            raise ConfigError(
                f"train.hostfile {path} line {n}: expected `host slots=N`, got {line.strip()!r}"
            )
        hosts.append((parts[0], int(parts[1][6:])))
    return hosts
