"""The train stage's side of rendering: which chat format it trains with, and the rows it rejects.

A row the chat template cannot render (no system role, tool turns the template cannot show, a prompt
that is not a prefix of the finished conversation, a template error) is rejected with its reason into
`data/rejected/train.jsonl` and counted in `reports/train.json`; the stage goes on with the rest.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

from transformers import AutoTokenizer

from tuneline.config.loader import Config
from tuneline.errors import ConfigError
from tuneline.jsonio import write_jsonl
from tuneline.layout import Layout
from tuneline.lm.chat import ChatFormat
from tuneline.lm.errors import RenderError
from tuneline.lm.load import base_generation_config
from tuneline.lm.template import apply_chat_template_setting

logger = logging.getLogger(__name__)

EXAMPLES = 3  # row ids named per reason in the report


def chat_format_for(cfg: Config, layout: Layout, model_path: str) -> tuple[ChatFormat, str]:
    """(the ChatFormat training renders with, where its template came from).

    Raises:
        ConfigError: no usable chat template (none on the tokenizer, or `model.chat_template` names
            nothing).
    """
    remote = cfg.model.trust_remote_code
    tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=remote)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    source = apply_chat_template_setting(tokenizer, cfg.model.chat_template, layout.root)
    try:
        chat = ChatFormat(tokenizer, base_generation_config(model_path, remote), cfg.model.merge_system)
    except (RenderError, ValueError) as exc:
        raise ConfigError(f"model.chat_template: {exc}") from None
    p = chat.profile
    if p.system != "ok" and not cfg.model.merge_system:
        logger.warning("train: chat template: %s; rows with a system prompt are rejected unless "
                       "model.merge_system=true", p.system_detail)
    return chat, source


def write_rejected(layout: Layout, splits: dict[str, tuple[list[dict[str, Any]], list[dict[str, str]]]]
                   ) -> dict[str, Any]:
    """Write every unrenderable row (with split, reason, detail and source) and summarise them.

    Returns:
        {"rows", "by_reason": {reason: {"rows", "detail", "examples"}}, "summary"} for the report.
    """
    rows = []
    for split, (records, rejected) in splits.items():
        by_id = {str(r.get("id")): r for r in records}
        for r in rejected:
            source = by_id.get(r["id"], {}).get("source")
            rows.append({"stage": "train", "split": split, **r, "source": source,
                         "record": by_id.get(r["id"])})
    write_jsonl(layout.rejected("train"), rows)
    counts = Counter(r["reason"] for r in rows)
    by_reason = {
        reason: {"rows": n, "detail": next(r["detail"] for r in rows if r["reason"] == reason),
                 "examples": [r["id"] for r in rows if r["reason"] == reason][:EXAMPLES]}
        for reason, n in counts.most_common()
    }
    summary = "; ".join(f"{reason}: {v['rows']} rows ({v['detail']})" for reason, v in by_reason.items())
    if rows:
        logger.warning("train: %d rows the chat template cannot render, rejected into %s: %s",
                       len(rows), layout.rejected("train"), summary)
    return {"rows": len(rows), "by_reason": by_reason, "summary": summary}
