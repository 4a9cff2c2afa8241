"""`augment` stage: synonym replacement and back-translation when the train split is small.

Augmentation only helps small data, so it runs only when train has fewer than `augment.min_train_rows`
rows; otherwise every split passes through and the report says why. Only turns whose role is in
`augment.roles` (user by default) are rewritten, never a structured assistant output. Val and test are
always passed through unchanged: augmenting them would grade the model on synthetic text.

An augmented row gets a new content id, `meta.augmented_from` (the original id), `meta.augmentation`
("synonym" | "back_translation"), and the original's category and source. A variant identical to its
original, or to any row already in a split, is not added (it would be a duplicate or a leak).
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from pathlib import Path
from typing import Any

from tuneline.config import Config
from tuneline.config.augment import AugmentParams, BackTranslationParams
from tuneline.data.synonyms import SynonymReplacer, load_dictionary
from tuneline.errors import ConfigError, InputFileError
from tuneline.jsonio import read_jsonl
from tuneline.layout import SPLITS, Layout
from tuneline.ledger import Ledger, finish_stage
from tuneline.progress import track
from tuneline.records import content_id

log = logging.getLogger(__name__)

STAGE = "augment"
BT_SKIPPED = "back-translation skipped: augment.back_translation.model_path is not set"


def should_augment(train_rows: int, min_train_rows: int) -> tuple[bool, str]:
    """Whether train is small enough to augment, and the reason either way (for the report)."""
    if train_rows < min_train_rows:
        return True, f"train has {train_rows} rows < augment.min_train_rows={min_train_rows}"
    return False, f"train has {train_rows} rows >= augment.min_train_rows={min_train_rows}: passed through"


def _rewritable(record: dict[str, Any], roles: list[str]) -> dict[int, str]:
    return {
        i: m["content"]
        for i, m in enumerate(record["messages"])
        if m.get("role") in roles and isinstance(m.get("content"), str) and m["content"].strip()
    }


def make_variant(record: dict[str, Any], new_texts: dict[int, str], method: str) -> dict[str, Any]:
    """A new record: `record` with the messages in `new_texts` replaced, traced back to the original."""
    messages = [
        {**m, "content": new_texts[i]} if i in new_texts else dict(m)
        for i, m in enumerate(record["messages"])
    ]
    category = record.get("category")
    meta = {**(record.get("meta") or {}), "augmented_from": record["id"], "augmentation": method}
    return {
        "id": content_id(messages, category),
        "messages": messages,
        "category": category,
        "meta": meta,
        "source": record.get("source", {}),
    }


def synonym_variants(
    records: list[dict[str, Any]],
    replacer: SynonymReplacer,
    params: AugmentParams,
    seed: int,
) -> list[dict[str, Any]]:
    """`params.copies_per_row` synonym variants per record (those that differ from the original).

    Each copy is seeded by (seed, record id, copy number), so a rerun makes the same rows.
    """
    out = []
    for record in track(records, "augment: synonyms", total=len(records)):
        texts = _rewritable(record, params.roles)
        if not texts:
            continue
        for copy in range(params.copies_per_row):
            rng = random.Random(f"{seed}:{record['id']}:{copy}")
            changed = replacer.variant(texts, params.synonyms.replace_fraction, rng)
            if changed:
                out.append(make_variant(record, changed, "synonym"))
    return out


class BackTranslator:
    """Round-trip translation through two local seq2seq models (greedy, batched)."""

    def __init__(self, params: BackTranslationParams) -> None:
        if params.model_path is None or params.reverse_model_path is None:
            raise ConfigError("augment.back_translation: model_path and reverse_model_path must both be set")
        import torch  # lazy: torch ~9 s; only back-translation needs it, augment runs without

        self.params = params
        cuda = torch.cuda.is_available()
        if params.device == "cuda" and not cuda:
            raise ConfigError("augment.back_translation.device is cuda but no CUDA device is available")
        self.device = "cuda" if params.device == "cuda" or (params.device == "auto" and cuda) else "cpu"
        self.forward = self._load(Path(params.model_path), "model_path")
        self.reverse = self._load(Path(params.reverse_model_path), "reverse_model_path")

    def _load(self, path: Path, key: str) -> tuple[Any, Any]:
        if not path.is_dir():
            raise ConfigError(f"augment.back_translation.{key}: model directory not found: {path}")
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer  # lazy: transformers ~5 s

        try:
            tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            model = AutoModelForSeq2SeqLM.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError, KeyError) as exc:
            raise InputFileError(
                f"{path}: cannot load a seq2seq translation model and tokenizer "
                f"(augment.back_translation.{key}): {exc}"
            ) from None
        model.to(self.device).eval()
        return tokenizer, model

    def _translate(self, texts: list[str], pair: tuple[Any, Any], prefix: str) -> list[str]:
        import torch  # lazy: torch ~9 s; only back-translation

        tokenizer, model = pair
        out: list[str] = []
        size = self.params.batch_size
        for start in range(0, len(texts), size):
            batch = [prefix + t for t in texts[start : start + size]]
            enc = tokenizer(
                batch, return_tensors="pt", padding=True, truncation=True, max_length=self.params.max_length
            ).to(self.device)
            enc.pop("token_type_ids", None)
            with torch.no_grad():
                ids = model.generate(
                    **enc, do_sample=False, num_beams=1, max_new_tokens=self.params.max_length
                )
            out.extend(t.strip() for t in tokenizer.batch_decode(ids, skip_special_tokens=True))
        return out

    def round_trip(self, texts: list[str]) -> list[str]:
        """Translate forward, then back: a paraphrase of each text (same order)."""
        if not texts:
            return []
        there = self._translate(texts, self.forward, self.params.forward_prefix)
        return self._translate(there, self.reverse, self.params.reverse_prefix)


def back_translation_variants(
    records: list[dict[str, Any]], translator: BackTranslator, roles: list[str]
) -> list[dict[str, Any]]:
    """One back-translated variant per record whose rewritable turns came back changed and non-empty."""
    keys: list[tuple[int, int]] = []
    texts: list[str] = []
    for r, record in enumerate(records):
        for m, text in _rewritable(record, roles).items():
            keys.append((r, m))
            texts.append(text)
    log.info("augment: back-translating %d turns of %d rows", len(texts), len(records))
    per_record: dict[int, dict[int, str]] = {}
    for (r, m), original, new in zip(keys, texts, translator.round_trip(texts), strict=True):
        if new and new != original:
            per_record.setdefault(r, {})[m] = new
    return [
        make_variant(records[r], changed, "back_translation") for r, changed in sorted(per_record.items())
    ]


def augment_train(
    train: list[dict[str, Any]],
    cfg: Config,
    taken_ids: set[str],
    translator: BackTranslator | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The new rows for a small train split, and what happened (for the report).

    Args:
        train: the train rows.
        cfg: the config (`augment` section and `seed`).
        taken_ids: ids already present in any split; variants with one of them are dropped, not added.
        translator: a loaded back-translator, or None to skip back-translation.
    """
    params = cfg.augment
    candidates: list[dict[str, Any]] = []
    info: dict[str, Any] = {}
    if params.synonyms.enabled and params.copies_per_row > 0:
        replacer = SynonymReplacer(load_dictionary(params.synonyms.dictionary))
        candidates += synonym_variants(train, replacer, params, cfg.seed)
        info["synonyms"] = str(params.synonyms.dictionary) if params.synonyms.dictionary else "bundled"
    else:
        info["synonyms"] = "disabled"
    if translator is not None:
        candidates += back_translation_variants(train, translator, params.roles)
        info["back_translation"] = f"ran: {params.back_translation.model_path} -> " \
            f"{params.back_translation.reverse_model_path}"
    else:
        info["back_translation"] = BT_SKIPPED
    added = []
    seen = set(taken_ids)
    for row in candidates:
        if row["id"] not in seen:  # same text as a row of some split (or an earlier variant)
            seen.add(row["id"])
            added.append(row)
    info["duplicate_variants_dropped"] = len(candidates) - len(added)
    info["added_by_method"] = dict(Counter(r["meta"]["augmentation"] for r in added))
    return added, info


def run(cfg: Config, layout: Layout) -> dict[str, Any]:
    """Read the split files, augment train when it is small, write `data/processed/<split>.jsonl`."""
    missing = [str(layout.split_file(s)) for s in SPLITS if not layout.split_file(s).is_file()]
    if missing:
        raise InputFileError(f"{', '.join(missing)}: not found; run `tuneline split` first")
    splits = {s: list(read_jsonl(layout.split_file(s))) for s in SPLITS}
    rows_in = sum(len(rows) for rows in splits.values())
    go, reason = should_augment(len(splits["train"]), cfg.augment.min_train_rows)
    added: list[dict[str, Any]] = []
    info: dict[str, Any] = {"added_by_method": {}}
    if go:
        bt = cfg.augment.back_translation
        translator = BackTranslator(bt) if bt.model_path is not None else None
        if translator is None:
            log.info("augment: %s", BT_SKIPPED)
        taken = {r["id"] for rows in splits.values() for r in rows}
        added, info = augment_train(splits["train"], cfg, taken, translator)
    else:
        log.info("augment: skipped, %s", reason)
    ledger = Ledger(STAGE, rows_in=rows_in, rows_kept=rows_in, rows_added=len(added))
    ledger.extra.update(
        skipped=not go,
        reason=reason,
        splits={
            s: {"before": len(rows), "after": len(rows) + (len(added) if s == "train" else 0)}
            for s, rows in splits.items()
        },
        **info,
    )
    outputs = {layout.processed(s): rows + (added if s == "train" else []) for s, rows in splits.items()}
    return finish_stage(layout, ledger, [], outputs)
