"""The train stage when things go wrong: NaN loss, CUDA out-of-memory, a run killed with SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from helpers import repeat_records, repeat_workspace, train_settings, write_params
from tuneline.config.loader import Config
from tuneline.jsonio import write_jsonl
from tuneline.train import run_attempt as attempt_module
from tuneline.train.plan import backoff, make_plan


def mlflow_status(root: Path) -> str:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("test").experiment_id])
    return run.info.status


def poisoned_base(base: Path, out: Path, records: list[dict[str, Any]], bad_id: str) -> Path:
    """A copy of `base` whose embedding of a token only the record `bad_id` uses is inf (a garbage row)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuneline.lm.chat import ChatFormat
    from tuneline.lm.labels import encode_records

    tokenizer = AutoTokenizer.from_pretrained(base)
    chat = ChatFormat(tokenizer)
    ids = {r["id"]: set(encode_records(chat, [r], 512).rows[0]["input_ids"]) for r in records}
    others = set().union(*(v for k, v in ids.items() if k != bad_id))
    token = min(ids[bad_id] - others)
    model = AutoModelForCausalLM.from_pretrained(base)
    model.config.tie_word_embeddings = False  # the demo base ties lm_head: untie, so only this row sees inf
    model.lm_head.weight = torch.nn.Parameter(model.get_input_embeddings().weight.detach().clone())
    with torch.no_grad():
        model.get_input_embeddings().weight[token] = float("inf")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.mark.integration
def test_nan_loss_stops_with_a_diagnosis_and_no_adapter(tiny_base: Path, tmp_path: Path) -> None:
    from tuneline.train.train import TrainingError, run

    layout = repeat_workspace(tmp_path)
    garbage = {**repeat_records(1)[0], "id": "garbage"}
    garbage["messages"] = [{"role": "user", "content": "Repeat the word zyzzyva qoph."},
                           {"role": "assistant", "content": "cat"}]
    records = [*repeat_records(48), garbage]
    write_jsonl(layout.processed("train"), records)
    base = poisoned_base(tiny_base, tmp_path / "poisoned", records, "garbage")
    with pytest.raises(TrainingError, match="health monitor") as err:
        settings = train_settings(tmp_path, base, lr="auto", effective_batch=7, per_device_batch=7)
        run(Config.model_validate(settings), layout)
    assert err.value.exit_code == 5
    health = json.loads(layout.report("train_health").read_text())
    assert health["status"] == "failed"
    diagnosis = health["diagnosis"]
    assert "garbage" in diagnosis["row_ids"] and len(diagnosis["row_ids"]) == 7  # the batch that broke
    assert [c["cause"] for c in diagnosis["causes"]] == ["bad_rows"]
    assert not (tmp_path / "models" / "adapter").exists()  # no adapter marked good
    assert not layout.report("train").exists()
    assert mlflow_status(tmp_path) == "FAILED"


@pytest.mark.integration
def test_out_of_memory_backs_off_and_resumes(
    tiny_base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A CUDA OOM at step 3 of the first attempt: the rerun halves the batch, keeps the effective batch."""
    import torch
    from transformers import TrainerCallback

    from tuneline.train.train import run

    class OomAtStep3(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if state.global_step == 3:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    real_fit = attempt_module.fit
    calls: list[int] = []

    def fit_with_oom(*args: Any, callbacks: list, **kw: Any) -> Any:
        calls.append(args[1].per_device_train_batch_size)
        extra = [OomAtStep3()] if len(calls) == 1 else []
        return real_fit(*args, callbacks=[*callbacks, *extra], **kw)

    monkeypatch.setattr(attempt_module, "fit", fit_with_oom)
    layout = repeat_workspace(tmp_path)
    report = run(Config.model_validate(train_settings(tmp_path, tiny_base, eval_every=2)), layout)
    assert calls == [4, 2]
    assert (report["per_device_batch"], report["grad_accum"], report["effective_batch"]) == (2, 4, 8)
    assert report["steps"] == 12  # 48 rows / 8 x 2 epochs, the same as without the OOM
    facts = json.loads(layout.report("train_run").read_text())
    assert facts["resumed_from"].endswith("checkpoint-2")
    assert "per_device_batch 4 -> 2" in facts["oom_retries"][0]


def test_backoff_keeps_the_effective_batch(tiny_base: Path) -> None:
    cfg = Config.model_validate({"model": {"name_or_path": str(tiny_base)},
                                 "train": {"effective_batch": 24, "per_device_batch": 6}})
    plan = make_plan(cfg)
    seen = []
    while plan is not None:
        assert plan.per_device_batch * plan.grad_accum * plan.world_size == 24
        seen.append((plan.per_device_batch, plan.gradient_checkpointing))
        plan = backoff(plan)
    assert seen == [(6, False), (3, True), (1, True)]


@pytest.mark.integration
def test_rerun_after_kill_9_resumes_to_the_same_adapter(tiny_base: Path, tmp_path: Path) -> None:
    """Fault 20: after kill -9 the rerun resumed to the same weights, but lost the history of the steps
    before the crash (so train_loss_first, the summary and the adapter folder's hash changed), left the
    killed MLflow run RUNNING forever and an empty models/.adapter.tmp-* behind."""
    import mlflow

    from tuneline.train.recovery import REPLACED_BY_TAG, REPLACES_TAG
    from tuneline.train.train import run

    settings = train_settings(tmp_path / "a", tiny_base, epochs=3, eval_every=2)
    first = repeat_workspace(tmp_path / "a")
    expected_report = run(Config.model_validate(settings), first)
    expected = tmp_path / "a" / "models" / "adapter"

    root = tmp_path / "b"
    second = repeat_workspace(root)
    killed = {**settings, "tracking": {"uri": f"sqlite:///{root}/mlflow.db", "experiment": "test"}}
    params = write_params(root, killed)
    cli = Path(sys.executable).with_name("tuneline")
    proc = subprocess.Popen([str(cli), "train", "--params", str(params)], cwd=root,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ})
    checkpoints = root / ".tuneline" / "checkpoints"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if list(checkpoints.glob("*/checkpoint-4/trainer_state.json")):
            break
        time.sleep(0.02)
    assert proc.poll() is None, "training finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (root / "models" / "adapter").exists()
    assert [p.name.startswith(".adapter.tmp-") for p in (root / "models").iterdir()] == [True]
    # a folder of the same shape that tuneline did not make stays
    (root / "models" / ".adapter.tmp-mine-keep").mkdir()

    report = run(Config.model_validate(killed), second)
    facts = json.loads(second.report("train_run").read_text())
    assert facts["resumed_from"] and int(facts["resumed_from"].rsplit("-", 1)[1]) >= 4
    assert not list(checkpoints.glob("*/checkpoint-*"))  # finished: checkpoints cleaned up

    # The interruption left no trace: same report, same adapter folder byte for byte (so the same DVC
    # hash, the same model version), the history from step 1.
    assert report == expected_report
    resumed = root / "models" / "adapter"
    assert sorted(p.name for p in resumed.iterdir()) == sorted(p.name for p in expected.iterdir())
    for path in expected.iterdir():
        assert (resumed / path.name).read_bytes() == path.read_bytes(), path.name
    history = json.loads((resumed / "train_summary.json").read_text())["history"]
    assert [h["step"] for h in history if "train_loss" in h] == list(range(1, report["steps"] + 1))
    assert second.report("train_health").read_text() == first.report("train_health").read_text()
    assert sorted(p.name for p in (root / "models").iterdir()) == [".adapter.tmp-mine-keep", "adapter"]

    client = mlflow.MlflowClient(tracking_uri=killed["tracking"]["uri"])
    runs = client.search_runs([client.get_experiment_by_name("test").experiment_id])
    by_status = {r.info.status: r for r in runs}
    assert sorted(by_status) == ["FINISHED", "KILLED"] and len(runs) == 2
    dead, done = by_status["KILLED"], by_status["FINISHED"]
    assert dead.data.tags[REPLACED_BY_TAG] == done.info.run_id
    assert done.data.tags[REPLACES_TAG] == dead.info.run_id
    steps = [m.step for m in client.get_metric_history(done.info.run_id, "train_loss")]
    assert sorted(steps) == list(range(1, report["steps"] + 1))  # the resumed run's curve is whole


def test_a_second_train_of_the_same_output_is_refused_while_one_runs(tmp_path: Path) -> None:
    from tuneline.train.recovery import OutputBusy, claim_output

    out = tmp_path / "models" / "adapter"
    with claim_output(tmp_path, out) as claim:
        claim.record(mlflow_run_id="r1", tracking_uri="sqlite:///x.db")
        with pytest.raises(OutputBusy, match="another `tuneline train` writing"):
            with claim_output(tmp_path, out):
                pass
        with claim_output(tmp_path, tmp_path / "models" / "other"):  # another output: its own lock
            pass
    with claim_output(tmp_path, out) as claim:  # released by the clean exit, which also cleared the record
        assert claim.previous == {}
    with pytest.raises(RuntimeError), claim_output(tmp_path, out) as claim:
        claim.record(mlflow_run_id="r3", tracking_uri="sqlite:///x.db")
        raise RuntimeError("died")  # an exception (or a kill) keeps the record for the next holder
    with claim_output(tmp_path, out) as claim:
        assert claim.previous == {"mlflow_run_id": "r3", "tracking_uri": "sqlite:///x.db"}


def test_only_tuneline_work_folders_of_this_output_are_dead(tmp_path: Path) -> None:
    from tuneline.train.recovery import dead_work_dirs, new_work_dir

    out = tmp_path / "models" / "adapter"
    made = new_work_dir(out)
    for name in (".adapter.tmp-notmine-longer", ".adapterx.tmp-abcdefgh", ".other.tmp-abcdefgh", "adapter"):
        (out.parent / name).mkdir()
    (out.parent / ".adapter.tmp-file1234").write_text("a file, not a work folder")
    (out.parent / ".adapter.tmp-link1234").symlink_to(tmp_path)
    assert dead_work_dirs(out) == [made]
