"""`validate_splits`: the Great Expectations contract on train/val/test — the gate before training.

Reads data/processed/<split>.jsonl, drops nothing, writes reports/validate_splits.json and .html, and
stops the pipeline (DataValidationError) when a critical expectation fails: malformed or duplicate-id
records, HTML / URL / e-mail residue that `clean` should have removed, the same (or a near-same)
conversation in two splits, split shares off target, a val/test stratum train never saw, or invalid
structured outputs. Augmented rows (meta.augmented_from set) are copies of train rows: they count as
train for leaks and are left out of the split shares.
"""

from __future__ import annotations

import hashlib
import logging
from typing import TYPE_CHECKING, Any

from tuneline.config import Config
from tuneline.data.contracts import (
    REF,
    Check,
    finish_contract,
    message_contents,
    message_features,
    run_checks,
    schema_check,
    schema_features,
    structured_frame,
)
from tuneline.data.dedup import near_duplicate_pairs, normalize_content
from tuneline.data.output_schema import OutputSchemas, load_output_schemas
from tuneline.data.split import stratum_of
from tuneline.data.textnorm import (
    CODE_SPAN_RE,
    EMAIL_RE,
    HTML_ENTITY_RE,
    HTML_TAG_RE,
    URL_RE,
    may_hold_url,
)
from tuneline.errors import InputFileError
from tuneline.jsonio import read_jsonl
from tuneline.layout import SPLITS, Layout
from tuneline.records import is_augmented

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

STAGE = "validate_splits"
RESIDUE = {"html_tag": HTML_TAG_RE, "html_entity": HTML_ENTITY_RE, "url": URL_RE, "email": EMAIL_RE}
_RESIDUE_MARK = {
    "html_tag": lambda text: "<" in text,
    "html_entity": lambda text: "&" in text,
    "url": may_hold_url,
    "email": lambda text: "@" in text,
}
_COLUMNS = [REF, "id", "split", "augmented", "messages", "roles", "stratum", "content_key", "structured",
            "schema_error"]
_COLUMNS += [f"{kind}_residue" for kind in RESIDUE]


def content_key(record: dict[str, Any], contents: list[str] | None = None) -> str:
    """Hash of the normalized conversation: roles + contents normalized exactly as `dedup` compares them
    (`contents`: the record's `message_contents`, when already computed)."""
    messages = record.get("messages") if isinstance(record.get("messages"), list) else []
    parts = []
    for m, text in zip(messages, message_contents(record) if contents is None else contents, strict=True):
        role = m.get("role") if isinstance(m, dict) else None
        parts.append(f"{role}\x1f{normalize_content(text)}")
    return hashlib.sha256("\x1e".join(parts).encode("utf-8")).hexdigest()


def cleaned_roles(cfg: Config, structured: bool = False) -> list[str]:
    """The roles `clean` rewrites in a record: never tool payloads, nor assistant outputs that follow a
    schema (`structured`: `task.output_schema` covers the record)."""
    skip = {"tool"} | ({"assistant"} if structured else set())
    return [role for role in cfg.clean.roles if role not in skip]


def residue_text(
    record: dict[str, Any], roles: list[str], placeholders: list[str], contents: list[str] | None = None
) -> str:
    """Text `clean` is responsible for (its roles), minus its own placeholders (they may look like tags).
    `contents`: the record's `message_contents`, when already computed."""
    messages = record.get("messages") if isinstance(record.get("messages"), list) else []
    texts = [
        text
        for m, text in zip(messages, message_contents(record) if contents is None else contents, strict=True)
        if isinstance(m, dict) and m.get("role") in roles
    ]
    joined = "\n".join(texts)
    for placeholder in placeholders:
        if placeholder:
            joined = joined.replace(placeholder, " ")
    return joined


def split_features(
    splits: dict[str, list[dict[str, Any]]], cfg: Config, schema_validator: Any | None = None
) -> pd.DataFrame:
    """One row per record of every split: ids, roles, residue found, duplicate partners, stratum, and
    whether its outputs follow a schema (`schema_validator`: one validator for every record, or an
    `OutputSchemas` that picks by category) and why they miss it."""
    import pandas as pd  # lazy: pandas ~2.3 s; `import tuneline.data.validate_splits` stays light (CLI)

    clean = cfg.clean
    placeholders = [clean.url_placeholder, clean.email_placeholder]
    roles_cleaned = {structured: cleaned_roles(cfg, structured) for structured in (False, True)}
    rows = []
    for split, records in splits.items():
        for i, rec in enumerate(records):
            roles, contents = message_features(rec)
            validator, schema_columns = schema_features(rec, schema_validator)
            text = residue_text(rec, roles_cleaned[validator is not None], placeholders, contents)
            # `clean` leaves HTML inside Markdown code alone when protect_code; URLs and e-mails never.
            prose = CODE_SPAN_RE.sub(" ", text) if clean.protect_code and "`" in text else text
            row = {
                REF: str(rec.get("id") or f"{split} row {i + 1}"),
                "id": rec.get("id"),
                "split": split,
                "augmented": is_augmented(rec),
                "messages": len(rec["messages"]) if roles is not None else None,
                "roles": roles,
                # The same reading of the stratum as `split` (records without one form the "(none)" stratum).
                "stratum": stratum_of(rec, cfg.split.stratify_field),
                "content_key": content_key(rec, contents),
                **schema_columns,
            }
            for kind, pattern in RESIDUE.items():
                where = prose if kind.startswith("html") else text
                # Each pattern needs its marker character; most cleaned texts have none of them.
                match = pattern.search(where) if _RESIDUE_MARK[kind](where) else None
                row[f"{kind}_residue"] = match.group(0) if match else None
            rows.append(row)
    frame = pd.DataFrame(rows, columns=_COLUMNS)
    _mark_exact_duplicates(frame)
    return frame


def _mark_exact_duplicates(frame: pd.DataFrame) -> None:
    """Columns `exact_dup_cross_split` / `exact_dup_within_split`: an earlier row with the same content."""
    first_by_split: dict[str, dict[str, str]] = {}
    cross: list[str | None] = []
    within: list[str | None] = []
    for ref, split, key in zip(frame[REF], frame["split"], frame["content_key"], strict=True):
        seen = first_by_split.setdefault(key, {})
        other = next((f"{r} ({s})" for s, r in seen.items() if s != split), None)
        cross.append(other)
        within.append(f"{seen[split]} ({split})" if split in seen else None)
        seen.setdefault(split, ref)
    frame["exact_dup_cross_split"] = cross
    frame["exact_dup_within_split"] = within


def mark_near_duplicates(frame: pd.DataFrame, texts: list[str], cfg: Config) -> int:
    """Column `near_dup_cross_split` (partner id and split); returns the number of cross-split pairs.

    Pairs come from `tuneline.data.dedup.near_duplicate_pairs` over all rows; a pair counts when its two
    rows sit in different split files (augmented rows live in train, so they count as train).
    """
    pairs = near_duplicate_pairs(texts, threshold=cfg.dedup.threshold, ngram_range=cfg.dedup.ngram_range)
    refs, splits = list(frame[REF]), list(frame["split"])
    partner: list[str | None] = [None] * len(frame)
    n_cross = 0
    for i, j in sorted(pairs):
        if splits[i] == splits[j]:
            continue
        n_cross += 1
        partner[i] = partner[i] or f"{refs[j]} ({splits[j]})"
        partner[j] = partner[j] or f"{refs[i]} ({splits[i]})"
    frame["near_dup_cross_split"] = partner
    return n_cross


def split_shares(frame: pd.DataFrame, cfg: Config) -> pd.DataFrame:
    """One row per held-out split: its share of non-augmented rows, the target, and the gap."""
    import pandas as pd  # lazy: pandas ~2.3 s; `import tuneline.data.validate_splits` stays light (CLI)

    original = frame[~frame["augmented"].astype(bool)]
    total = len(original)
    rows = []
    for split, target in (("val", cfg.split.val), ("test", cfg.split.test)):
        share = float((original["split"] == split).sum()) / total if total else 0.0
        gap = round(abs(share - target), 6)
        rows.append({REF: split, "share": round(share, 6), "target": target, "gap": gap})
    return pd.DataFrame(rows, columns=[REF, "share", "target", "gap"])


def _is_null(name: str, column: str, description: str, critical: bool = True) -> Check:
    """A check that a feature column is empty (its value, when set, says what is wrong)."""
    return Check(name, "ExpectColumnValuesToBeNull", {"column": column}, description, critical=critical)


def build_checks(cfg: Config, train_strata: list[str], schemas: OutputSchemas | None = None) -> list[Check]:
    """The split contract, from the `validate_splits`, `split`, `clean`, `dedup` and `task` sections.

    The schema check runs on the `structured` frame: only the records `task.output_schema` covers
    (`schemas`), so free-text records neither pass nor fail it.
    """
    p, clean = cfg.validate_splits, cfg.clean
    checks = [
        Check("id_present", "ExpectColumnValuesToNotBeNull", {"column": "id"}, "every record has an id"),
        Check("id_unique", "ExpectColumnValuesToBeUnique", {"column": "id"}, "ids are unique across splits"),
        Check(
            "messages_present", "ExpectColumnValuesToNotBeNull", {"column": "messages"},
            "every record has a non-empty list of messages",
        ),
        Check(
            "role_pattern", "ExpectColumnValuesToMatchRegex",
            {"column": "roles", "regex": cfg.validate_raw.role_pattern},
            "roles follow validate_raw.role_pattern (system?, user/assistant alternating, ends on assistant)",
        ),
    ]
    # A residue kind that `clean` is configured to keep is reported, but only as a warning.
    cleaned = {"html_tag": clean.html, "html_entity": clean.html, "url": clean.urls != "keep",
               "email": clean.emails != "keep"}
    every_row = schemas is not None and schemas.every_row is not None
    roles = ", ".join(cleaned_roles(cfg, structured=every_row))
    if schemas is not None and not every_row and "assistant" in cfg.clean.roles:
        roles += "; assistant only in records of categories without an output schema"
    for kind in RESIDUE:
        checks.append(
            _is_null(
                f"no_{kind}_residue", f"{kind}_residue",
                f"no {kind.replace('_', ' ')} left in cleaned text (roles {roles}, placeholders ignored)",
                critical=cleaned[kind],
            )
        )
    checks += [
        _is_null(
            "no_cross_split_exact_duplicates", "exact_dup_cross_split",
            "no conversation (normalized content) appears in two splits",
        ),
        _is_null(
            "no_within_split_exact_duplicates", "exact_dup_within_split",
            "no conversation (normalized content) appears twice in one split", critical=False,
        ),
    ]
    if p.cross_split_near_dup:
        checks.append(
            _is_null(
                "no_cross_split_near_duplicates", "near_dup_cross_split",
                f"no pair across splits with TF-IDF cosine >= {cfg.dedup.threshold}",
            )
        )
    checks += [
        Check(
            "train_not_empty", "ExpectTableRowCountToBeBetween", {"min_value": 1},
            "the train split has rows", frame="train",
        ),
        Check(
            "split_ratios", "ExpectColumnValuesToBeBetween",
            {"column": "gap", "max_value": p.ratio_tolerance},
            f"val / test shares (augmented rows excluded) within {p.ratio_tolerance} of split.val="
            f"{cfg.split.val} / split.test={cfg.split.test}", frame="shares",
        ),
        Check(
            "strata_in_train", "ExpectColumnValuesToBeInSet",
            {"column": "stratum", "value_set": train_strata},
            f"every {cfg.split.stratify_field} in val/test also occurs in train", frame="held_out",
        ),
    ]
    if schemas is not None:
        checks.append(schema_check(schemas, p.schema_mostly))
    return checks


def read_splits(layout: Layout) -> dict[str, list[dict[str, Any]]]:
    """Records of every processed split, in SPLITS order.

    Raises:
        InputFileError: a split file is missing (run the earlier stages first).
    """
    splits = {}
    for split in SPLITS:
        path = layout.processed(split)
        if not path.exists():
            raise InputFileError(f"{path}: not found; run `tuneline augment` (and the stages before) first")
        splits[split] = list(read_jsonl(path))
    return splits


def run(cfg: Config, layout: Layout) -> dict[str, Any]:
    """Validate train/val/test; write the reports; raise DataValidationError on a critical failure.

    Raises:
        InputFileError: a processed split is missing, or task.output_schema is unusable.
        DataValidationError: a critical expectation failed (reports are written first).
    """
    splits = read_splits(layout)
    schemas = load_output_schemas(cfg.task.output_schema)
    frame = split_features(splits, cfg, schemas)
    near_pairs: int | None = None
    if cfg.validate_splits.cross_split_near_dup:
        texts = ["\n".join(message_contents(rec)) for records in splits.values() for rec in records]
        near_pairs = mark_near_duplicates(frame, texts, cfg)
    shares = split_shares(frame, cfg)
    held_out = frame[frame["split"] != "train"].reset_index(drop=True)
    train = frame[frame["split"] == "train"].reset_index(drop=True)
    structured = structured_frame(frame)
    frames = {"records": frame, "shares": shares, "held_out": held_out, "train": train,
              "structured": structured}
    train_strata = sorted(train["stratum"].dropna().unique().tolist())
    results = run_checks(frames, build_checks(cfg, train_strata, schemas), cfg.validate_splits.sample_size)
    extra = {
        "rows_by_split": {s: int((frame["split"] == s).sum()) for s in SPLITS},
        "augmented_rows": int(frame["augmented"].astype(bool).sum()),
        "shares": {row[REF]: row["share"] for row in shares.to_dict("records")},
        "cross_split_exact_duplicates": int(frame["exact_dup_cross_split"].notna().sum()),
        "cross_split_near_dup_pairs": near_pairs,
        "near_dup_check": "on" if near_pairs is not None else "off (validate_splits.cross_split_near_dup)",
        "residue_rows": {kind: int(frame[f"{kind}_residue"].notna().sum()) for kind in RESIDUE},
        "structured_rows": len(structured),
        "records_schema_invalid": int(frame["schema_error"].notna().sum()),
    }
    if near_pairs is None:
        log.info("%s: cross-split near-duplicate check is off (validate_splits.cross_split_near_dup)", STAGE)
    return finish_contract(layout, STAGE, len(frame), results, extra)
