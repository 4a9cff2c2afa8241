"""The train stage itself on several processes: torchrun (gloo), DeepSpeed ZeRO-2 and FSDP, on CPU; and on two
"nodes" (two stages on this machine, each starting one process, meeting at a rendezvous)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import LORA_NO_DROPOUT, repeat_workspace, this_machines_address, train_settings, write_params
from tuneline.config.loader import Config
from tuneline.layout import Layout
from tuneline.train.distributed import free_port

pytestmark = pytest.mark.integration


def stage_settings(root: Path, base: Path, **train: object) -> dict:
    # LoRA dropout off: DeepSpeed's engine draws random numbers of its own, so with dropout the two
    # launchers would see different masks; without it they compute the same thing.
    return train_settings(root, base, **{"lr": 5e-3, "epochs": 2, "per_device_batch": 2,
                                         "master_port": free_port(), "lora": LORA_NO_DROPOUT, **train})


def train_stage(root: Path, base: Path, **train: object) -> tuple[dict, Layout]:
    from tuneline.train.train import run

    layout = repeat_workspace(root, train=32)
    return run(Config.model_validate(stage_settings(root, base, **train)), layout), layout


def adapter(root: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(root / "models" / "adapter" / "adapter_model.safetensors")


def report_history(root: Path) -> list[dict]:
    """The per-step train losses the adapter's summary keeps."""
    summary = json.loads((root / "models" / "adapter" / "train_summary.json").read_text())
    return [h for h in summary["history"] if "train_loss" in h]


@pytest.fixture(scope="module")
def ddp(tiny_base: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    root = tmp_path_factory.mktemp("ddp")
    report, _ = train_stage(root, tiny_base, num_processes=2, zero_stage=0)
    return report, root


def test_torchrun_two_processes(ddp: tuple[dict, Path]) -> None:
    import mlflow

    report, root = ddp
    assert (report["world_size"], report["zero_stage"], report["grad_accum"]) == (2, 0, 2)
    assert report["steps"] == 8  # 32 rows / effective batch 8 x 2 epochs
    assert report["val_loss_best"] < report["val_loss_before"]
    assert all(v.abs().sum() > 0 for k, v in adapter(root).items() if "lora_B" in k)
    run_id = json.loads((root / "reports" / "train_run.json").read_text())["mlflow_run_id"]
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root}/mlflow.db")
    assert client.get_run(run_id).info.status == "FINISHED"
    assert len(client.get_metric_history(run_id, "train_loss")) == 8  # rank 0 alone logs


def test_deepspeed_zero2_two_processes_matches_torchrun(
    tiny_base: Path, ddp: tuple[dict, Path], tmp_path: Path
) -> None:
    report, _ = train_stage(tmp_path, tiny_base, num_processes=2, zero_stage=2)
    assert (report["world_size"], report["zero_stage"]) == (2, 2)
    assert report["steps"] == ddp[0]["steps"]
    zero, plain = adapter(tmp_path), adapter(ddp[1])
    assert zero.keys() == plain.keys()
    assert all(v.abs().sum() > 0 for k, v in zero.items() if "lora_B" in k)
    # The same training, sharded: the losses of the first two steps agree to the last digit; later the
    # ZeRO optimizer's updates drift from plain AdamW's by a few percent (tests/test_distributed.py
    # compares the launchers' weights tightly on its own set-up).
    assert abs(report["val_loss_best"] - ddp[0]["val_loss_best"]) < 1e-2
    assert report["val_loss_best"] < report["val_loss_before"]


def test_fsdp_shard_grad_op_two_processes_matches_torchrun(
    tiny_base: Path, ddp: tuple[dict, Path], tmp_path: Path
) -> None:
    """train.backend fsdp: the stage trains with FSDP2 (not DDP in disguise: accelerate drops FSDP on CPU
    unless `fsdp_on_cpu`), saves the same adapter files and learns what DDP learns."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    report, layout = train_stage(tmp_path, tiny_base, num_processes=2, zero_stage=2, backend="fsdp")
    assert json.loads(layout.report("train_run").read_text())["engine"] == "fsdp2"
    assert json.loads((ddp[1] / "reports" / "train_run.json").read_text())["engine"] == "ddp"
    assert (report["world_size"], report["zero_stage"], report["steps"]) == (2, 2, ddp[0]["steps"])
    # The same training, sharded: the first losses agree closely; later, reduce-scatter sums in another
    # order than DDP's all-reduce and Adam magnifies the last bits of near-zero gradients (LoRA B starts at
    # 0), so the curves drift a little (tests/test_distributed.py compares the weights tightly).
    curve = [h["train_loss"] for h in report_history(tmp_path)]
    assert curve[:2] == pytest.approx([h["train_loss"] for h in report_history(ddp[1])][:2], abs=1e-4)
    assert report["val_loss_best"] == pytest.approx(ddp[0]["val_loss_best"], abs=1e-2)
    assert report["val_loss_best"] < report["val_loss_before"]
    sharded, plain = adapter(tmp_path), adapter(ddp[1])
    assert sharded.keys() == plain.keys()
    assert all(v.abs().sum() > 0 for k, v in sharded.items() if "lora_B" in k)
    out = tmp_path / "models" / "adapter"
    files = sorted(p.name for p in (ddp[1] / "models" / "adapter").iterdir())
    assert sorted(p.name for p in out.iterdir()) == files
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_base), out)
    assert sum("lora_B" in k for k in model.state_dict()) == sum("lora_B" in k for k in sharded)


def test_two_nodes_train_what_one_node_with_two_processes_trains(
    tiny_base: Path, ddp: tuple[dict, Path], tmp_path: Path
) -> None:
    """train.num_nodes 2 had no way to start node 1: `tuneline train` always launched as node 0. Now node 1
    runs `tuneline train --node-rank 1` (here: the CLI in a subprocess, the same workspace as a shared
    filesystem), node 0 the stage; each starts one process and they meet at master_addr. The result is the
    single-node two-process run's."""
    from tuneline.train.train import run

    addr = this_machines_address()
    if addr is None:
        pytest.skip("no non-loopback address on this machine")
    layout = repeat_workspace(tmp_path, train=32)
    settings = stage_settings(tmp_path, tiny_base, num_nodes=2, num_processes=1, master_addr=addr,
                              zero_stage=0)
    params = write_params(tmp_path, settings)
    cli = Path(sys.executable).with_name("tuneline")
    node1 = subprocess.Popen([str(cli), "train", "--params", str(params), "--node-rank", "1"], cwd=tmp_path,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ})
    try:
        report = run(Config.model_validate(settings), layout, node_rank=0)
        log, _ = node1.communicate(timeout=300)
    finally:
        node1.kill()
    assert node1.returncode == 0, log[-4000:]
    assert "train: node 1 done (world size 2)" in log
    assert (report["world_size"], report["zero_stage"], report["grad_accum"]) == (2, 0, 2)
    assert report["steps"] == ddp[0]["steps"]
    assert report["val_loss_best"] == pytest.approx(ddp[0]["val_loss_best"], abs=1e-5)
    two_nodes, one_node = adapter(tmp_path), adapter(ddp[1])
    assert two_nodes.keys() == one_node.keys()
    assert all((two_nodes[k] - one_node[k]).abs().max() < 1e-5 for k in one_node)
    assert all(v.abs().sum() > 0 for k, v in two_nodes.items() if "lora_B" in k)
