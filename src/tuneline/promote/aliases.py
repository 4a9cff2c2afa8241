"""Moving the registry aliases: promote, roll back, record approvals. The gate's side effects.

Aliases (MLflow 3; stages are deprecated): `champion` serves, `previous_champion` is the one a
promotion replaced (what `rollback` restores), `challenger` is the newest registered candidate.

Concurrency. MLflow has no compare-and-set on aliases, so two promotions racing could both read the
same champion and both "win", leaving `previous_champion` pointing at the wrong version. Every alias
move therefore runs under an exclusive lock and re-reads the aliases inside it: `promote` only moves
the champion if it is still `expected_champion` (the version the caller's gate compared against),
else it refuses with status CONFLICT. Aliases are written previous-first, then champion, so a crash
between the two leaves the champion untouched and a retry is safe; after the writes the aliases are
read back, so a writer that bypassed the lock is detected (RegistryError) instead of going unnoticed.

What the lock covers (`promote/locks.py` chooses it; the `registry` params configure it):
- a PostgreSQL tracking store (`postgresql+psycopg://...`), or any store with `registry.lock_url` /
  TUNELINE_LOCK_DATABASE_URL naming a PostgreSQL database (an `http(s)://` MLflow server: its
  backend database): an advisory lock in that database, keyed by the model name, so every promoter
  on every host that reaches the database is serialized, and a killed one releases it.
- a sqlite or file store: a lock file next to the database / in the store directory, covering every
  host that uses that file.
- an `http(s)://` server with no lock database: a lock file in this host's temp directory (this host
  only), with a warning naming `registry.lock_url`; `registry.require_cross_host_lock` refuses instead.
Not covered: writers that move aliases without this module (the MLflow UI, other scripts); the
read-back detects them after the fact, it cannot prevent them.

Evidence. A judgment is only good against the champion it was made on. The gate's decision is recorded
on the version as `gate.*` tags, with the champion it compared against (`gate.champion`, "none" for a
first model) written before the verdict `gate.status`, which is written last: a version without
`gate.status` was never judged (a crash mid-way), and the next `tuneline promote` judges it. An
approval records what it approved (`approval.gate_status`, `approval.champion`). Under the lock,
`promote` refuses a version judged against another champion than the current one
(STALE_EVALUATION), a retired one, one the gate rejected, and (with `require_approval`) one whose
approval was of another verdict: `refusal` is that rule, for callers that check before acting too.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from tuneline.config.registry import RegistryParams
from tuneline.promote.gate import Decision
from tuneline.promote.locks import registry_lock
from tuneline.promote.status import AbAction, MoveStatus, Verdict, passed
from tuneline.registry.registry import RegistryError, aliases_of, client, set_version_tags, version_tags

logger = logging.getLogger(__name__)

APPROVAL_DECISIONS = ("approved", "rejected")
GATE_STATUS = "gate.status"  # the verdict; written last, so its presence means "judged"
JUDGED_AGAINST = "gate.champion"  # the champion version the gate compared against ("none": there was none)
NONE = "none"
Refusal = Literal[
    MoveStatus.RETIRED, MoveStatus.REJECTED, MoveStatus.APPROVAL_REJECTED, MoveStatus.STALE_EVALUATION
]


@dataclass(frozen=True)
class PromotionResult:
    """What `promote` did. `promoted` is False for every refusal; `reason` says why."""

    promoted: bool
    status: MoveStatus
    version: str
    champion_before: str | None
    previous_champion: str | None
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class RollbackResult:
    """What `rollback` did: the champion now, the version it demoted, or why nothing moved."""

    rolled_back: bool
    status: Literal[MoveStatus.ROLLED_BACK, MoveStatus.NOTHING_TO_ROLL_BACK, MoveStatus.CONFLICT]
    champion: str | None
    demoted: str | None
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _version_or_none(value: str) -> str | None:
    return None if value == NONE else value


def refusal(
    tags: Mapping[str, str], version: str, champion: str | None, *, require_evidence: bool = False
) -> tuple[Refusal, str] | None:
    """Why `version` (given its tags) may not replace `champion`, as (status, reason); None when it may.

    Pure, so `promote` applies it under the lock and callers can apply it before acting (e.g. before
    recording an approval). Statuses: RETIRED (the A/B test, or the gate, retired it), REJECTED
    (its gate.status did not pass), APPROVAL_REJECTED (a person rejected it), STALE_EVALUATION
    (judged against another champion than `champion`, or, with `require_evidence`, no record of which).
    """
    if "retired.at" in tags or tags.get("ab.decision") == AbAction.RETIRE:
        why = tags.get("retired.reason") or "worse on live feedback"
        return (MoveStatus.RETIRED,
                f"version {version} was retired ({why}); a retired version is never promoted")
    gate = tags.get(GATE_STATUS)
    if gate is not None and not passed(gate):
        return (MoveStatus.REJECTED,
                f"the gate said {gate} for version {version}: only a version that passed moves")
    if tags.get("approval.decision") == "rejected":
        return (MoveStatus.APPROVAL_REJECTED,
                f"version {version} was rejected by {tags.get('approval.by', '?')}")
    judged = tags.get(JUDGED_AGAINST)
    if judged is None:
        if not require_evidence:
            return None
        return MoveStatus.STALE_EVALUATION, (
            f"version {version} has no record of the champion its gate compared against ({JUDGED_AGAINST}); "
            "re-run evaluate against the current champion, then promote"
        )
    if _version_or_none(judged) != champion:
        return MoveStatus.STALE_EVALUATION, (
            f"version {version} was judged against champion {judged}, but the champion is now "
            f"{champion or NONE}: that evaluation is stale; re-run evaluate against the current champion "
            "(`tuneline evaluate`, or `dvc repro -f -s evaluate`), then promote"
        )
    return None


def approval_of(uri: str, model_name: str, version: str | int) -> dict[str, str] | None:
    """The recorded approval of a version ({"decision", "by", "at", "note"}), or None."""
    tags = client(uri).get_model_version(model_name, str(version)).tags
    if "approval.decision" not in tags:
        return None
    return {k: tags.get(f"approval.{k}", "") for k in ("decision", "by", "at", "note")}


def record_approval(
    uri: str, model_name: str, version: str | int, approver: str, decision: str, note: str = ""
) -> dict[str, str]:
    """Record a person's release decision on a version as tags (approval.decision/by/at/note), with the
    evidence it was made on: the gate status it approved (approval.gate_status) and the champion that
    verdict was judged against (approval.champion); "none" where the version has none.

    Raises:
        ValueError: `decision` is not "approved" or "rejected", or `approver` is empty.
    """
    if decision not in APPROVAL_DECISIONS:
        raise ValueError(f"approval decision {decision!r}: expected one of {', '.join(APPROVAL_DECISIONS)}")
    if not approver.strip():
        raise ValueError("approval needs the approver's name")
    mc = client(uri)
    judged = mc.get_model_version(model_name, str(version)).tags
    tags = {
        "approval.decision": decision,
        "approval.by": approver,
        "approval.at": _now(),
        "approval.note": note,
        "approval.gate_status": judged.get(GATE_STATUS, NONE),
        "approval.champion": judged.get(JUDGED_AGAINST, NONE),
    }
    for key, value in tags.items():
        mc.set_model_version_tag(model_name, str(version), key, value)
    logger.info("registry: %s version %s %s by %s", model_name, version, decision, approver)
    return tags


def _approval_problem(tags: Mapping[str, str], version: str) -> str | None:
    """Why the version's recorded approval does not cover its verdict now; None when it does: an approval
    approves one verdict, so `approval.gate_status` must still be the version's `gate.status`."""
    if tags.get("approval.decision") != "approved":
        return f"version {version} has no recorded approval"
    now = tags.get(GATE_STATUS, NONE)
    approved = tags.get("approval.gate_status", now)
    if approved != now:
        return (f"the approval of version {version} was of gate status {approved}, the gate now says {now}: "
                "approve again")
    return None


def _refusal_under_lock(
    tags: Mapping[str, str], version: str, champion: str | None, expected: str | None, *,
    require_approval: bool, require_evidence: bool,
) -> tuple[MoveStatus, str] | None:
    """Why `promote` must not move the champion to `version`, in the order the checks are reported;
    None when it may. Pure: `promote` applies it to what it read under the lock."""
    why = None if champion == version else refusal(tags, version, champion, require_evidence=require_evidence)
    # A stale verdict is reported as such even when the champion moved too: re-evaluating fixes both.
    if why is not None and why[0] == MoveStatus.STALE_EVALUATION:
        return why
    if champion != expected:
        return MoveStatus.CONFLICT, (
            f"champion is {champion or 'unset'}, expected {expected or 'unset'}: "
            "another promotion or rollback moved it; re-run the gate against the new champion"
        )
    if champion == version:
        return MoveStatus.ALREADY_CHAMPION, f"version {version} is already the champion"
    if why is not None:
        return why
    if require_approval:
        problem = _approval_problem(tags, version)
        if problem is not None:
            return MoveStatus.NEEDS_APPROVAL, problem
    return None


def _move_champion(
    uri: str, model_name: str, version: str, current: Mapping[str, str], names: RegistryParams, lock: Any
) -> str | None:
    """Write the aliases of a promotion (previous first), read them back, tag the version. Returns the
    version the previous alias names now.

    Raises:
        RegistryError: the aliases read back are not the ones written (a writer without the lock).
    """
    mc = client(uri)
    champion = current.get(names.champion_alias)
    # Previous first: a crash between the two writes leaves the champion as it was.
    if champion is not None:
        mc.set_registered_model_alias(model_name, names.previous_alias, champion)
    mc.set_registered_model_alias(model_name, names.champion_alias, version)
    if current.get(names.challenger_alias) == version:
        mc.delete_registered_model_alias(model_name, names.challenger_alias)
    after = aliases_of(uri, model_name)
    want_previous = champion if champion is not None else current.get(names.previous_alias)
    if after.get(names.champion_alias) != version or after.get(names.previous_alias) != want_previous:
        raise RegistryError(
            f"{model_name}: aliases changed during the promotion of version {version} (now {after}); "
            f"something moved them without the registry lock ({lock})"
        )
    mc.set_model_version_tag(model_name, version, "promotion.at", _now())
    mc.set_model_version_tag(model_name, version, "promotion.replaced", champion or NONE)
    return want_previous


def promote(
    uri: str,
    model_name: str,
    version: str | int,
    expected_champion: str | int | None,
    registry: RegistryParams | None = None,
    *,
    require_approval: bool = False,
    require_evidence: bool = False,
    lock_path: str | Path | None = None,
    timeout_s: float = 60.0,
) -> PromotionResult:
    """Make `version` the champion if the champion is still `expected_champion` (compare-and-set), and
    the version's recorded evidence still holds (`refusal`: judged against this champion, not retired,
    not rejected).

    The old champion takes the previous alias; the challenger alias is removed when it named
    `version` (it is no longer a challenger). The version gets tags promotion.at and
    promotion.replaced.

    Args:
        uri: tracking / registry URI.
        model_name: registered model name.
        version: the version to promote.
        expected_champion: the champion the caller's gate compared against (None: there was none).
        registry: the `registry` params (alias names, and the lock: `lock_url`,
            `require_cross_host_lock`); None: the defaults.
        require_approval: refuse unless the version carries an "approved" approval tag, given to the
            gate status it has now.
        require_evidence: refuse a version with no record of the champion it was judged against
            (gate.champion); callers acting on a recorded verdict (approval, A/B) set it.
        lock_path: lock file override, when no lock database is configured (`locks.choose_lock`).
        timeout_s: how long to wait for the lock.

    Returns:
        A `PromotionResult`; every refusal is a result with `promoted` False.

    Raises:
        RegistryError: unknown version, lock timeout (or no cross-host lock while one is required), or
            the aliases changed under the lock (a writer that bypasses it).
    """
    names = registry or RegistryParams()
    version = str(version)
    expected = None if expected_champion is None else str(expected_champion)
    with registry_lock(uri, model_name, names, lock_path=lock_path, timeout_s=timeout_s) as lock:
        current = aliases_of(uri, model_name)
        champion, previous = current.get(names.champion_alias), current.get(names.previous_alias)
        tags = version_tags(uri, model_name, version)
        why = _refusal_under_lock(tags, version, champion, expected, require_approval=require_approval,
                                  require_evidence=require_evidence)
        if why is not None:
            logger.warning("promote %s version %s refused (%s): %s", model_name, version, *why)
            return PromotionResult(False, why[0], version, champion, previous, why[1])
        previous = _move_champion(uri, model_name, version, current, names, lock)
    logger.info("promote: %s version %s is champion (was %s)", model_name, version, champion or "unset")
    return PromotionResult(True, MoveStatus.PROMOTED, version, champion, previous,
                           f"version {version} replaced {champion or 'no champion'}")


def rollback(
    uri: str,
    model_name: str,
    registry: RegistryParams | None = None,
    *,
    expected_champion: str | int | None = None,
    lock_path: str | Path | None = None,
    timeout_s: float = 60.0,
) -> RollbackResult:
    """Give the champion alias back to the previous champion.

    The previous alias is then removed (a second rollback has nothing to restore, rather than
    flipping back to the version just demoted). The demoted version gets tags rollback.at and
    rollback.restored; the restored one rollback.restored_from.

    Args:
        uri: tracking / registry URI.
        model_name: registered model name.
        registry: the `registry` params (alias names, and the lock: `lock_url`,
            `require_cross_host_lock`); None: the defaults.
        expected_champion: when given, roll back only if this is still the champion.
        lock_path: lock file override, when no lock database is configured.
        timeout_s: how long to wait for the lock.

    Returns:
        A `RollbackResult`; NOTHING_TO_ROLL_BACK and CONFLICT are results, not errors.

    Raises:
        RegistryError: lock timeout.
    """
    names = registry or RegistryParams()
    mc = client(uri)
    with registry_lock(uri, model_name, names, lock_path=lock_path, timeout_s=timeout_s):
        current = aliases_of(uri, model_name)
        champion, previous = current.get(names.champion_alias), current.get(names.previous_alias)
        if previous is None or previous == champion:
            return RollbackResult(
                False,
                MoveStatus.NOTHING_TO_ROLL_BACK,
                champion,
                None,
                f"no {names.previous_alias} alias on {model_name}: nothing to roll back to",
            )
        if expected_champion is not None and champion != str(expected_champion):
            return RollbackResult(
                False,
                MoveStatus.CONFLICT,
                champion,
                None,
                f"champion is {champion or 'unset'}, expected {expected_champion}",
            )
        mc.set_registered_model_alias(model_name, names.champion_alias, previous)
        mc.delete_registered_model_alias(model_name, names.previous_alias)
        stamp = _now()
        if champion is not None:
            mc.set_model_version_tag(model_name, champion, "rollback.at", stamp)
            mc.set_model_version_tag(model_name, champion, "rollback.restored", previous)
        mc.set_model_version_tag(model_name, previous, "rollback.restored_from", champion or "none")
    logger.warning("rollback: %s champion %s -> %s", model_name, champion or "unset", previous)
    return RollbackResult(
        True,
        MoveStatus.ROLLED_BACK,
        previous,
        champion,
        f"champion {champion or 'unset'} rolled back to version {previous}",
    )


def apply_decision(
    uri: str,
    model_name: str,
    version: str | int,
    decision: Decision,
    expected_champion: str | int | None,
    registry: RegistryParams | None = None,
    *,
    keep_challenger_as_canary: bool = False,
    evidence: Mapping[str, Any] | None = None,
    lock_path: str | Path | None = None,
    timeout_s: float = 60.0,
) -> PromotionResult:
    """Record the gate's decision on the version (gate.* tags) and act on it.

    The champion the gate compared against (`expected_champion`) is recorded first as gate.champion,
    with `evidence`; the verdict gate.status is written last, after the action: until then the version
    counts as not judged, so a crash anywhere in between leaves it for the next run to judge (an action
    done twice is a no-op or a refusal: the champion alias is compare-and-set).

    Verdict REJECTED: the champion stays; the version loses the challenger alias (status REJECTED).
    PROMOTE: `promote`. AWAIT_APPROVAL: `promote` with `require_approval`, so it moves the champion only
    once `record_approval` said "approved" (status NEEDS_APPROVAL until then); call it again after the
    approval. With `keep_challenger_as_canary` and a champion in place, a passing version keeps the
    challenger alias instead (status CANARY): live traffic decides (`tuneline ab decide`), with the same
    approval rule.

    Args:
        decision: the `gate.Decision` for this version.
        keep_challenger_as_canary: hold a passing version as challenger for an A/B canary instead of
            promoting it now (the `promote` params' setting of that name).
        evidence: more gate.* tags on what the decision was made on (e.g. gate.champion_sha256).
        (the rest as `promote`)
    """
    version = str(version)
    verdict = decision.tags()
    status = verdict.pop(GATE_STATUS)
    judged = NONE if expected_champion is None else str(expected_champion)
    set_version_tags(uri, model_name, version, {JUDGED_AGAINST: judged, **(evidence or {}), **verdict})
    result = _act(uri, model_name, version, decision, expected_champion, registry or RegistryParams(),
                  keep_challenger_as_canary=keep_challenger_as_canary, lock_path=lock_path,
                  timeout_s=timeout_s)
    set_version_tags(uri, model_name, version, {GATE_STATUS: status})
    return result


def _act(
    uri: str,
    model_name: str,
    version: str,
    decision: Decision,
    expected_champion: str | int | None,
    names: RegistryParams,
    *,
    keep_challenger_as_canary: bool,
    lock_path: str | Path | None,
    timeout_s: float,
) -> PromotionResult:
    """The alias move `apply_decision` leads to (see there)."""
    if keep_challenger_as_canary and decision.status != Verdict.REJECTED and expected_champion is not None:
        set_version_tags(uri, model_name, version, {"canary.started": _now()})
        reason = (f"version {version} passed the gate; served as {names.challenger_alias} beside champion "
                  f"{expected_champion} until `tuneline ab decide` judges live feedback")
        logger.info("promote: %s", reason)
        return PromotionResult(False, MoveStatus.CANARY, version, str(expected_champion),
                               aliases_of(uri, model_name).get(names.previous_alias), reason)
    if decision.status == Verdict.REJECTED:
        reason = f"gate rejected version {version}: {', '.join(decision.failed)}"
        # A rejected candidate must not stay `challenger`: the server would canary it to real users.
        retire_challenger(uri, model_name, version, reason, names, lock_path=lock_path, timeout_s=timeout_s)
        current = aliases_of(uri, model_name)
        logger.warning("promote: %s", reason)
        return PromotionResult(
            False,
            MoveStatus.REJECTED,
            version,
            current.get(names.champion_alias),
            current.get(names.previous_alias),
            reason,
        )
    return promote(
        uri,
        model_name,
        version,
        expected_champion,
        names,
        require_approval=decision.status == Verdict.AWAIT_APPROVAL,
        lock_path=lock_path,
        timeout_s=timeout_s,
    )


def retire_challenger(
    uri: str,
    model_name: str,
    version: str | int,
    reason: str,
    registry: RegistryParams | None = None,
    *,
    lock_path: str | Path | None = None,
    timeout_s: float = 60.0,
) -> PromotionResult:
    """Take the challenger alias off `version` (an A/B canary that lost); the champion is untouched.

    Compare-and-set like `promote`: refused with CONFLICT when the challenger alias no longer names
    `version`. The version gets tags retired.at and retired.reason.
    """
    names = registry or RegistryParams()
    version = str(version)
    mc = client(uri)
    with registry_lock(uri, model_name, names, lock_path=lock_path, timeout_s=timeout_s):
        current = aliases_of(uri, model_name)
        champion, previous = current.get(names.champion_alias), current.get(names.previous_alias)
        if current.get(names.challenger_alias) != version:
            now = current.get(names.challenger_alias) or "unset"
            return PromotionResult(False, MoveStatus.CONFLICT, version, champion, previous,
                                   f"{names.challenger_alias} is {now}, not version {version}")
        mc.delete_registered_model_alias(model_name, names.challenger_alias)
        mc.set_model_version_tag(model_name, version, "retired.at", _now())
        mc.set_model_version_tag(model_name, version, "retired.reason", reason)
    logger.warning("retire: %s version %s is no longer %s: %s", model_name, version, names.challenger_alias,
                   reason)
    return PromotionResult(False, MoveStatus.RETIRED, version, champion, previous, reason)

