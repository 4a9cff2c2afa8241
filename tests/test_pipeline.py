"""The whole data half end to end: `tuneline data` on mixed dirty files, the ledger, the report, DVC."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tuneline.config import load_config
from tuneline.data_half import run_data, workspace_report
from tuneline.errors import DataValidationError
from tuneline.jsonio import read_json, read_jsonl
from tuneline.layout import Layout

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "data" / "raw" / "demo"
TOPICS = ["tea", "rivers", "bridges", "volcanoes", "owls", "chess", "glaciers", "bees", "comets", "maps"]


def dirty_inputs(root: Path) -> list[Path]:
    """An alpaca JSON array and a messages JSONL with HTML, URLs, e-mails, dups, empties and bad lines."""
    alpaca = []
    for i in range(240):
        topic = TOPICS[i % len(TOPICS)]
        alpaca.append({
            "instruction": f"Write fact number {i} about {topic} for a school quiz.",
            "input": "<p>Use <b>simple</b> words &amp; one sentence.</p>" if i % 7 == 0 else "",
            "output": f"Fact {i}: {topic} are studied at https://example.org/{i} — ask quiz{i}@example.com.",
            "category": "facts" if i % 3 else "quiz",
        })
    alpaca += [dict(alpaca[5]), dict(alpaca[6])]  # exact duplicates
    alpaca.append({"instruction": "Say nothing.", "input": "", "output": "", "category": "facts"})
    (root / "a.json").write_text(json.dumps(alpaca, ensure_ascii=False))
    lines = []
    for i in range(120):
        msgs = [{"role": "user", "content": f"请用一句话介绍第{i}个城市的历史和文化特点。"},
                {"role": "assistant", "content": f"第{i}个城市历史悠久，文化丰富，以古老的街道和美食闻名。"}]
        lines.append(json.dumps({"messages": msgs, "category": "zh"}, ensure_ascii=False))
    lines.insert(10, "{not json")
    lines.insert(20, json.dumps({"messages": [{"role": "user", "content": "hi"}]}))
    (root / "b.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return [root / "a.json", root / "b.jsonl"]


def check_ledger(out: Path) -> dict:
    report = read_json(out / "report.json")
    rows = {s: list(read_jsonl(out / f"{s}.jsonl")) for s in ("train", "val", "test")}
    rejected = list(read_jsonl(out / "rejected.jsonl"))
    original = sum(1 for rs in rows.values() for r in rs if not r.get("meta", {}).get("augmented_from"))
    assert report["ledger"]["balanced"] is True
    assert report["ledger"]["raw_rows"] == original + len(rejected)
    for row in rejected:
        assert row["stage"] and row["reason"] and row["source"]["file"]
    for stage in report["funnel"]:
        assert stage["rows_in"] == stage["rows_kept"] + stage["rows_rejected"]
    return report


@pytest.mark.integration
def test_data_command_on_dirty_files(tmp_path: Path) -> None:
    inputs = dirty_inputs(tmp_path)
    out = tmp_path / "out"
    run_data(inputs, out, load_config(None, ["validate_raw.min_rows=10"]))
    report = check_ledger(out)
    reasons = {r["reason"] for r in read_jsonl(out / "rejected.jsonl")}
    assert {"exact_duplicate"} <= reasons
    assert len(reasons) >= 3
    train = list(read_jsonl(out / "train.jsonl"))
    text = json.dumps(train, ensure_ascii=False)
    assert "https://" not in text and "@example.com" not in text and "<b>" not in text
    assert report["splits"]["test"]["rows"] > 0
    page = (out / "report.html").read_text()
    assert "Funnel" in page and "balanced" in page
    # `tuneline report` writes the same facts for a workspace (here the run's own).
    html_path = workspace_report(Layout(out / "work"), load_config(None))
    assert html_path.read_text().count("Funnel") == 1
    assert read_json(out / "work" / "reports" / "data.json")["ledger"] == report["ledger"]


@pytest.mark.integration
def test_failed_contract_still_writes_the_report(tmp_path: Path) -> None:
    inputs = dirty_inputs(tmp_path)
    out = tmp_path / "out"
    with pytest.raises(DataValidationError):
        run_data(inputs, out, load_config(None, ["validate_raw.min_rows=100000"]))
    report = read_json(out / "report.json")
    assert report["complete"] is False and report["stopped_after"] == "validate_raw"
    assert "stopped after" in (out / "report.html").read_text()


@pytest.mark.integration
def test_bundled_demo_passes_every_contract(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    run_data([DEMO], out, load_config(REPO / "params.yaml"))
    report = check_ledger(out)
    assert report["ledger"]["raw_rows"] >= 1500
    assert all(v["success"] for v in report["validation"].values())


@pytest.mark.integration
def test_dvc_repro_runs_then_is_a_no_op(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    for item in ("params.yaml", "dvc.yaml", ".dvc/config", ".dvcignore", "src", "data/raw/demo", "data/eval",
                 "data/schemas", "data/pretrain"):
        src = REPO / item
        if src.is_dir():
            shutil.copytree(src, ws / item, ignore=shutil.ignore_patterns("__pycache__"))
        elif src.exists():
            (ws / item).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, ws / item)
    params = ws / "params.yaml"
    text = params.read_text()
    for key, small in (("pretrain_steps", "5"), ("hidden_size", "32"), ("vocab_size", "512")):
        text = re.sub(rf"(\n    {key}: )\d+", rf"\g<1>{small}", text, count=1)  # the demo base, tiny
    params.write_text(text)
    bindir = Path(sys.executable).parent
    env_path = f"{bindir}:{Path('/usr/bin')}:{Path('/bin')}"
    run = lambda *cmd: subprocess.run(  # noqa: E731
        cmd, cwd=ws, env={"PATH": env_path, "HOME": str(tmp_path), "CI": "1"}, capture_output=True, text=True
    )
    assert run("git", "init", "-q").returncode == 0
    # Up to the demo base (training itself is covered by tests/test_train.py, on a tinier model).
    first = run(str(bindir / "dvc"), "repro", "build_base")
    assert first.returncode == 0, first.stdout + first.stderr
    assert (ws / "data" / "processed" / "train.jsonl").exists()
    assert (ws / "models" / "base" / "model.safetensors").exists()
    second = run(str(bindir / "dvc"), "repro", "build_base")
    assert second.returncode == 0, second.stdout + second.stderr
    assert "Running stage" not in second.stdout
    status = run(str(bindir / "dvc"), "status", "--with-deps", "build_base")
    assert "up to date" in status.stdout
    # A change to one params section makes stale exactly the stages that declare it (DVC then reruns
    # downstream stages only when their inputs really change).
    params = ws / "params.yaml"
    params.write_text(params.read_text().replace("urls: placeholder", "urls: remove"))
    stale = run(str(bindir / "dvc"), "status", "--with-deps", "build_base").stdout
    changed = {line.rstrip(":") for line in stale.splitlines() if line and not line[0].isspace()}
    assert changed == {"clean", "validate_splits"}, stale
