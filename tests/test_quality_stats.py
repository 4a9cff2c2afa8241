"""The clean stage's repetition statistics equal a plain reference implementation.

The quality module computes the repetition rules the cheap way (word counts from distinct tokens, a bound
that skips the 2-gram count, an early exit when no line repeats, CJK words split without a regex). The
reference below is the straightforward version those replaced, kept here on purpose: on random texts
(English words, CJK runs, numbers, punctuation, repeated lines, fenced code, very short turns) the fast
path must give the same measurements and the same failures, details included, so the stage's outputs stay
byte-identical.
"""

from __future__ import annotations

import re
from collections import Counter
from operator import itemgetter

from hypothesis import given, settings
from hypothesis import strategies as st

from tuneline.config.clean import QualityParams
from tuneline.data import quality

# --- the reference: one tokenization, one filter, one Counter per statistic ------------------------------

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
_TOKEN_RE = re.compile(rf"[{_CJK}]|[^\W{_CJK}]+")
_LETTER_RE = re.compile(r"[^\W\d_]")


def ref_tokenize(text: str) -> list[str]:
    tokens: list[str] = []
    has_cjk = re.search(f"[{_CJK}]", text) is not None
    for word in text.split():
        tokens.extend(_TOKEN_RE.findall(word) if has_cjk and not word.isascii() else [word])
    return tokens


def ref_words(tokens: list[str]) -> list[str]:
    return [t for t in tokens if _LETTER_RE.search(t)]


def ref_duplicate_line_fraction(text: str) -> float:
    lines = [line.strip() for line in text.split("\n")]
    lines = [line for line in lines if line and len(ref_words(ref_tokenize(line))) >= 3]
    if len(lines) < 2:
        return 0.0
    return (len(lines) - len(set(lines))) / len(lines)


def ref_top_ngram_fraction(tokens: list[str]) -> float:
    if len(tokens) <= 2:
        return 0.0
    grams = Counter(zip(tokens, tokens[1:], strict=False))
    gram, count = max(grams.items(), key=itemgetter(1))
    if count < 2:
        return 0.0
    return count * sum(map(len, gram)) / sum(map(len, tokens))


def ref_repetition_failures(texts: list[str], params: QualityParams) -> list[tuple[str, str]]:
    """duplicate_lines and repeated_ngrams as the rules define them: every turn measured in full."""
    labels = [f"turn {i}" for i in range(len(texts))]
    turns = [(quality.prose(t), label) for t, label in zip(texts, labels, strict=True) if t]
    turns = [(t, label) for t, label in turns if t.strip()]
    long_turns = [(t, label, ref_words(ref_tokenize(t))) for t, label in turns]
    long_turns = [x for x in long_turns if len(x[2]) >= params.repetition_min_words]
    failures = []
    dup, where = max(((ref_duplicate_line_fraction(t), label) for t, label, _ in long_turns),
                     default=(0.0, ""))
    if dup > params.max_duplicate_line_fraction:
        failures.append(("duplicate_lines",
                         f"duplicate_lines {dup:.3f} > {params.max_duplicate_line_fraction} in {where}"))
    top, where = max(((ref_top_ngram_fraction(w), label) for _, label, w in long_turns), default=(0.0, ""))
    if top > params.max_top_ngram_fraction:
        failures.append(("repeated_ngrams",
                         f"repeated_ngrams {top:.3f} > {params.max_top_ngram_fraction} in {where}"))
    return failures


# --- random texts --------------------------------------------------------------------------------------

_PIECES = ["the", "a", "data", "model", "C#", "x", "1,234", "42", "(7)", "question?", "...", "#", "###",
           "-", "•", "=", "don't", "e-mail", "naïve", "Straße", "中文", "的", "数据模型", "中a文",
           "日本語です", "한국어", "<URL>", "_", "x_1", "…", "!!", "ok."]
word = st.sampled_from(_PIECES) | st.text(alphabet="ab的,.1 ", min_size=1, max_size=4)
line = st.lists(word, max_size=8).map(" ".join)
# A small pool of lines drawn again and again: repeated lines and repeated 2-grams happen often.
turn = st.lists(line, min_size=1, max_size=5).flatmap(
    lambda pool: st.lists(st.sampled_from(pool), max_size=14).map("\n".join)
) | st.sampled_from(["", " ", "\n\n", "ok", "```\nx = 1\nx = 1\n```", "中文中文中文中文"])
params = st.builds(
    QualityParams,
    max_duplicate_line_fraction=st.sampled_from([0.0, 0.1, 0.3, 1.0]),
    max_top_ngram_fraction=st.sampled_from([0.0, 0.05, 0.1, 0.2, 0.5, 1.0]),
    repetition_min_words=st.sampled_from([0, 1, 3, 10, 50]),
)


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet="ab 的中,.1#\n\t", max_size=40) | turn)
def test_tokenize_and_words_match_the_reference(text: str) -> None:
    tokens = quality.tokenize(text)
    assert tokens == ref_tokenize(text)
    assert quality.words(tokens) == ref_words(tokens)
    # Same words, same counts, same (first-occurrence) order: the n-gram bound sees what the rule sees.
    assert list(quality.word_counts(tokens).items()) == list(Counter(ref_words(tokens)).items())


@settings(max_examples=400, deadline=None)
@given(turn)
def test_duplicate_line_fraction_matches_the_reference(text: str) -> None:
    assert quality.duplicate_line_fraction(text) == ref_duplicate_line_fraction(text)


@settings(max_examples=400, deadline=None)
@given(turn, st.sampled_from([0.0, 0.01, 0.05, 0.1, 0.2, 0.5, 1.0]))
def test_top_ngram_bound_never_hides_a_failure(text: str, limit: float) -> None:
    """Guards the 2-gram skip: a turn is skipped only when its exact value is within the limit."""
    tokens = quality.tokenize(text)
    exact = ref_top_ngram_fraction(ref_words(tokens))
    assert quality.top_ngram_fraction(quality.words(tokens)) == exact
    if not quality.top_ngram_may_exceed(quality.word_counts(tokens), limit):
        assert exact <= limit


@settings(max_examples=300, deadline=None)
@given(st.lists(turn, min_size=1, max_size=4), params)
def test_repetition_failures_match_the_reference(texts: list[str], p: QualityParams) -> None:
    got = [f for f in quality.heuristic_failures(texts, p) if f[0] in ("duplicate_lines", "repeated_ngrams")]
    assert got == ref_repetition_failures(texts, p)


def test_skipped_turns_do_not_change_the_worst_turn() -> None:
    """A record whose first turn is bounded out and whose second repeats: the detail names the second."""
    p = QualityParams(repetition_min_words=5, max_top_ngram_fraction=0.2)
    calm = "one two three four five six seven eight nine ten"
    loud = "buy now " * 10
    assert quality.heuristic_failures([calm, loud], p) == ref_repetition_failures([calm, loud], p)
    assert quality.heuristic_failures([calm, loud], p)[0][1].endswith("in turn 1")


def test_record_length_rules_count_the_joining_newlines() -> None:
    """record_failures sums lengths instead of joining the texts: the newlines between turns still count
    (assistant "ab" + "c" is 4 characters as "ab\\nc"; the whole record adds one per message boundary)."""
    from tuneline.config.clean import CleanParams
    from tuneline.data.clean import record_failures

    record = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ab"},
                           {"role": "user", "content": "more"}, {"role": "assistant", "content": "c"}]}
    rules = lambda **q: [r for r, _ in record_failures(record, CleanParams(quality=q))]  # noqa: E731
    assert "too_short" not in rules(min_chars=4)
    assert "too_short" in rules(min_chars=5)
    assert "too_long" not in rules(max_chars=12)  # 2 + 2 + 4 + 1 + 3 newlines
    assert "too_long" in rules(max_chars=11)
