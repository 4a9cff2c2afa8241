"""The A/B report: champion vs challenger on live feedback, as reports/ab.json and reports/ab.html.

The current experiment is the traffic served under the current aliases: exchanges routed to the
`champion` variant and answered by the version that holds the champion alias now, and likewise for
the challenger. Exchanges of earlier versions (a previous challenger, the champion before a
promotion) are kept out of the comparison but listed in the per-version table, so nothing disappears.

Pinned requests (the caller chose the variant) are counted and shown, but their feedback is not in
the test: those users picked their model, so they are not a random sample of the traffic.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, defaultdict
from datetime import UTC, datetime
from typing import Any

from tuneline.ab.page import VARIANTS, report_html, summary_line
from tuneline.ab.page import render_markdown as render_markdown  # re-exported for callers of report
from tuneline.ab.stats import clustered_two_proportion_test, outcome, percentile, wilson
from tuneline.config import Config
from tuneline.config.ab import AbParams
from tuneline.feedback.store import FeedbackStore
from tuneline.jsonio import write_json, write_text
from tuneline.layout import Layout
from tuneline.redact import redact
from tuneline.registry.registry import RegistryError, aliases_of

logger = logging.getLogger(__name__)

BUCKET_S = {"hour": 3600, "day": 86400}
MAX_NEGATIVES = 10  # latest negative exchanges shown for a person to read
SNIPPET = 400  # characters of a prompt / answer kept in the report


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def _round(x: float | None, digits: int = 6) -> float | None:
    return None if x is None else round(x, digits)


def arm_summary(rows: list[dict[str, Any]], ab: AbParams) -> dict[str, Any]:
    """Counts, latency, tokens and the positive rate (Wilson CI at 1 - alpha) of one arm's exchanges."""
    unpinned = [r for r in rows if not r["pinned"]]
    outcomes = [o for o in (outcome(r, ab.min_rating) for r in unpinned) if o is not None]
    pinned_rated = sum(outcome(r, ab.min_rating) is not None for r in rows if r["pinned"])
    rated, positive = len(outcomes), sum(outcomes)
    latency = [float(r["latency_ms"]) for r in rows]
    ci = wilson(positive, rated, ab.alpha)
    return {
        "requests": len(rows),
        "pinned": sum(bool(r["pinned"]) for r in rows),
        "latency_ms": {"p50": _round(percentile(latency, 50), 3), "p95": _round(percentile(latency, 95), 3)},
        "tokens": {
            "prompt": sum(int(r["prompt_tokens"]) for r in rows),
            "completion": sum(int(r["completion_tokens"]) for r in rows),
        },
        "finish_reasons": dict(sorted(Counter(str(r["finish_reason"]) for r in rows).items())),
        "rated": rated,
        "positive": positive,
        "negative": rated - positive,
        "pinned_rated": pinned_rated,
        "rate": _round(positive / rated) if rated else None,
        "ci": None if ci is None else [_round(ci[0]), _round(ci[1])],
        "corrections": sum(bool(r.get("correction")) for r in rows),
    }


def over_time(rows: list[dict[str, Any]], ab: AbParams) -> list[dict[str, Any]]:
    """Rated exchanges and positive rate per time bucket (UTC hours or days, by exchange time)."""
    size = BUCKET_S[ab.bucket]
    buckets: dict[int, list[bool]] = defaultdict(list)
    for r in rows:
        o = None if r["pinned"] else outcome(r, ab.min_rating)
        if o is not None:
            buckets[int(r["created_at"] // size) * size].append(o)
    return [
        {"start": _iso(t), "t": t, "rated": len(v), "positive": sum(v), "rate": _round(sum(v) / len(v))}
        for t, v in sorted(buckets.items())
    ]


def _text(value: Any, limit: int = SNIPPET) -> str:
    text = value if isinstance(value, str) else ("" if value is None else str(value))
    return text if len(text) <= limit else text[:limit] + "..."


def _prompt(messages: Any) -> str:
    """The last user message of a conversation (what the answer replied to)."""
    if isinstance(messages, list):
        for m in reversed(messages):
            if isinstance(m, dict) and m.get("role") == "user":
                return _text(m.get("content"))
    return _text(messages)


def user_clusters(rows: list[dict[str, Any]], ab: AbParams) -> list[tuple[int, int]]:
    """(positives, rated) per user among the unpinned rated exchanges; an exchange without a user id
    is its own user (it was routed by request id)."""
    per_user: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for r in rows:
        verdict = None if r["pinned"] else outcome(r, ab.min_rating)
        if verdict is not None:
            cell = per_user[r.get("user_hash") or f"request:{r['request_id']}"]
            cell[0] += int(verdict)
            cell[1] += 1
    return [(x, n) for x, n in per_user.values()]


def build_report(
    rows: list[dict[str, Any]], aliases: dict[str, str | None], ab: AbParams, model_name: str, now: float
) -> dict[str, Any]:
    """The A/B report (pure): see `ab_report` for what it holds.

    Args:
        rows: `FeedbackStore.exchanges_with_feedback` rows of `model_name`.
        aliases: {"champion": version or None, "challenger": version or None}.
        ab: the `ab` params.
        model_name: registered model name (for the report's header).
        now: the report's time (unix seconds).
    """
    arms: dict[str, dict[str, Any] | None] = {}
    timeline: dict[str, list[dict[str, Any]]] = {}
    in_arm: dict[str, list[dict[str, Any]]] = {}
    for variant in VARIANTS:
        version = aliases.get(variant)
        in_arm[variant] = [r for r in rows if r["variant"] == variant and str(r["model_version"]) == version]
        arms[variant] = None if version is None else {"version": version, **arm_summary(in_arm[variant], ab)}
        timeline[variant] = over_time(in_arm[variant], ab)
    test = None
    champ, chal = arms["champion"], arms["challenger"]
    if champ is not None and chal is not None and champ["version"] != chal["version"]:
        found = clustered_two_proportion_test(user_clusters(in_arm["champion"], ab),
                                              user_clusters(in_arm["challenger"], ab))
        if found is not None:
            test = {
                "rate_champion": _round(found["rate_a"]),
                "rate_challenger": _round(found["rate_b"]),
                "difference": _round(found["difference"]),
                "z": _round(found["z"]),
                "users_champion": found["users_a"],
                "users_challenger": found["users_b"],
                "p_value": found["p_value"],
                "alpha": ab.alpha,
                "significant": found["p_value"] < ab.alpha,
            }
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[(str(r["model_version"]), str(r["variant"]))].append(r)
    versions = []
    for (version, variant), members in sorted(groups.items(), key=lambda kv: (_vkey(kv[0][0]), kv[0][1])):
        s = arm_summary(members, ab)
        versions.append({
            "version": version, "variant": variant, "requests": s["requests"], "rated": s["rated"],
            "positive": s["positive"], "rate": s["rate"], "current": aliases.get(variant) == version,
            "first_at": _iso(min(m["created_at"] for m in members)),
            "last_at": _iso(max(m["created_at"] for m in members)),
        })
    negatives = [
        {
            "request_id": r["request_id"], "variant": v, "version": str(r["model_version"]),
            "at": _iso(r["created_at"]), "prompt": _prompt(r["messages"]), "answer": _text(r["answer"]),
            "thumb": r.get("thumb"), "rating": r.get("rating"), "correction": _text(r.get("correction")),
            "comment": _text(r.get("comment")),
        }
        for v in VARIANTS
        for r in in_arm[v]
        if outcome(r, ab.min_rating) is False
    ]
    negatives.sort(key=lambda n: (n["at"], n["request_id"]), reverse=True)
    return {
        "model_name": model_name,
        "generated_at": _iso(now),
        "aliases": {v: aliases.get(v) for v in VARIANTS},
        "params": {"min_feedback": ab.min_feedback, "alpha": ab.alpha, "min_rating": ab.min_rating,
                   "bucket": ab.bucket},
        "exchanges": len(rows),
        "in_experiment": sum(len(v) for v in in_arm.values()),
        "arms": arms,
        "test": test,
        "over_time": timeline,
        "versions": versions,
        "negatives": negatives[:MAX_NEGATIVES],
    }


def _vkey(version: str) -> tuple[int, str]:
    return (int(version), "") if version.isdigit() else (1 << 62, version)


def _current_aliases(cfg: Config) -> dict[str, str | None]:
    """{"champion": v, "challenger": v} from the registry (None for an alias nobody holds)."""
    from mlflow.exceptions import MlflowException  # lazy: mlflow ~10 s, at the end only

    reg = cfg.registry
    try:
        found = aliases_of(cfg.tracking.uri, reg.model_name)
    except MlflowException as exc:
        raise RegistryError(redact(f"registry {cfg.tracking.uri} (tracking.uri): {exc}")) from exc
    return {"champion": found.get(reg.champion_alias), "challenger": found.get(reg.challenger_alias)}


def ab_report(
    cfg: Config, layout: Layout, store: FeedbackStore | None = None, now: float | None = None
) -> dict[str, Any]:
    """Compare champion and challenger on live feedback; write reports/ab.json and reports/ab.html.

    Args:
        cfg: the config (`serve.store_url`, `registry`, `tracking.uri`, `ab`).
        layout: where the reports go.
        store: an open feedback store (default: `FeedbackStore(cfg.serve.store_url)`, closed after).
        now: the report's time (unix seconds; default: now).

    Returns:
        {"model_name", "generated_at", "aliases", "params", "exchanges", "in_experiment",
        "arms": {"champion"|"challenger": {"version", "requests", "pinned", "latency_ms": {"p50",
        "p95"}, "tokens", "finish_reasons", "rated", "positive", "negative", "pinned_rated", "rate",
        "ci", "corrections"} or None}, "test": {"rate_champion", "rate_challenger", "difference", "z",
        "p_value", "alpha", "significant"} or None, "over_time": {variant: [{"start", "t", "rated",
        "positive", "rate"}]}, "versions": [...], "negatives": [...]}.

    Raises:
        StoreError: the feedback store cannot be opened.
        RegistryError: the registry cannot be read.
        AbDataError: a feedback row holds an impossible thumb or rating.
    """
    own = store is None
    store = store or FeedbackStore(cfg.serve.store_url)
    try:
        rows = store.exchanges_with_feedback(model_name=cfg.registry.model_name)
    finally:
        if own:
            store.close()
    aliases = _current_aliases(cfg)
    report = build_report(rows, aliases, cfg.ab, cfg.registry.model_name, time.time() if now is None else now)
    write_json(layout.report("ab"), report)
    write_text(layout.report("ab", "html"), report_html(report))
    logger.info("ab: %s", summary_line(report))
    return report
