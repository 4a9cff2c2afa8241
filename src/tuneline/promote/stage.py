"""`tuneline promote`: register the candidate, check train/serve parity, run the gate, move aliases.

1. The trained adapter (with its base) is logged to MLflow as a pyfunc model in the training's run
   and registered as a new version of `registry.model_name`, alias `registry.challenger_alias`;
   version tags carry the eval metrics and the lineage (git commit, data and params hashes).
2. Parity: greedy replies of the version loaded back from the registry must equal the in-process
   adapter's on `promote.parity_probe_rows` test prompts (catches a changed template or EOS).
3. The gate (`gate.decide`, pure) compares candidate, base and champion from reports/evaluate.json
   with the criteria in `promote`, and adds training health, data validation and parity.
4. `aliases.apply_decision` moves the champion alias (compare-and-set under a lock), or leaves it
   when the gate rejects or a person has not yet approved (`promote.require_approval`).

"Not promoted" is a result: reports/promote.json holds the decision table either way, and the
stage succeeds. `tuneline promote --approve VERSION` records a person's approval and promotes.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from tuneline.config.loader import Config
from tuneline.errors import InputFileError, TunelineError
from tuneline.jsonio import write_json
from tuneline.layout import Layout
from tuneline.promote.gate import passed
from tuneline.train.inputs import read_split, resolve_model_path

logger = logging.getLogger(__name__)


class GateError(TunelineError):
    """An approval for a version the gate did not pass."""


def _read(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise InputFileError(f"{path}: {what} not found; run the stages before promote (`dvc repro promote`)")
    return json.loads(path.read_text(encoding="utf-8"))


def gate_metrics(scores: dict[str, Any] | None) -> dict[str, Any] | None:
    """Evaluate's metric names as the gate reads them (json_valid_rate is the schema-valid rate)."""
    if scores is None:
        return None
    out = dict(scores)
    if scores.get("json_valid_rate") is not None:
        out["schema_valid_rate"] = scores["json_valid_rate"]
    return out


def probe_conversations(layout: Layout, n: int) -> list[list[dict[str, str]]]:
    """The first `n` test prompts (the conversation before its last assistant turn) without tools: the
    pyfunc's input is plain role / content messages."""
    from tuneline.lm.generate import split_prompts

    plain = [r for r in read_split(layout, "test")
             if not any(m["role"] == "tool" for m in r["messages"]) and not (r.get("meta") or {}).get("tools")
             and not (r.get("meta") or {}).get("tool_call_messages")]
    prompts, _ = split_prompts(plain)
    return [p["messages"] for p in prompts[:n]]


def _training_run(cfg: Config, layout: Layout, train: dict[str, Any]) -> str:
    """The training's MLflow run (reports/train_run.json) when this tracking store has it; else a new
    run carrying the training's lineage (e.g. the model came from the DVC cache, trained elsewhere)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from tuneline.train.tracking import git_commit, start_run

    facts = layout.report("train_run")
    run_id = json.loads(facts.read_text(encoding="utf-8")).get("mlflow_run_id") if facts.is_file() else None
    if run_id:
        try:
            mlflow.MlflowClient(tracking_uri=cfg.tracking.uri).get_run(str(run_id))
            return str(run_id)
        except MlflowException:
            pass
    logger.warning("promote: the training run is not in %s (model from the DVC cache?); registering from a "
                   "new run with the training's lineage tags", cfg.tracking.uri)
    tags = {"stage": "register", "params_hash": str(train.get("params_hash")),
            "data_hash": str(train.get("data_hash"))}
    commit = git_commit(layout.root.resolve())
    if commit:
        tags["git_commit"] = commit
    return start_run(cfg.tracking.uri, cfg.tracking.experiment, tags, {}, "register")


def adapter_sha256(adapter: Path) -> str:
    """Content hash of the trained model directory (every file, by name and bytes)."""
    from tuneline.train.tracking import sha256_files

    return sha256_files(sorted(p for p in adapter.rglob("*") if p.is_file()))


def already_registered(cfg: Config, sha: str) -> dict[str, Any] | None:
    """The newest version holding exactly this adapter, if any (then nothing is registered again: a
    nightly run that retrained nothing must not add a duplicate version, nor re-judge a rejected one)."""
    from tuneline.registry.registry import aliases_of, client

    reg, uri = cfg.registry, cfg.tracking.uri
    found = client(uri).search_model_versions(f"name='{reg.model_name}' and tags.adapter_sha256='{sha}'")
    if not found:
        return None
    newest = max(found, key=lambda v: int(v.version))
    version = str(newest.version)
    aliases = aliases_of(uri, reg.model_name)
    held = [a for a in (reg.champion_alias, reg.challenger_alias) if aliases.get(a) == version]
    return {"version": version, "alias": held[0] if held else None,
            "champion": aliases.get(reg.champion_alias), "gate": newest.tags.get("gate.status")}


def _unchanged(cfg: Config, layout: Layout, found: dict[str, Any], sha: str) -> dict[str, Any]:
    status = "already_champion" if found["alias"] == cfg.registry.champion_alias else "already_registered"
    held = found["alias"] or f"no alias; the gate said {found['gate'] or 'nothing'}"
    reason = (f"the candidate is version {found['version']} ({held}), adapter sha256 {sha[:12]}: "
              "nothing new to register or judge")
    report = {
        "model_name": cfg.registry.model_name, "version": found["version"], "adapter_sha256": sha,
        "decision": {"promote": False, "status": "unchanged", "passed": status == "already_champion",
                     "failed": [], "rows": []},
        "result": {"promoted": False, "status": status, "version": found["version"],
                   "champion_before": found["champion"], "previous_champion": None, "reason": reason},
        "parity": None, "champion_before": found["champion"], "champion_after": found["champion"],
    }
    write_json(layout.report("promote"), report)
    logger.info("promote: %s", reason)
    return report


def run(cfg: Config, layout: Layout) -> dict[str, Any]:
    """The `promote` stage; see the module docstring. Returns reports/promote.json's content.

    Raises:
        InputFileError: reports of earlier stages or the trained model are missing.
    """
    from tuneline.promote.aliases import apply_decision
    from tuneline.promote.gate import decide
    from tuneline.registry.registry import aliases_of, parity_check, register_candidate

    evaluation = _read(layout.report("evaluate"), "evaluation report")
    health = _read(layout.report("train_health"), "training health report")
    data = _read(layout.report("validate_splits"), "data contract report")
    train = _read(layout.report("train"), "training report")
    uri, reg = cfg.tracking.uri, cfg.registry
    adapter = layout.root / cfg.train.output_dir
    base = resolve_model_path(cfg, layout)
    variants = evaluation["variants"]
    sha = adapter_sha256(adapter)
    found = already_registered(cfg, sha)
    if found is not None:
        return _unchanged(cfg, layout, found, sha)

    tags = {f"eval.{k}": v for k, v in variants["candidate"].items() if isinstance(v, int | float)}
    tags.update({"data_hash": train.get("data_hash"), "params_hash": train.get("params_hash"),
                 "adapter_sha256": sha})
    version = register_candidate(uri, reg.model_name, _training_run(cfg, layout, train), base, adapter, tags,
                                 challenger_alias=reg.challenger_alias, copy_base=reg.copy_base,
                                 max_new_tokens=cfg.evaluate.max_new_tokens)
    probes = probe_conversations(layout, cfg.promote.parity_probe_rows)
    parity = (parity_check(uri, reg.model_name, version, base, adapter, probes, cfg.evaluate.max_new_tokens)
              if probes else {"parity": True, "rows": 0, "mismatches": []})
    champion_before = aliases_of(uri, reg.model_name).get(reg.champion_alias)
    context = {
        "train_health_status": health.get("status"),
        "train_alerts": health.get("alerts", []),
        "early_stopped": train.get("early_stopped"),
        "data_valid": data.get("success"),
        "parity": parity["parity"],
    }
    decision = decide(cfg.promote, gate_metrics(variants["candidate"]), gate_metrics(variants["base"]),
                      gate_metrics(variants.get("champion")), context)
    result = apply_decision(uri, reg.model_name, version, decision, champion_before, reg,
                            canary=cfg.promote.canary)
    report = {
        "model_name": reg.model_name,
        "version": version,
        "adapter_sha256": sha,
        "decision": decision.to_dict(),
        "result": result.to_dict(),
        "parity": parity,
        "champion_before": champion_before,
        "champion_after": aliases_of(uri, reg.model_name).get(reg.champion_alias),
    }
    write_json(layout.report("promote"), report)
    logger.info("promote: version %s: %s; %s", version, decision.summary(), result.reason)
    return report


def approve(cfg: Config, layout: Layout, version: str, approver: str, note: str = "") -> dict[str, Any]:
    """A person's release approval of `version`, then the promotion it was waiting for."""
    from tuneline.promote.aliases import promote, record_approval
    from tuneline.registry.registry import aliases_of, version_info

    reg = cfg.registry
    gate = version_info(cfg.tracking.uri, reg.model_name, version)["tags"].get("gate.status")
    if not passed(gate):
        raise GateError(f"{reg.model_name} version {version}: the gate said {gate or 'nothing'}; "
                        "only a version that passed the gate can be approved")
    record_approval(cfg.tracking.uri, reg.model_name, version, approver, "approved", note)
    current = aliases_of(cfg.tracking.uri, reg.model_name).get(reg.champion_alias)
    result = promote(cfg.tracking.uri, reg.model_name, version, current, reg, require_approval=True)
    logger.info("promote: version %s approved by %s: %s", version, approver, result.reason)
    return result.to_dict()


def rollback(cfg: Config) -> dict[str, Any]:
    """Give the champion alias back to the previous champion."""
    from tuneline.promote.aliases import rollback as move_back

    result = move_back(cfg.tracking.uri, cfg.registry.model_name, cfg.registry)
    logger.info("rollback: %s", result.reason)
    return result.to_dict()
