"""`clean` stage: strip HTML / URL / e-mail noise, normalize text, drop low-quality rows.

Per message whose role is in `clean.roles`, in this order: NFKC, newlines, control and zero-width
characters, HTML, e-mails, URLs (placeholders are inserted after HTML stripping, so "<URL>" survives),
thousands separators, dates, whitespace. Tool turns are structured payloads and are never rewritten; the
assistant outputs of rows `task.output_schema` covers (every row for a single file; with a {category: file}
mapping, the rows of those categories) are structured too: they are validated against their schema, not
rewritten. Other rows' assistant outputs are free text and are cleaned.

Then every quality rule (see `tuneline.data.quality.RULES`) is checked; a failing row goes to the rejected
file with the first failing rule as its `reason` and all of them in `detail`. A user or assistant turn
left holding nothing but placeholders (`<URL>`, `<EMAIL>`) is `empty_after_clean`: an answer that is only
"<URL>" teaches nothing. Kept rows keep their `id` (the ingest content hash), so any row can be followed
through every stage.

`reports/clean.json` counts the rows failing each rule (`failed_by_rule`, not only the first) and shows a
few of them per rule (`examples_by_rule`: id, source, detail, the text judged), so the limits in
`clean.quality` can be tuned on evidence.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from typing import Any

from tuneline.config import Config
from tuneline.config.clean import CleanParams
from tuneline.data import textnorm
from tuneline.data.output_schema import OutputSchemas, load_output_schemas, output_error
from tuneline.data.quality import (
    RULES,
    QualityClassifier,
    heuristic_failures,
)
from tuneline.errors import InputFileError
from tuneline.jsonio import read_jsonl
from tuneline.layout import Layout
from tuneline.ledger import Ledger, finish_stage
from tuneline.progress import track
from tuneline.records import reject

log = logging.getLogger(__name__)

STAGE = "clean"
EXAMPLES_PER_RULE = 3
EXCERPT_CHARS = 300
# Rules whose "rows changed" counts the report carries (a row counts once per rule).
CHANGE_RULES = ("nfkc", "control", "html", "emails", "urls", "numbers", "dates", "whitespace")
_MESSAGE_RE = re.compile(r"message (?:index \[)?(\d+)")


def clean_text(text: str, params: CleanParams) -> tuple[str, set[str]]:
    """Clean one message text.

    Args:
        text: the message content.
        params: the `clean` section.

    Returns:
        The cleaned text and the names of the rules (see `CHANGE_RULES`) that changed it.
    """
    changed: set[str] = set()

    def step(rule: str, new: str) -> None:
        nonlocal text
        if new != text:
            changed.add(rule)
            text = new

    if params.nfkc:
        step("nfkc", textnorm.normalize_unicode(text))
    if textnorm.has_special_chars(text):
        step("whitespace", textnorm.normalize_newlines(text))
        step("control", textnorm.strip_control(text))
    if params.html and ("<" in text or "&" in text):
        stripped = textnorm.strip_html(text, params.protect_code)
        if stripped != text:
            # Decoded entities can bring back compatibility forms and zero-width characters (&#8203;).
            if params.nfkc:
                stripped = textnorm.normalize_unicode(stripped)
            stripped = textnorm.strip_control(textnorm.normalize_newlines(stripped))
        step("html", stripped)
    step("emails", textnorm.replace_emails(text, params.emails, params.email_placeholder))
    step("urls", textnorm.replace_urls(text, params.urls, params.url_placeholder))
    if params.numbers:
        step("numbers", textnorm.normalize_numbers(text, params.protect_code))
    if params.dates:
        step("dates", textnorm.normalize_dates(text, params.protect_code))
    step("whitespace", textnorm.tidy_whitespace(text))
    return text, changed


def _as_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "" if content is None else str(content)


def clean_record(record: dict[str, Any], params: CleanParams, structured_output: bool = False) -> tuple[
    dict[str, Any], set[str]
]:
    """A copy of `record` with the configured roles cleaned (id, category, meta, source unchanged).

    Args:
        record: a canonical record.
        params: the `clean` section.
        structured_output: assistant outputs follow a schema: leave them as they are.

    Returns:
        The cleaned record and the rules that changed any of its messages.
    """
    roles = set(params.roles)
    if structured_output:
        roles.discard("assistant")
    roles.discard("tool")  # tool payloads are structured data, whatever the config says
    changed: set[str] = set()
    messages = []
    for msg in record["messages"]:
        if msg.get("role") in roles and isinstance(msg.get("content"), str):
            new_text, rules = clean_text(msg["content"], params)
            if rules:
                changed |= rules
                msg = {**msg, "content": new_text}
        messages.append(msg)
    return {**record, "messages": messages}, changed


def _is_call(msg: dict[str, Any]) -> bool:
    # An assistant turn that only calls a tool legitimately has no text.
    return bool(msg.get("tool_calls") or msg.get("function_call"))


def record_failures(
    record: dict[str, Any],
    params: CleanParams,
    schema_validator: Any | None = None,
) -> list[tuple[str, str]]:
    """Every quality rule a cleaned record fails, as (rule, detail), in `RULES` order (classifier excluded).

    Args:
        record: a cleaned record.
        params: the `clean` section (its `quality` limits and `roles`).
        schema_validator: a jsonschema validator when outputs are structured; heuristics then skip them.
    """
    q = params.quality
    failures: list[tuple[str, str]] = []
    msgs = record["messages"]
    texts = [_as_text(m.get("content")) for m in msgs]  # read once, used by every rule below
    chat = [i for i, m in enumerate(msgs) if m.get("role") in ("user", "assistant")]
    empty = [i for i in chat if not texts[i].strip() and not _is_call(msgs[i])]
    if empty:
        failures.append(("empty_turn", f"empty user/assistant turn(s) at message index {empty}"))
    placeholders = _placeholders(params)
    hollow = [
        i
        for i in chat
        if placeholders and any(p in texts[i] for p in placeholders)  # most turns stop here, cheaply
        and i not in empty and not _is_call(msgs[i]) and _only_placeholders(texts[i], params)
    ]
    if hollow:
        failures.append(
            ("empty_after_clean", f"turn(s) at message index {hollow} hold only placeholders after cleaning")
        )
    answer_len = sum(len(t) for t, m in zip(texts, msgs, strict=True) if m.get("role") == "assistant")
    answer_len += max(sum(1 for m in msgs if m.get("role") == "assistant") - 1, 0)  # the joining newlines
    if answer_len < q.min_chars:
        failures.append(("too_short", f"assistant text {answer_len} chars < {q.min_chars}"))
    total = sum(map(len, texts)) + max(len(msgs) - 1, 0)
    if total > q.max_chars:
        failures.append(("too_long", f"record {total} chars > {q.max_chars}"))
    if schema_validator is not None:
        for i, m in enumerate(msgs):
            if m.get("role") == "assistant" and not _is_call(m):
                why = output_error(m.get("content"), schema_validator)
                if why:
                    failures.append(("output_schema_invalid", f"message {i}: {why}"))
                    break
    # Heuristics judge free text only: tool payloads and structured outputs are JSON, all symbols.
    prose_roles = set(params.roles) - {"tool"} - ({"assistant"} if schema_validator is not None else set())
    turns = [(i, m) for i, m in enumerate(msgs)
             if m.get("role") in prose_roles and isinstance(m.get("content"), str)]
    labels = [f"message {i} ({m['role']})" for i, m in turns]
    failures.extend(heuristic_failures([m["content"] for _, m in turns], q, labels))
    return failures


def _placeholders(params: CleanParams) -> list[str]:
    """The placeholders cleaning inserts (URL, e-mail), for the modes that insert one."""
    modes = ((params.urls, params.url_placeholder), (params.emails, params.email_placeholder))
    return [p for mode, p in modes if mode == "placeholder" and p]


def _only_placeholders(text: str, params: CleanParams) -> bool:
    """True when `text` has content only in the URL / e-mail placeholders cleaning put there."""
    if not text.strip():
        return False
    placeholders = _placeholders(params)
    if not placeholders or not any(p in text for p in placeholders):
        return False
    for p in placeholders:
        text = text.replace(p, " ")
    return not any(ch.isalnum() for ch in text)


def clean_records(
    records: list[dict[str, Any]],
    params: CleanParams,
    schema_validator: Any | None = None,
    classifier: QualityClassifier | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    """Clean and filter records (the stage without its I/O).

    Args:
        records: canonical records.
        params: the `clean` section.
        schema_validator: None (free text), one jsonschema validator (every row is structured), or an
            `OutputSchemas` (each row's category picks its validator, or none).
        classifier: the optional quality classifier.

    Returns:
        kept records, rejected rows (`tuneline.records.reject` rows), and stats: `changed_by_rule`
        (rows changed per rule), `failed_by_rule` (rows failing each rule, not only the first).
    """
    changed_by_rule: Counter[str] = Counter()
    cleaned: list[dict[str, Any]] = []
    failures: list[list[tuple[str, str]]] = []
    for record in track(records, "clean", total=len(records)):
        validator = (schema_validator.for_record(record) if isinstance(schema_validator, OutputSchemas)
                     else schema_validator)
        new, changed = clean_record(record, params, structured_output=validator is not None)
        changed_by_rule.update(changed)
        cleaned.append(new)
        failures.append(record_failures(new, params, validator))
    if classifier is not None:
        texts = ["\n".join(_as_text(m.get("content")) for m in r["messages"]) for r in cleaned]
        for fails, score in zip(failures, classifier.scores(texts), strict=True):
            if score < classifier.threshold:
                fails.append(("low_quality_score", f"quality score {score:.3f} < {classifier.threshold}"))
    kept: list[dict[str, Any]] = []
    rejected: list[dict[str, Any]] = []
    failed_by_rule: Counter[str] = Counter()
    examples: dict[str, list[dict[str, Any]]] = {}
    for original, new, fails in zip(records, cleaned, failures, strict=True):
        if not fails:
            kept.append(new)
            continue
        failed_by_rule.update({rule for rule, _ in fails})
        for rule, detail in fails:
            shown = examples.setdefault(rule, [])
            if len(shown) < EXAMPLES_PER_RULE:
                shown.append(_example(new, detail))
        # The row as it came in: the detail says what cleaning measured on it.
        rejected.append(
            reject(STAGE, fails[0][0], original.get("source", {}), "; ".join(d for _, d in fails),
                   record=original, rules=[r for r, _ in fails])
        )
    stats = {
        "changed_by_rule": {rule: changed_by_rule.get(rule, 0) for rule in CHANGE_RULES},
        "failed_by_rule": {rule: failed_by_rule[rule] for rule in RULES if failed_by_rule[rule]},
        "examples_by_rule": {rule: examples[rule] for rule in RULES if rule in examples},
    }
    return kept, rejected, stats


def _example(record: dict[str, Any], detail: str) -> dict[str, Any]:
    """One rejected row as the report shows it: what was measured, and the start of the text judged."""
    msgs = record["messages"]
    match = _MESSAGE_RE.search(detail)
    if match and int(match.group(1)) < len(msgs):
        text = _as_text(msgs[int(match.group(1))].get("content"))
    else:
        text = "\n".join(_as_text(m.get("content")) for m in msgs if m.get("role") == "assistant")
    excerpt = text if len(text) <= EXCERPT_CHARS else text[:EXCERPT_CHARS] + "…"
    return {"id": record.get("id"), "source": record.get("source", {}), "detail": detail, "text": excerpt}


def run(cfg: Config, layout: Layout) -> dict[str, Any]:
    """Read `data/interim/ingest.jsonl`, write `data/interim/clean.jsonl`, rejected rows and the report."""
    src = layout.interim("ingest")
    if not src.is_file():
        raise InputFileError(f"{src}: not found; run `tuneline ingest` first")
    params = cfg.clean
    schemas = load_output_schemas(cfg.task.output_schema)
    classifier = QualityClassifier(params.classifier) if params.classifier.path else None
    records = list(read_jsonl(src))
    kept, rejected, stats = clean_records(records, params, schemas, classifier)
    ledger = Ledger(STAGE, rows_in=len(records), rows_kept=len(kept))
    ledger.rejected_by_reason.update(row["reason"] for row in rejected)
    ledger.extra.update(stats)
    ledger.extra["output_schema"] = schemas.setting() if schemas is not None else None
    ledger.extra["classifier"] = str(params.classifier.path) if params.classifier.path else None
    log.info(
        "clean: %d rows in, %d kept, rejected %s", len(records), len(kept), dict(ledger.rejected_by_reason)
    )
    return finish_stage(layout, ledger, rejected, {layout.interim(STAGE): kept})
