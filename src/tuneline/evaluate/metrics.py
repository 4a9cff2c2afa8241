"""Evaluation metrics: pure functions over (reference, prediction) pairs, no torch.

Per row: exact match (after whitespace normalization), ROUGE-L F1 (the `rouge-score` library with a
tokenizer that keeps CJK text: one token per CJK character, words elsewhere), whether generation
stopped at EOS, and, for a row with a JSON schema, whether the prediction parses, validates, and how
many reference fields it reproduces. `score_rows` averages them overall and per category;
`compare` turns two or three variants' metrics into deltas that say which way is better.

Which rows a metric judges:

- never stopping: only a row whose reference fits the generation budget (`reference_tokens`, the end of
  turn included, <= `max_new_tokens`) could have stopped; a longer one has `never_stop_rate` None, is left
  out of the mean, and is counted in `never_stop_excluded`;
- the JSON metrics: with one schema every row; with an `OutputSchemas` mapping (`task.output_schema` as
  {category: file}) only the rows of those categories: the others are free text and have None, so the
  overall rate is the mean over the structured rows (None when no row is structured).
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from tuneline.data.output_schema import OutputSchemas, load_output_schema, output_error

NO_CATEGORY = "(none)"  # the per-category key of rows whose category is None

# Which way each metric improves. `compare` reports only these; counts (rows, tokens) are context.
DIRECTIONS: dict[str, Literal["higher", "lower"]] = {
    "exact_match": "higher",
    "rouge_l": "higher",
    "never_stop_rate": "lower",
    "json_parse_rate": "higher",
    "json_valid_rate": "higher",
    "json_field_accuracy": "higher",
    "loss": "lower",
    "perplexity": "lower",
}
JSON_METRICS = ("json_parse_rate", "json_valid_rate", "json_field_accuracy")

# Scripts written without spaces between words: each character is a token. Hangul is spaced, so it
# stays word-based. Ranges: CJK radicals/symbols, kana, CJK ext. A + unified, compatibility ideographs,
# and the supplementary ideograph planes.
_CJK = (
    "\u2e80-\u2fdf\u3005-\u3007\u3021-\u3029\u3040-\u30ff\u31f0-\u31ff"
    "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f"
)
_TOKEN = re.compile(rf"[{_CJK}]|(?:(?![{_CJK}])[^\W_])+")
_SPACE = re.compile(r"\s+")


class MixedScriptTokenizer:
    """A `rouge_score` tokenizer for mixed Latin / CJK text.

    Text is NFKC-normalized (full-width letters and digits become ASCII) and case-folded; every CJK
    character is a token of its own and runs of other letters or digits are words. Punctuation is
    dropped, as in rouge-score's default tokenizer (which also drops every non-ASCII character, so it
    would score any two Chinese strings as empty). No stemming: it is English-only.
    """

    def tokenize(self, text: str) -> list[str]:
        return _TOKEN.findall(unicodedata.normalize("NFKC", text).casefold())


_TOKENIZER = MixedScriptTokenizer()
_scorer: Any = None


def normalize_whitespace(text: str) -> str:
    """Collapse every run of whitespace to one space and strip the ends."""
    return _SPACE.sub(" ", text).strip()


def exact_match(pred: str, ref: str) -> float:
    """1.0 when the texts are equal after whitespace normalization, else 0.0 (case matters)."""
    return float(normalize_whitespace(pred) == normalize_whitespace(ref))


def rouge_l(pred: str, ref: str) -> float:
    """ROUGE-L F1 (longest common subsequence of tokens) of `pred` against `ref`.

    Two texts with no tokens at all (empty, or punctuation only) score 1.0: nothing was missed.
    """
    global _scorer
    if _scorer is None:
        from rouge_score import rouge_scorer  # lazy: nltk ~8 s; `report` imports this

        _scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=_TOKENIZER)
    if not _TOKENIZER.tokenize(pred) and not _TOKENIZER.tokenize(ref):
        return 1.0
    return float(_scorer.score(ref, pred)["rougeL"].fmeasure)


def as_validator(schema: Any) -> Any:
    """A jsonschema validator from a validator, a schema dict, or a schema file path (None stays None)."""
    if schema is None or hasattr(schema, "iter_errors"):
        return schema
    if isinstance(schema, str | Path):
        return load_output_schema(schema)
    import jsonschema  # lazy: jsonschema ~1.2 s; only when an output schema is configured

    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def _parse(text: str) -> tuple[bool, Any]:
    try:
        return True, json.loads(text)
    except (json.JSONDecodeError, TypeError):
        return False, None


def _leaves(value: Any, path: str = "$") -> dict[str, Any]:
    """Fields of a JSON value: object members recursively; arrays and scalars are compared whole."""
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_leaves(item, f"{path}.{key}"))
        return out
    return {path: value}


def _same(a: Any, b: Any) -> bool:
    # JSON equality: true is not 1, but 1 and 1.0 are the same number.
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    return type(a) is type(b) and a == b


def field_accuracy(pred: Any, ref: Any) -> float:
    """Share of the reference's fields (leaf paths) whose values the prediction reproduces exactly."""
    want, got = _leaves(ref), _leaves(pred)
    hits = sum(1 for path, value in want.items() if path in got and _same(got[path], value))
    return hits / len(want)


def json_scores(pred: str, ref: str, validator: Any) -> dict[str, float | None]:
    """Parse, schema-valid and field-accuracy scores of one prediction.

    A prediction that does not parse scores 0 on all three. Field accuracy is None when the reference
    itself is not JSON (nothing to compare against).
    """
    parsed, value = _parse(pred.strip())
    ref_ok, ref_value = _parse(ref.strip())
    if not parsed:
        return {
            "json_parse_rate": 0.0,
            "json_valid_rate": 0.0,
            "json_field_accuracy": 0.0 if ref_ok else None,
        }
    return {
        "json_parse_rate": 1.0,
        "json_valid_rate": float(output_error(value, validator) is None),
        "json_field_accuracy": field_accuracy(value, ref_value) if ref_ok else None,
    }


def could_stop(row: dict[str, Any], max_new_tokens: int | None) -> bool:
    """Whether the row's reference fits the budget, so a reply that hit it really never stopped.

    True when the budget or the row's `reference_tokens` is unknown (the row is judged, as before).
    """
    needed = row.get("reference_tokens")
    return max_new_tokens is None or needed is None or needed <= max_new_tokens


def score_row(
    row: dict[str, Any], schema: Any = None, max_new_tokens: int | None = None
) -> dict[str, float | None]:
    """Metrics of one generated row (`reference`, `prediction`, `stopped`, optional `reference_tokens`).

    Args:
        row: a generation row; `stopped` False means it hit max_new_tokens without EOS.
        schema: a jsonschema validator, schema dict or schema file; None = free text (no JSON metrics).
        max_new_tokens: the generation budget; a row whose reference needs more has never_stop_rate None.
    """
    pred, ref = row["prediction"], row["reference"]
    never_stopped = 0.0 if row["stopped"] else 1.0
    scores: dict[str, float | None] = {
        "exact_match": exact_match(pred, ref),
        "rouge_l": rouge_l(pred, ref),
        "never_stop_rate": never_stopped if could_stop(row, max_new_tokens) else None,
    }
    validator = as_validator(schema)
    if validator is not None:
        scores.update(json_scores(pred, ref, validator))
    return scores


def _mean(values: Iterable[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None


def _aggregate(
    rows: list[dict[str, Any]], scored: list[dict[str, float | None]], counts: tuple[str, ...] = ()
) -> dict[str, Any]:
    out: dict[str, Any] = {"rows": len(rows)}
    for name in scored[0] if scored else ():
        out[name] = _mean(s[name] for s in scored)
    if "never_stop_excluded" in counts:
        out["never_stop_excluded"] = sum(1 for s in scored if s.get("never_stop_rate") is None)
    if "structured_rows" in counts:
        out["structured_rows"] = sum(1 for s in scored if s.get("json_parse_rate") is not None)
    if any(r.get("new_tokens") is not None for r in rows):
        out["mean_new_tokens"] = _mean(r.get("new_tokens") for r in rows)
    with_loss = [r for r in rows if r.get("loss") is not None]
    if with_loss:
        # Token-weighted, like the loss over the whole set (a row without a count weighs 1).
        weights = [r.get("tokens") or 1 for r in with_loss]
        loss = sum(r["loss"] * w for r, w in zip(with_loss, weights, strict=True)) / sum(weights)
        out.update(loss=loss, perplexity=perplexity(loss), tokens=sum(weights))
    return out


def perplexity(loss: float | None) -> float | None:
    """exp(loss), or None when there is no loss or it overflows (reports are strict JSON: no inf)."""
    if loss is None or not math.isfinite(loss):
        return None
    try:
        return math.exp(loss)
    except OverflowError:
        return None


def score_rows(
    rows: list[dict[str, Any]], schema: Any = None, max_new_tokens: int | None = None
) -> dict[str, Any]:
    """Mean metrics over all rows and per category.

    Args:
        rows: dicts with `id`, `category` (None allowed), `reference`, `prediction`, `stopped`, and
            optionally `new_tokens`, `reference_tokens` (what the reference takes to generate, its end of
            turn included), `loss` (mean per-token loss of the row) and `tokens` (its count).
        schema: as in `score_row` (every row structured), or an `OutputSchemas` (only rows of its
            categories); adds json_parse_rate, json_valid_rate and json_field_accuracy (None on free-text
            rows) and the count `structured_rows`.
        max_new_tokens: the generation budget: rows whose reference exceeds it are left out of
            never_stop_rate, and `never_stop_excluded` counts them.

    Returns:
        {"overall": {metric: mean, "rows": n, ...}, "per_category": {category: {...}},
        "per_row": {id: {metric: value}}}. Categories are sorted; None is reported as "(none)".
        A metric with no defined value (e.g. field accuracy with no JSON reference, a JSON metric with
        no structured row) is None.
    """
    schemas = schema if isinstance(schema, OutputSchemas) else None
    validator = None if schemas is not None else as_validator(schema)
    structured = schemas is not None or validator is not None
    scored = []
    for r in rows:
        row_validator = schemas.for_category(r.get("category")) if schemas is not None else validator
        scores = score_row(r, row_validator, max_new_tokens)
        if structured and row_validator is None:
            scores.update(dict.fromkeys(JSON_METRICS))  # free text: no JSON metric, same columns
        scored.append(scores)
    counts = (("never_stop_excluded",) if max_new_tokens is not None else ()) + (
        ("structured_rows",) if structured else ())
    groups: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        category = row.get("category")
        groups.setdefault(NO_CATEGORY if category is None else str(category), []).append(i)
    return {
        "overall": _aggregate(rows, scored, counts),
        "per_category": {
            name: _aggregate([rows[i] for i in idx], [scored[i] for i in idx], counts)
            for name, idx in sorted(groups.items())
        },
        "per_row": {str(r.get("id")): s for r, s in zip(rows, scored, strict=True)},
    }


def _better(delta: float, direction: str) -> bool | None:
    if delta == 0:
        return None  # a tie is neither better nor worse
    return delta > 0 if direction == "higher" else delta < 0


def compare(
    base: dict[str, Any], candidate: dict[str, Any], champion: dict[str, Any] | None = None
) -> dict[str, dict[str, Any]]:
    """Per-metric deltas of the candidate against the base (and the champion, when there is one).

    Args:
        base, candidate, champion: flat {metric: value} dicts, or `score_rows` results (their
            "overall" is used). Metrics missing or None on either side get None deltas.

    Returns:
        {metric: {"direction": "higher"|"lower", "base", "candidate", "champion",
        "delta_vs_base", "better_than_base", "delta_vs_champion", "better_than_champion"}} for the
        metrics in `DIRECTIONS` that the candidate has. A delta is candidate minus other;
        `better_*` reads it with the metric's direction (loss: lower is better) and is None on a
        tie or when a value is missing.
    """

    def flat(m: dict[str, Any]) -> dict[str, Any]:
        return m.get("overall", m)

    base_m, cand_m = flat(base), flat(candidate)
    champ_m = flat(champion) if champion is not None else None
    out: dict[str, dict[str, Any]] = {}
    for name, direction in DIRECTIONS.items():
        if name not in cand_m:
            continue
        entry: dict[str, Any] = {"direction": direction, "candidate": cand_m[name]}
        for label, other in (("base", base_m), ("champion", champ_m)):
            value = other.get(name) if other is not None else None
            entry[label] = value
            delta = cand_m[name] - value if value is not None and cand_m[name] is not None else None
            entry[f"delta_vs_{label}"] = delta
            entry[f"better_than_{label}"] = _better(delta, direction) if delta is not None else None
        out[name] = entry
    return out
