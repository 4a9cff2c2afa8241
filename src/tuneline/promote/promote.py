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

Evidence. reports/evaluate.json names the champion it compared against (`champion_version`,
`champion_adapter_sha256`) and the candidate it scored (`candidate_adapter_sha256`). When the champion
has moved since, or the trained model is not the one evaluated, nothing is registered or judged: the
result is "stale_evaluation" (re-run evaluate). The version records the champion it was judged against
(gate.champion), and the alias moves only while that is still the champion.

"Registered" is not "judged": a version of this adapter with no gate.status (a run that crashed after
registering it) is judged by the next run instead of being skipped as already registered.

"Not promoted" is a result: reports/promote.json holds the decision table either way, and the
stage succeeds. `tuneline promote --approve VERSION` records a person's approval and promotes, only
while the version's verdict still holds (judged against the current champion, not retired).
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
from tuneline.lm.chat import ChatFormat
from tuneline.lm.errors import RenderError
from tuneline.lm.source import resolve_model_path
from tuneline.promote.aliases import (
    GATE_STATUS,
    JUDGED_AGAINST,
    NONE,
    PromotionResult,
    apply_decision,
    promote,
    record_approval,
    refusal,
)
from tuneline.promote.aliases import rollback as move_back
from tuneline.promote.gate import decide
from tuneline.promote.status import MoveStatus, passed
from tuneline.registry.registry import (
    aliases_of,
    client,
    parity_check,
    register_candidate,
    run_exists,
    version_info,
)
from tuneline.splits import read_split
from tuneline.tracking import adapter_sha256, git_commit, start_run

logger = logging.getLogger(__name__)


class GateError(TunelineError):
    """An approval for a version the gate did not pass."""


def _read(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise InputFileError(f"{path}: {what} not found; run the stages before promote (`dvc repro promote`)")
    return json.loads(path.read_text(encoding="utf-8"))


# Names that older versions of the gate also accepted for two metrics (through an alias table); the
# evaluate stage has always reported the json_* names, which are now the only ones.
LEGACY_METRIC_NAMES = {"schema_valid_rate": "json_valid_rate", "field_accuracy": "json_field_accuracy"}


def gate_metrics(scores: dict[str, Any] | None) -> dict[str, Any] | None:
    """A variant's metrics (reports/evaluate.json) as the gate reads them: by the evaluate stage's names.

    The one reader of the older names (`LEGACY_METRIC_NAMES`): a report that holds one is read as the
    current name, which wins when both are there and it is not None (as the old alias table did).
    """
    if scores is None:
        return None
    out = {k: v for k, v in scores.items() if k not in LEGACY_METRIC_NAMES}
    for old, new in LEGACY_METRIC_NAMES.items():
        if old in scores and out.get(new) is None:
            out[new] = scores[old]
    return out


def must_copy_base(copy_base: bool, base: str | Path, root: Path) -> bool:
    """Copy the base into the version when configured, or when the base lives inside the workspace: there
    it is a pipeline output (the demo base, `models/base`) that the next experiment replaces, and a
    version that only referred to it would lose its base."""
    local = Path(base)
    if copy_base or not local.is_dir():
        return copy_base
    return local.resolve().is_relative_to(root.resolve())


def probe_conversations(layout: Layout, n: int, adapter: Path) -> list[list[dict[str, str]]]:
    """The first `n` test prompts (the conversation before its last assistant turn) without tools that
    the adapter's chat template can render: the pyfunc's input is plain role / content messages."""
    from tuneline.lm.generate import split_prompts  # lazy: torch+transformers, ~3.8 s; --approve/--rollback
    from tuneline.lm.load import load_tokenizer, saved_chat_options  # lazy: as lm.generate

    plain = [r for r in read_split(layout, "test")
             if not any(m["role"] == "tool" for m in r["messages"]) and not (r.get("meta") or {}).get("tools")
             and not (r.get("meta") or {}).get("tool_call_messages")]
    prompts, _ = split_prompts(plain)
    chat = ChatFormat(load_tokenizer(adapter), None, bool(saved_chat_options(adapter).get("merge_system")))
    out = []
    for p in prompts:
        try:
            chat.conversation({"id": p["id"], "messages": p["messages"], "meta": {}})
        except RenderError:
            continue
        out.append(p["messages"])
        if len(out) == n:
            break
    return out


def _training_run(cfg: Config, layout: Layout, train: dict[str, Any]) -> str:
    """The training's MLflow run (reports/train_run.json) when this tracking store has it; else a new
    run carrying the training's lineage (e.g. the model came from the DVC cache, trained elsewhere)."""
    facts = layout.report("train_run")
    run_id = json.loads(facts.read_text(encoding="utf-8")).get("mlflow_run_id") if facts.is_file() else None
    if run_id and run_exists(cfg.tracking.uri, str(run_id)):
        return str(run_id)
    logger.warning("promote: the training run is not in %s (model from the DVC cache?); registering from a "
                   "new run with the training's lineage tags", cfg.tracking.uri)
    tags = {"stage": "register", "params_hash": str(train.get("params_hash")),
            "data_hash": str(train.get("data_hash"))}
    commit = git_commit(layout.root.resolve())
    if commit:
        tags["git_commit"] = commit
    return start_run(cfg.tracking.uri, cfg.tracking.experiment, tags, {}, "register")


def already_registered(cfg: Config, sha: str) -> dict[str, Any] | None:
    """The newest version holding exactly this adapter, if any (then nothing is registered again: a
    nightly run that retrained nothing must not add a duplicate version, nor re-judge a judged one;
    "gate" is None for a version registered but never judged)."""
    reg, uri = cfg.registry, cfg.tracking.uri
    found = client(uri).search_model_versions(f"name='{reg.model_name}' and tags.adapter_sha256='{sha}'")
    if not found:
        return None
    newest = max(found, key=lambda v: int(v.version))
    version = str(newest.version)
    aliases = aliases_of(uri, reg.model_name)
    held = [a for a in (reg.champion_alias, reg.challenger_alias) if aliases.get(a) == version]
    return {"version": version, "alias": held[0] if held else None,
            "champion": aliases.get(reg.champion_alias), "gate": newest.tags.get(GATE_STATUS)}


def _unchanged(cfg: Config, layout: Layout, found: dict[str, Any], sha: str) -> dict[str, Any]:
    status = (MoveStatus.ALREADY_CHAMPION if found["alias"] == cfg.registry.champion_alias
              else MoveStatus.ALREADY_REGISTERED)
    held = found["alias"] or f"no alias; the gate said {found['gate'] or 'nothing'}"
    reason = (f"the candidate is version {found['version']} ({held}), adapter sha256 {sha[:12]}: "
              "nothing new to register or judge")
    report = {
        "model_name": cfg.registry.model_name, "version": found["version"], "adapter_sha256": sha,
        "decision": {"promote": False, "status": "unchanged", "passed": status == MoveStatus.ALREADY_CHAMPION,
                     "failed": [], "rows": []},
        "result": {"promoted": False, "status": status, "version": found["version"],
                   "champion_before": found["champion"], "previous_champion": None, "reason": reason},
        "parity": None, "champion_before": found["champion"], "champion_after": found["champion"],
    }
    write_json(layout.report("promote"), report)
    logger.info("promote: %s", reason)
    return report


def stale_reason(evaluation: dict[str, Any], candidate_sha: str, champion: str | None,
                 champion_sha: str | None) -> str | None:
    """Why reports/evaluate.json is no evidence for judging this candidate now; None when it is.

    Args:
        evaluation: reports/evaluate.json's content.
        candidate_sha: `adapter_sha256` of the trained model about to be judged.
        champion: the champion version now (None: there is none).
        champion_sha: the current champion's recorded adapter_sha256 tag (None: none recorded).
    """
    rerun = ("re-run evaluate against the current champion (`tuneline evaluate`, or "
             "`dvc repro -f -s evaluate`), then promote")
    if "champion_version" not in evaluation:
        return f"reports/evaluate.json does not record which champion it compared against: {rerun}"
    if evaluation.get("candidate_adapter_sha256") != candidate_sha:
        return (f"reports/evaluate.json scored another trained model (adapter sha256 "
                f"{str(evaluation.get('candidate_adapter_sha256'))[:12]}, now {candidate_sha[:12]}): {rerun}")
    version = evaluation["champion_version"]
    if version is None and "champion" in evaluation.get("variants", {}):
        return f"reports/evaluate.json compared against a champion that is not a registry version: {rerun}"
    if version != champion:
        return (f"reports/evaluate.json compared against champion {version or 'none'}, the champion is now "
                f"{champion or 'none'}: {rerun}")
    if champion is not None and evaluation.get("champion_adapter_sha256") != champion_sha:
        return (f"reports/evaluate.json compared against version {version} with adapter sha256 "
                f"{str(evaluation.get('champion_adapter_sha256'))[:12]}, the registry's version {version} "
                f"has {str(champion_sha)[:12]}: {rerun}")
    return None


def _stale(cfg: Config, layout: Layout, sha: str, champion: str | None, version: str | None,
           reason: str) -> dict[str, Any]:
    report = {
        "model_name": cfg.registry.model_name, "version": version, "adapter_sha256": sha,
        "decision": {"promote": False, "status": MoveStatus.STALE_EVALUATION, "passed": False, "failed": [],
                     "rows": []},
        "result": {"promoted": False, "status": MoveStatus.STALE_EVALUATION, "version": version,
                   "champion_before": champion, "previous_champion": None, "reason": reason},
        "parity": None, "champion_before": champion, "champion_after": champion,
    }
    write_json(layout.report("promote"), report)
    logger.warning("promote: not judged: %s", reason)
    return report


def run(cfg: Config, layout: Layout) -> dict[str, Any]:
    """The `promote` stage; see the module docstring. Returns reports/promote.json's content.

    Raises:
        InputFileError: reports of earlier stages or the trained model are missing.
    """
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
    if found is not None and (found["gate"] is not None or found["alias"] == reg.champion_alias):
        return _unchanged(cfg, layout, found, sha)
    champion_before = aliases_of(uri, reg.model_name).get(reg.champion_alias)
    champion_sha = (None if champion_before is None else
                    client(uri).get_model_version(reg.model_name, champion_before).tags.get("adapter_sha256"))
    stale = stale_reason(evaluation, sha, champion_before, champion_sha)
    if stale is not None:
        return _stale(cfg, layout, sha, champion_before, None if found is None else found["version"], stale)

    if found is None:
        tags = {f"eval.{k}": v for k, v in variants["candidate"].items() if isinstance(v, int | float)}
        tags.update({"data_hash": train.get("data_hash"), "params_hash": train.get("params_hash"),
                     "adapter_sha256": sha})
        version = register_candidate(uri, reg.model_name, _training_run(cfg, layout, train), base, adapter,
                                     tags, challenger_alias=reg.challenger_alias,
                                     copy_base=must_copy_base(reg.copy_base, base, layout.root),
                                     max_new_tokens=cfg.evaluate.max_new_tokens)
    else:
        # Registered by a run that stopped before the gate's verdict: judge it now (and finish the
        # registration when the run stopped before the challenger alias).
        version = found["version"]
        logger.warning("promote: version %s was registered but never judged; judging it now", version)
        if aliases_of(uri, reg.model_name).get(reg.challenger_alias) is None:
            client(uri).set_registered_model_alias(reg.model_name, reg.challenger_alias, version)
    probes = probe_conversations(layout, cfg.promote.parity_probe_rows, Path(adapter))
    parity = (parity_check(uri, reg.model_name, version, base, adapter, probes, cfg.evaluate.max_new_tokens)
              if probes else {"parity": True, "rows": 0, "mismatches": []})
    context = {
        "train_health_status": health.get("status"),
        "train_alerts": health.get("alerts", []),
        "early_stopped": train.get("early_stopped"),
        "data_valid": data.get("success"),
        "parity": parity["parity"],
    }
    decision = decide(cfg.promote, gate_metrics(variants["candidate"]), gate_metrics(variants["base"]),
                      gate_metrics(variants.get("champion")), context)
    # The champion the evaluation compared against, which stale_reason found still in place; the alias
    # move is compare-and-set against it, so a promotion in the meantime makes this one refuse.
    evidence = {"gate.champion_sha256": evaluation.get("champion_adapter_sha256") or "none"}
    result = apply_decision(uri, reg.model_name, version, decision, evaluation["champion_version"], reg,
                            keep_challenger_as_canary=cfg.promote.keep_challenger_as_canary,
                            evidence=evidence)
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
    """A person's release approval of `version`, then the promotion it was waiting for.

    The approval is recorded only while the gate's verdict still holds: the version was judged against
    the current champion, and was not retired or rejected since (`aliases.refusal`); otherwise the
    result says why (e.g. "stale_evaluation") and nothing is recorded or moved. The champion alias
    then moves compare-and-set against the champion the version was judged against.

    Raises:
        GateError: the gate did not pass the version (or never judged it).
    """
    reg, uri, version = cfg.registry, cfg.tracking.uri, str(version)
    tags = version_info(uri, reg.model_name, version)["tags"]
    gate = tags.get(GATE_STATUS)
    if not passed(gate):
        raise GateError(f"{reg.model_name} version {version}: the gate said {gate or 'nothing'}; "
                        "only a version that passed the gate can be approved")
    current = aliases_of(uri, reg.model_name)
    champion = current.get(reg.champion_alias)
    why = None if champion == version else refusal(tags, version, champion, require_evidence=True)
    if why is not None:
        logger.warning("promote: approval of version %s refused (%s): %s", version, *why)
        return PromotionResult(False, why[0], version, champion, current.get(reg.previous_alias),
                               why[1]).to_dict()
    record_approval(uri, reg.model_name, version, approver, "approved", note)
    judged = tags.get(JUDGED_AGAINST)  # present unless the version is the champion already
    expected = champion if champion == version else (None if judged == NONE else judged)
    result = promote(uri, reg.model_name, version, expected, reg, require_approval=True,
                     require_evidence=True)
    logger.info("promote: version %s approved by %s: %s", version, approver, result.reason)
    return result.to_dict()


def rollback(cfg: Config) -> dict[str, Any]:
    """Give the champion alias back to the previous champion."""
    result = move_back(cfg.tracking.uri, cfg.registry.model_name, cfg.registry)
    logger.info("rollback: %s", result.reason)
    return result.to_dict()
