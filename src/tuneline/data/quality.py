"""Quality filters of the clean stage: Gopher/C4-style heuristics and the optional classifier hook.

Each heuristic is a pure function of a text returning the measured value; `heuristic_failures` compares
them with the configured limits and returns every failing rule, in a fixed order, so the stage can
record the first one as the reason and all of them as the detail.

The Gopher rules were made for web pages; chat data differs, so they measure prose only:

- Fenced code (```...```) is left out of every heuristic: code repeats lines (`}`, `break;`) and is
  made of symbols by nature.
- Repetition is judged per turn (a rewrite task echoes its input), only on turns of at least
  `repetition_min_words` words, and only on words (tokens holding a letter): numbers and symbols
  (`= 36`, a grid of zeros) are for the symbol rules.
- duplicate_lines counts content lines only (at least `_CONTENT_LINE_WORDS` words): short labels repeat
  in good answers ("Options:", "- yes", a screenplay's "JENNY", "Ex Input:"); repeated sentences do not.
- repeated_ngrams compares word 2-grams (CJK text, which has no spaces: character 2-grams).
"""

from __future__ import annotations

import re
from collections import Counter
from itertools import filterfalse
from operator import itemgetter, mul
from pathlib import Path

from tuneline.config.clean import ClassifierParams, QualityParams
from tuneline.errors import ConfigError, InputFileError

# Rule names in the order they are checked; the first failing one becomes the rejection reason.
RULES = (
    "empty_turn",
    "empty_after_clean",
    "too_short",
    "too_long",
    "output_schema_invalid",
    "symbol_ratio",
    "non_alnum",
    "duplicate_lines",
    "repeated_ngrams",
    "low_quality_score",
)

_CJK_CHARS = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
# A token is one CJK character (those scripts do not separate words by spaces, so character bigrams
# stand in for word bigrams) or a run of other word characters.
_TOKEN_RE = re.compile(rf"[{_CJK_CHARS}]|[^\W{_CJK_CHARS}]+")
_CJK_RE = re.compile(rf"[{_CJK_CHARS}]")
_CJK_RUN_RE = re.compile(rf"[{_CJK_CHARS}]+")
# A Markdown "###" heading marker is one symbol, not three; "C#" and "F#" are names, not symbols.
_HASH_RE = re.compile(r"(?<!\w)#+")
_ELLIPSIS_RE = re.compile(r"\.\.\.|…")
_WS_RE = re.compile(r"\s")
_ALNUM_OR_WS_RE = re.compile(r"[^\W_]+|\s+")
_ASCII_RUN_RE = re.compile(r"[\x00-\x7f]+")
_ASCII_WS = b" \t\n\r\x0b\x0c"
_ASCII_ALNUM_WS = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz" + _ASCII_WS
_FENCE_RE = re.compile(r"```.*?(?:```|\Z)", re.DOTALL)
_LETTER_RE = re.compile(r"[^\W\d_]")
_CONTENT_LINE_WORDS = 3


def prose(text: str) -> str:
    """`text` without its fenced code blocks (each becomes a line break)."""
    return _FENCE_RE.sub("\n", text) if "```" in text else text


def words(tokens: list[str]) -> list[str]:
    """The tokens that hold a letter (numbers, symbols and bullets are not words)."""
    # An all-letter token (isalpha) holds a letter: map() settles most tokens in C, the regex only sees
    # tokens with a digit or a symbol ("question?", "(7)", "1,2").
    alpha = list(map(str.isalpha, tokens))
    if all(alpha):
        return list(tokens)
    search = _LETTER_RE.search
    return [t for t, is_alpha in zip(tokens, alpha, strict=True) if is_alpha or search(t)]


def tokenize(text: str) -> list[str]:
    """Words for the repetition rules: whitespace-separated words; a word holding CJK characters is split
    into single CJK characters and runs of other word characters (those scripts put no spaces between
    words, so character bigrams stand in for word bigrams)."""
    words = text.split()
    if text.isascii() or not _CJK_RE.search(text):
        return words
    tokens: list[str] = []
    cjk_only = _CJK_RUN_RE.fullmatch
    for word in words:
        if word.isascii():
            tokens.append(word)
        elif cjk_only(word):  # every character is a token: iterating the string says so without a regex
            tokens.extend(word)
        else:
            tokens.extend(_TOKEN_RE.findall(word))
    return tokens


def symbol_ratio(text: str, n_words: int) -> float:
    """Gopher: the larger of (# symbols per word) and (ellipses per word)."""
    if n_words == 0:
        return 0.0
    hashes = len(_HASH_RE.findall(text)) if "#" in text else 0
    ellipses = len(_ELLIPSIS_RE.findall(text)) if ("..." in text or "…" in text) else 0
    return max(hashes, ellipses) / n_words


def non_alnum_fraction(text: str) -> float:
    """Share of non-space characters that are neither a letter nor a digit (spaces are not counted, so
    Chinese and English text score alike)."""
    # The ASCII part goes through bytes.translate, which deletes in C at memory speed; only the
    # non-ASCII characters (few, in most text) need the slower Unicode-aware regexes.
    raw = text.encode("ascii", "ignore")
    visible = len(raw.translate(None, _ASCII_WS))
    other = len(raw.translate(None, _ASCII_ALNUM_WS))
    if len(raw) != len(text):
        rest = _ASCII_RUN_RE.sub("", text)
        visible += len(rest) - len(_WS_RE.findall(rest))
        other += len(_ALNUM_OR_WS_RE.sub("", rest))
    return other / visible if visible else 0.0


def duplicate_line_fraction(text: str) -> float:
    """Gopher: share of the content lines (`_CONTENT_LINE_WORDS` words or more) repeating an earlier one."""
    lines = [line for line in map(str.strip, text.split("\n")) if line]
    distinct = set(lines)
    if len(distinct) == len(lines):  # no line repeats, so no content line does: spare the tokenizer
        return 0.0
    # Each distinct line is tokenized once, however often it repeats.
    content = {line for line in distinct if len(words(tokenize(line))) >= _CONTENT_LINE_WORDS}
    if len(content) != len(distinct):
        lines = [line for line in lines if line in content]
    if len(lines) < 2:
        return 0.0
    return (len(lines) - len(content)) / len(lines)


def top_ngram_fraction(tokens: list[str], n: int = 2) -> float:
    """Gopher: share of the token characters covered by the most frequent n-gram, counting only n-grams
    that occur more than once (a short text's single n-gram would otherwise cover all of it)."""
    if len(tokens) <= n:
        return 0.0
    grams = Counter(zip(*(tokens[i:] for i in range(n)), strict=False))
    # The first n-gram with the top count, as most_common(1) picks it, without its heap machinery.
    gram, count = max(grams.items(), key=itemgetter(1))
    if count < 2:
        return 0.0
    total = sum(map(len, tokens))
    return count * sum(map(len, gram)) / total


def word_counts(tokens: list[str]) -> Counter[str]:
    """How often each word of `tokens` occurs (`Counter(words(tokens))`, in first-occurrence order).

    Counting first and testing each distinct token for a letter afterwards is cheaper than filtering every
    token: a turn of 100 tokens has perhaps 60 distinct ones.
    """
    counts = Counter(tokens)
    # An all-letter token holds a letter: filterfalse settles those in C, the regex sees only the rest.
    for key in list(filterfalse(str.isalpha, counts)):
        if not _LETTER_RE.search(key):
            del counts[key]
    return counts


def top_ngram_may_exceed(counts: Counter[str], limit: float) -> bool:
    """False when the 2-gram `top_ngram_fraction` of the words counted in `counts` (see `word_counts`) is
    certainly at most `limit`, from the word counts alone (far cheaper than counting the 2-grams, and
    enough for nearly every turn).

    A 2-gram (a, b) occurring c times has c <= count(a) and c <= count(b), so the characters it covers,
    c * (len(a) + len(b)), are at most 2 * max over words of count(w) * len(w).
    """
    n_words = sum(counts.values())
    if n_words <= 2 or len(counts) == n_words:  # too short, or no word repeats so no 2-gram does
        return False
    covers = list(map(mul, counts.values(), map(len, counts)))
    return 2 * max(covers) / sum(covers) > limit


def heuristic_failures(
    texts: list[str], params: QualityParams, labels: list[str] | None = None
) -> list[tuple[str, str]]:
    """The Gopher-style rules (symbol_ratio, non_alnum, duplicate_lines, repeated_ngrams) failed by the free
    text of one record, each as (rule, detail).

    `texts` are the record's prose turns (`labels` name them in the details, e.g. "message 3"). Symbol and
    non-alnum density are measured on all of them together (a short "2+2=?" is not garbage when its answer
    follows); repetition is measured per turn and the worst turn counts, because repeating across turns is
    normal (a rewrite task echoes its input, a correct sentence comes back unchanged), and only on turns
    of `repetition_min_words` words or more. Fenced code is left out of every rule (see the module).
    """
    labels = labels or [f"turn {i}" for i in range(len(texts))]
    turns = [(prose(t), label) for t, label in zip(texts, labels, strict=True) if t]
    turns = [(t, label) for t, label in turns if t.strip()]
    if not turns:
        return []
    failures: list[tuple[str, str]] = []
    per_turn = [tokenize(t) for t, _ in turns]
    joined = "\n".join(t for t, _ in turns)
    ratio = symbol_ratio(joined, sum(map(len, per_turn)))
    if ratio > params.max_symbol_ratio:
        failures.append(("symbol_ratio", f"symbol_ratio {ratio:.3f} > {params.max_symbol_ratio}"))
    frac = non_alnum_fraction(joined)
    if frac > params.max_non_alnum_fraction:
        failures.append(("non_alnum", f"non_alnum {frac:.3f} > {params.max_non_alnum_fraction}"))
    long_turns = []
    limit = params.max_top_ngram_fraction
    for (text, label), tokens in zip(turns, per_turn, strict=True):
        if len(tokens) >= params.repetition_min_words:  # words <= tokens: most turns stop here, cheaply
            counts = word_counts(tokens)
            if sum(counts.values()) >= params.repetition_min_words:
                long_turns.append((text, label, tokens, top_ngram_may_exceed(counts, limit)))
    dup, where = max(((duplicate_line_fraction(t), label) for t, label, _, _ in long_turns if "\n" in t),
                     default=(0.0, ""))
    if dup > params.max_duplicate_line_fraction:
        failures.append(("duplicate_lines",
                         f"duplicate_lines {dup:.3f} > {params.max_duplicate_line_fraction} in {where}"))
    # A turn whose bound is within the limit cannot fail, nor can it be the worst turn of a failing record
    # (that one is above the limit): its exact value is never needed.
    top, where = max(((top_ngram_fraction(words(tokens)), label) for _, label, tokens, may in long_turns
                      if may), default=(0.0, ""))
    if top > params.max_top_ngram_fraction:
        failures.append(("repeated_ngrams",
                         f"repeated_ngrams {top:.3f} > {params.max_top_ngram_fraction} in {where}"))
    return failures


class QualityClassifier:
    """The classifier hook: a joblib-saved scikit-learn pipeline scoring record texts.

    The score is the probability of the positive class, i.e. the last column of `predict_proba`
    (scikit-learn orders `classes_` ascending, so 1 / True / the later label of a binary model).
    """

    def __init__(self, params: ClassifierParams) -> None:
        if params.path is None:
            raise ConfigError("clean.classifier.path is not set")
        self.path = Path(params.path)
        self.threshold = params.threshold
        if not self.path.is_file():
            raise ConfigError(f"clean.classifier.path: classifier file not found: {self.path}")
        import joblib  # lazy: joblib ~1 s; only with a trained quality classifier

        try:
            self.model = joblib.load(self.path)
        except Exception as exc:  # unpickling can fail in many ways: all mean "not a usable model file"
            raise InputFileError(
                f"{self.path}: cannot load the quality classifier (expected a joblib-saved scikit-learn "
                f"pipeline): {exc.__class__.__name__}: {exc}"
            ) from None
        if not callable(getattr(self.model, "predict_proba", None)):
            raise ConfigError(
                f"clean.classifier.path: {self.path} holds a {type(self.model).__name__}, "
                "which has no predict_proba"
            )

    def scores(self, texts: list[str]) -> list[float]:
        """Positive-class probability of each text (one batched call)."""
        if not texts:
            return []
        try:
            proba = self.model.predict_proba(texts)
        except Exception as exc:
            raise InputFileError(
                f"{self.path}: the quality classifier failed on text input: {exc.__class__.__name__}: {exc}"
            ) from None
        return [float(row[-1]) for row in proba]
