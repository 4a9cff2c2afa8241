"""Synonym replacement for the `augment` stage: English word by word, Chinese by greedy longest match.

A dictionary is a JSON object `word -> [synonyms]`. English keys are matched case-insensitively as whole
words and the replacement takes the case of the word it replaces (Fast -> Quick, FAST -> QUICK). Keys
written in CJK characters are matched in runs of CJK text by greedy longest match, since Chinese puts no
spaces between words. Markdown code and placeholders such as "<URL>" are never touched.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from tuneline.data.textnorm import split_code
from tuneline.errors import ConfigError

BUNDLED = ("synonyms_en.json", "synonyms_zh.json")
_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_CJK_KEY_RE = re.compile(rf"[{_CJK}]")
_ENGLISH_KEY_RE = re.compile(r"[A-Za-z]+(?:['-][A-Za-z]+)*")
# Placeholders first, so that the word inside "<URL>" is skipped as a whole.
_SPAN_RE = re.compile(rf"<[A-Z_]+>|(?P<en>[A-Za-z]+(?:['-][A-Za-z]+)*)|(?P<zh>[{_CJK}]+)")


def parse_dictionary(data: Any, where: str) -> dict[str, list[str]]:
    """Check a decoded dictionary and drop each word from its own synonym list.

    Raises:
        ConfigError: naming `where` and the first offending entry.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: a synonym dictionary must be a JSON object word -> [synonyms], "
                          f"got {type(data).__name__}")
    out: dict[str, list[str]] = {}
    for word, syns in data.items():
        if not word.strip():
            raise ConfigError(f"{where}: empty word as a key")
        if not isinstance(syns, list) or not all(isinstance(s, str) and s.strip() for s in syns):
            raise ConfigError(f"{where}: entry {word!r} must be a list of non-empty strings, got {syns!r}")
        key = word.strip() if _CJK_KEY_RE.search(word) else word.strip().lower()
        merged = out.setdefault(key, [])
        for syn in syns:
            syn = syn.strip()
            if syn.lower() != key.lower() and syn not in merged:
                merged.append(syn)
    return {k: v for k, v in out.items() if v}


def load_dictionary(path: Path | None = None) -> dict[str, list[str]]:
    """The synonym dictionary at `path`, or the bundled English + Chinese ones when `path` is None.

    Raises:
        ConfigError: the file is missing, not JSON, or not a word -> [synonyms] object (names the file).
    """
    if path is None:
        merged: dict[str, list[str]] = {}
        for name in BUNDLED:
            text = resources.files("tuneline.resources").joinpath(name).read_text(encoding="utf-8")
            merged.update(parse_dictionary(json.loads(text), f"tuneline/resources/{name}"))
        return merged
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"augment.synonyms.dictionary: file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} line {exc.lineno}: not valid JSON: {exc.msg}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the synonym dictionary: {exc}") from None
    return parse_dictionary(data, str(path))


@dataclass(frozen=True)
class Candidate:
    """A replaceable word: message index, character span, and its synonyms."""

    message: int
    start: int
    end: int
    synonyms: list[str]


def match_case(original: str, replacement: str) -> str:
    """Give `replacement` the case pattern of `original` (lower, Capitalized or UPPER)."""
    if len(original) > 1 and original.isupper():
        return replacement.upper()
    if original[:1].isupper():
        return replacement[:1].upper() + replacement[1:]
    return replacement


class SynonymReplacer:
    """Finds replaceable words in texts and makes seeded variants."""

    def __init__(self, dictionary: dict[str, list[str]]) -> None:
        self.english = {k: v for k, v in dictionary.items() if _ENGLISH_KEY_RE.fullmatch(k)}
        self.chinese = {k: v for k, v in dictionary.items() if _CJK_KEY_RE.search(k)}
        self.max_zh = max((len(k) for k in self.chinese), default=0)

    def _chinese_spans(self, run: str, offset: int) -> list[tuple[int, int, list[str]]]:
        # Greedy longest match: at each position take the longest dictionary word starting there.
        spans = []
        i, n = 0, len(run)
        while i < n:
            for length in range(min(self.max_zh, n - i), 0, -1):
                syns = self.chinese.get(run[i : i + length])
                if syns:
                    spans.append((offset + i, offset + i + length, syns))
                    i += length
                    break
            else:
                i += 1
        return spans

    def spans(self, text: str) -> list[tuple[int, int, list[str]]]:
        """(start, end, synonyms) of every replaceable word of `text`, outside code and placeholders."""
        found: list[tuple[int, int, list[str]]] = []
        pos = 0
        for is_code, segment in split_code(text):
            if not is_code:
                for m in _SPAN_RE.finditer(segment):
                    if m.group("en"):
                        syns = self.english.get(m.group("en").lower())
                        if syns:
                            found.append((pos + m.start(), pos + m.end(), syns))
                    elif m.group("zh") and self.max_zh:
                        found.extend(self._chinese_spans(m.group("zh"), pos + m.start()))
            pos += len(segment)
        return found

    def variant(self, texts: dict[int, str], fraction: float, rng: random.Random) -> dict[int, str]:
        """Replace about `fraction` of the replaceable words (at least one) across `texts`.

        Args:
            texts: message index -> text of the turns that may be rewritten.
            fraction: share of the replaceable words to swap.
            rng: the seeded random source (same seed, same variant).

        Returns:
            message index -> new text, for the messages that changed (empty when nothing is replaceable).
        """
        candidates = [
            Candidate(i, s, e, syns) for i, text in texts.items() for s, e, syns in self.spans(text)
        ]
        if not candidates:
            return {}
        k = min(len(candidates), max(1, round(fraction * len(candidates))))
        chosen = sorted(rng.sample(range(len(candidates)), k), reverse=True)
        out = dict(texts)
        for idx in chosen:  # right to left, so earlier spans keep their offsets
            c = candidates[idx]
            text = out[c.message]
            new_word = match_case(text[c.start : c.end], rng.choice(c.synonyms))
            out[c.message] = text[: c.start] + new_word + text[c.end :]
        return {i: t for i, t in out.items() if t != texts[i]}
