"""Tokenization cache: a split is rendered and tokenized once per (data, tokenizer, chat template).

The cache holds each record's full rendered token ids and assistant mask, untruncated, in one `.npz`
file under `<root>/.tuneline/cache/tokens/`, named by a key over the split file's bytes, the
tokenizer (vocabulary, merges, special tokens), the chat template and this format's version.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneline.progress import track
from tuneline.train.tokenize import encode_messages, messages_of

logger = logging.getLogger(__name__)

FORMAT_VERSION = "1"
CACHE_DIR = Path(".tuneline") / "cache" / "tokens"


@dataclass
class Tokenized:
    """Every record of a split, rendered: ids and assistant masks, untruncated."""

    record_ids: list[str]
    ids: list[list[int]]
    masks: list[list[int]]
    key: str
    from_cache: bool

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


def cache_key(data_path: Path, tokenizer: Any) -> str:
    h = hashlib.sha256(f"tuneline-tokens-v{FORMAT_VERSION}\0".encode())
    with data_path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    h.update(tokenizer_fingerprint(tokenizer).encode())
    return h.hexdigest()[:32]


def tokenize_split(
    tokenizer: Any, records: list[dict[str, Any]], data_path: Path, cache_root: Path | None
) -> Tokenized:
    """Rendered tokens of `records` (read from `data_path`), from the cache when present.

    Args:
        tokenizer: tokenizer with a chat template marking assistant tokens.
        records: the split's canonical records, in file order.
        data_path: the split file (its bytes are part of the key).
        cache_root: workspace root holding `.tuneline/cache/tokens`; None disables the cache.

    Raises:
        ConfigError: the tokenizer cannot render assistant masks (see `encode_messages`).
    """
    key = cache_key(data_path, tokenizer)
    path = cache_root / CACHE_DIR / f"{key}.npz" if cache_root is not None else None
    if path is not None and path.is_file():
        loaded = _load(path, key)
        if loaded is not None and len(loaded.ids) == len(records):
            logger.info("tokens: %s from cache %s", data_path.name, path)
            return loaded
    ids, masks = [], []
    for record in track(records, f"tokenizing {data_path.name}"):
        i, m = encode_messages(tokenizer, messages_of(record))
        ids.append(i)
        masks.append(m)
    out = Tokenized([str(r.get("id")) for r in records], ids, masks, key, from_cache=False)
    if path is not None:
        _save(path, out)
    return out


def _save(path: Path, tok: Tokenized) -> None:
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    offsets = np.cumsum([0, *tok.lengths], dtype=np.int64)
    flat_ids = np.fromiter((t for row in tok.ids for t in row), dtype=np.int64, count=int(offsets[-1]))
    flat_mask = np.fromiter((t for row in tok.masks for t in row), dtype=np.int8, count=int(offsets[-1]))
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".npz", dir=path.parent)
    os.close(fd)
    with open(tmp, "wb") as f:
        np.savez(f, ids=flat_ids, mask=flat_mask, offsets=offsets,
                 record_ids=np.array(json.dumps(tok.record_ids)), key=np.array(tok.key))
    os.replace(tmp, path)  # atomic: a reader never sees half a cache file


def _load(path: Path, key: str) -> Tokenized | None:
    import numpy as np

    try:
        with np.load(path) as z:
            if str(z["key"]) != key:
                return None
            offsets = z["offsets"].tolist()
            flat_ids, flat_mask = z["ids"].tolist(), z["mask"].tolist()
            record_ids = json.loads(str(z["record_ids"]))
    except (OSError, ValueError, KeyError) as exc:  # a damaged cache file is rebuilt, not trusted
        logger.warning("tokens: ignoring unreadable cache %s (%s)", path, exc)
        return None
    spans = list(zip(offsets[:-1], offsets[1:], strict=True))
    return Tokenized(record_ids, [flat_ids[a:b] for a, b in spans], [flat_mask[a:b] for a, b in spans],
                     key, from_cache=True)
