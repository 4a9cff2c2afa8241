"""Tokenization cache: a split is rendered and tokenized once per (data, tokenizer, chat template).

The cache holds each record's full rendered token ids and assistant mask, untruncated, and the rows
the chat template cannot render (with their reason), in one `.npz` file under
`<root>/.tuneline/cache/tokens/`, named by a key over the split file's bytes, the tokenizer
(vocabulary, merges, special tokens), the chat template, the rendering options, the stop set and this
format's version and the rendering code's source.
`max_length`, truncation, labels and packing are applied on load (cheap), so a rerun with a new
`max_length` re-tokenizes nothing either. The trainer's parent process fills the cache before any
worker starts; workers only read it (slow tokenization inside workers stalls collectives).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tuneline.lm.chat import ChatFormat
from tuneline.lm.labels import encode_all
from tuneline.progress import track

logger = logging.getLogger(__name__)

FORMAT_VERSION = "2"
# The code that turns a record into ids and masks: a change to it must not be served from an old cache.
RENDERING_CODE = ("chat.py", "conversation.py", "template.py", "stops.py", "labels.py")


def rendering_code_hash() -> str:
    """sha256 over the source of the rendering code (`tuneline.lm`'s modules that decide ids and masks)."""
    h = hashlib.sha256()
    lm = Path(__file__).resolve().parent.parent / "lm"
    for name in RENDERING_CODE:
        h.update((lm / name).read_bytes())
    return h.hexdigest()
CACHE_DIR = Path(".tuneline") / "cache" / "tokens"


@dataclass
class Tokenized:
    """Every record of a split, rendered: ids and assistant masks, untruncated."""

    record_ids: list[str]
    ids: list[list[int]]
    masks: list[list[int]]
    key: str
    from_cache: bool
    rejected: list[dict[str, str]] = field(default_factory=list)  # {id, reason, detail}

    @property
    def lengths(self) -> list[int]:
        return [len(x) for x in self.ids]


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """sha256 over what decides the tokens: serialized tokenizer model, special tokens, chat template."""
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode())
    else:  # a slow tokenizer: its vocabulary decides
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    h.update(json.dumps(getattr(tokenizer, "special_tokens_map", {}), sort_keys=True, default=str).encode())
    h.update((getattr(tokenizer, "chat_template", None) or "").encode())
    return h.hexdigest()


def cache_key(data_path: Path, chat: ChatFormat) -> str:
    h = hashlib.sha256(f"tuneline-tokens-v{FORMAT_VERSION}\0".encode())
    with data_path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    h.update(tokenizer_fingerprint(chat.tokenizer).encode())
    h.update(json.dumps({"merge_system": chat.merge_system, "stops": chat.stop_ids}).encode())
    h.update(rendering_code_hash().encode())
    return h.hexdigest()[:32]


def tokenize_split(
    chat: ChatFormat, records: list[dict[str, Any]], data_path: Path, cache_root: Path | None
) -> Tokenized:
    """Rendered tokens of `records` (read from `data_path`), from the cache when present.

    Args:
        chat: the model's chat format (template, options, stop set).
        records: the split's canonical records, in file order.
        data_path: the split file (its bytes are part of the key).
        cache_root: workspace root holding `.tuneline/cache/tokens`; None disables the cache.

    Rows the template cannot render are listed in `rejected`, not raised.
    """
    key = cache_key(data_path, chat)
    path = cache_root / CACHE_DIR / f"{key}.npz" if cache_root is not None else None
    if path is not None and path.is_file():
        loaded = _load(path, key)
        if loaded is not None and len(loaded.ids) + len(loaded.rejected) == len(records):
            logger.info("tokens: %s from cache %s", data_path.name, path)
            return loaded
    kept, ids, masks, rejected = encode_all(chat, track(records, f"tokenizing {data_path.name}"))
    out = Tokenized(kept, ids, masks, key, from_cache=False, rejected=rejected)
    if path is not None:
        _save(path, out)
    return out


def _save(path: Path, tok: Tokenized) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    offsets = np.cumsum([0, *tok.lengths], dtype=np.int64)
    flat_ids = np.fromiter((t for row in tok.ids for t in row), dtype=np.int64, count=int(offsets[-1]))
    flat_mask = np.fromiter((t for row in tok.masks for t in row), dtype=np.int8, count=int(offsets[-1]))
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".npz", dir=path.parent)
    os.close(fd)
    with open(tmp, "wb") as f:
        np.savez(f, ids=flat_ids, mask=flat_mask, offsets=offsets,
                 record_ids=np.array(json.dumps(tok.record_ids)), key=np.array(tok.key),
                 rejected=np.array(json.dumps(tok.rejected)))
    os.replace(tmp, path)  # atomic: a reader never sees half a cache file


def _load(path: Path, key: str) -> Tokenized | None:
    try:
        with np.load(path) as z:
            if str(z["key"]) != key:
                return None
            offsets = z["offsets"].tolist()
            flat_ids, flat_mask = z["ids"].tolist(), z["mask"].tolist()
            record_ids = json.loads(str(z["record_ids"]))
            rejected = json.loads(str(z["rejected"]))
    except (OSError, ValueError, KeyError) as exc:  # a damaged cache file is rebuilt, not trusted
        logger.warning("tokens: ignoring unreadable cache %s (%s)", path, exc)
        return None
    spans = list(zip(offsets[:-1], offsets[1:], strict=True))
    return Tokenized(record_ids, [flat_ids[a:b] for a, b in spans], [flat_mask[a:b] for a, b in spans],
                     key, from_cache=True, rejected=rejected)
