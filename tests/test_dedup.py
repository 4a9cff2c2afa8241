"""dedup: exact-key normalization, the exact near-duplicate search vs brute force, survivors, the stage."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tuneline.config import Config
from tuneline.data import neardup
from tuneline.data.dedup import (
    brute_force_pairs,
    dedup_records,
    exact_key,
    near_duplicate_pairs,
    normalize_content,
    run,
)
from tuneline.data.tfidf import char_wb_tfidf
from tuneline.jsonio import read_json, read_jsonl, write_jsonl
from tuneline.layout import Layout
from tuneline.records import make_record

T = 0.95
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"  # absent in a fresh clone
ENGINES = ["vectorized"] + (["compiled"] if neardup.HAVE_NUMBA else [])
EN_WORDS = (
    "the model learns from data and every answer should be short clear helpful honest kind careful "
    "write a poem about river mountain city night summer winter light music garden letter friend "
    "explain why how when where translate summarize list describe compare number story code python"
).split()
ZH_CHARS = list("的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年得就那要下以生会自着去之过家学")


def en_text(rng: random.Random, n_words: int = 60) -> str:
    return " ".join(rng.choice(EN_WORDS) for _ in range(n_words))


def zh_text(rng: random.Random, n_chars: int = 120) -> str:
    return "".join(rng.choice(ZH_CHARS) for _ in range(n_chars))


def cosine(texts: list[str], i: int, j: int) -> float:
    """The definition: float64 dot of the stage's TF-IDF rows (same as brute force)."""
    x = neardup.tfidf_matrix(texts)
    return float(neardup.exact_dots(x, np.array([i]), np.array([j]))[0])


def edit(text: str, k: int, lang: str, seed: int = 7) -> str:
    """`text` with its first k tokens (words, or characters for Chinese) replaced by fresh ones."""
    rng = random.Random(seed)
    tokens = text.split() if lang == "en" else list(text)
    positions = rng.sample(range(len(tokens)), len(tokens))
    for pos in positions[:k]:
        tokens[pos] = f"zq{pos}x" if lang == "en" else chr(0x9F00 + pos)
    return " ".join(tokens) if lang == "en" else "".join(tokens)


def straddling_corpus(lang: str) -> tuple[list[str], int, int, int]:
    """A corpus with a base text, one edit of it just above T and one just below (checked by brute force)."""
    rng = random.Random(1 if lang == "en" else 2)
    make = en_text if lang == "en" else zh_text
    fillers = [make(rng) for _ in range(30)]
    base = make(rng)
    for k in range(1, 40):
        texts = [*fillers, base, edit(base, k, lang), edit(base, k + 1, lang)]
        b = len(fillers)
        if cosine(texts, b, b + 1) >= T > cosine(texts, b, b + 2):
            return texts, b, b + 1, b + 2
    raise AssertionError("no edit count straddles the threshold")


# --- exact duplicates -------------------------------------------------------------------------------------


def test_normalize_content_folds_case_width_punctuation_and_space() -> None:
    assert normalize_content("  Hello,\tWORLD!! ") == "hello world"
    assert normalize_content("ＡＢＣ。") == "abc"  # NFKC full-width
    assert normalize_content("你好，世界。") == "你好 世界"
    assert normalize_content("Straße") == normalize_content("STRASSE")  # casefold, not lower


def test_exact_key_uses_roles_and_order() -> None:
    def two(first: tuple[str, str], second: tuple[str, str]) -> dict:
        return make_record([{"role": r, "content": c} for r, c in (first, second)], {})

    a = two(("user", "Hi there!"), ("assistant", "Hello."))
    b = two(("user", "hi  THERE"), ("assistant", "hello"))
    swapped = two(("assistant", "Hi there!"), ("user", "Hello."))
    assert exact_key(a) == exact_key(b)
    assert exact_key(a) != exact_key(swapped)


# --- the near-duplicate search equals brute force -----------------------------------------------------------


@pytest.mark.parametrize("lang", ["en", "zh"])
@pytest.mark.parametrize("engine", ENGINES)
def test_planted_pairs_just_above_and_below_threshold(lang: str, engine: str) -> None:
    texts, base, above, below = straddling_corpus(lang)
    exact_copy = texts[base].upper() if lang == "en" else texts[base]
    texts = [*texts, exact_copy]
    truth = brute_force_pairs(texts, T)
    assert (base, above) in truth and (base, below) not in truth  # built on the intended sides
    assert (base, len(texts) - 1) in truth  # lowercasing makes the upper-case copy identical
    found = neardup.search(texts, T, engine=engine)
    assert found.pairs() == truth
    assert cosine(texts, base, above) - T < 0.05 and T - cosine(texts, base, below) < 0.05  # "just"


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("threshold", [0.3, 0.8, 0.95, 1.0])
def test_equals_brute_force_on_random_corpora(engine: str, seed: int, threshold: float) -> None:
    rng = random.Random(seed)
    texts: list[str] = []
    for _ in range(120):
        if texts and rng.random() < 0.4:
            texts.append(edit(rng.choice(texts), rng.randint(0, 6), "en", seed=rng.randint(0, 99)))
        elif rng.random() < 0.2:
            texts.append(zh_text(rng, rng.randint(5, 80)))
        else:
            texts.append(en_text(rng, rng.randint(3, 40)))
    x = neardup.tfidf_matrix(texts)
    truth = neardup.brute_force_matrix(x, threshold)
    found = neardup.search_matrix(x, threshold, engine=engine)
    assert found.pairs() == truth.pairs()
    assert np.array_equal(found.sims, truth.sims)  # bit-identical cosines, not just the same decisions
    assert found.stats["verified"] <= found.stats["candidates"]


@settings(max_examples=60, deadline=None)
@given(
    texts=st.lists(st.text(alphabet="ab c中文", min_size=0, max_size=14), min_size=0, max_size=25),
    threshold=st.floats(min_value=0.05, max_value=1.0),
    engine=st.sampled_from(ENGINES),
)
def test_property_equals_brute_force(texts: list[str], threshold: float, engine: str) -> None:
    assert neardup.search(texts, threshold, engine=engine).pairs() == brute_force_pairs(texts, threshold)


def test_edge_inputs() -> None:
    assert near_duplicate_pairs([]) == set()
    assert near_duplicate_pairs(["only one"]) == set()
    assert near_duplicate_pairs(["", "  ", ""]) == set()  # no n-gram at all: nothing is similar
    same = ["the very same text"] * 5
    assert near_duplicate_pairs(same, 1.0) == {(i, j) for i in range(5) for j in range(i + 1, 5)}
    assert near_duplicate_pairs(["", "abc abc", "", "abc abc"]) == {(1, 3)}
    with pytest.raises(ValueError, match="threshold"):
        near_duplicate_pairs(["a", "b"], 0.0)


@settings(max_examples=150, deadline=None)
@given(
    texts=st.lists(st.text(alphabet="aAbZ é\t\n\u3000中文İß,.", max_size=16), min_size=1, max_size=8),
    ngram_range=st.sampled_from([(1, 1), (1, 2), (1, 3), (2, 2), (2, 3), (3, 3)]),
)
def test_fast_tfidf_is_bit_identical_to_sklearn(texts: list[str], ngram_range: tuple[int, int]) -> None:
    try:
        ref = neardup.tfidf_vectorizer(ngram_range).fit_transform(texts)
    except ValueError:
        with pytest.raises(ValueError, match="empty vocabulary"):
            char_wb_tfidf(texts, ngram_range)
        return
    ours = char_wb_tfidf(texts, ngram_range)
    ref.sort_indices()
    ours.sort_indices()
    assert ours.shape == ref.shape and ours.dtype == ref.dtype == np.float32
    for part in ("indptr", "indices", "data"):
        assert np.array_equal(getattr(ours, part), getattr(ref, part)), part


def test_longer_ngrams_use_sklearn_and_still_match_brute_force() -> None:
    rng = random.Random(3)
    texts = [en_text(rng, 12) for _ in range(30)]
    texts += [edit(t, 1, "en") for t in texts[:10]]
    truth = brute_force_pairs(texts, 0.8, (3, 5))
    assert truth and near_duplicate_pairs(texts, 0.8, (3, 5)) == truth
    with pytest.raises(ValueError, match="1..3"):
        char_wb_tfidf(texts, (3, 5))


def test_vectorizer_settings_are_the_ones_used() -> None:
    vec = neardup.tfidf_vectorizer((2, 4))
    assert (vec.analyzer, vec.ngram_range, vec.lowercase, vec.norm) == ("char_wb", (2, 4), True, "l2")
    texts = ["Hello world", "hello World!", "你好世界"]
    ours = neardup.tfidf_matrix(texts, (2, 4))
    assert (ours != vec.fit_transform(texts)).nnz == 0


# --- survivors and the ledger ---------------------------------------------------------------------------


def rec(text: str, n: int) -> dict:
    """A one-message record, so that record_text is exactly `text` (the cosines checked above still hold)."""
    return make_record([{"role": "user", "content": text}], {"file": "data/raw/x.jsonl", "line": n + 1})


def chain_corpus() -> list[str]:
    """Fillers, then a ~ b and b ~ c above T but a !~ c (checked with brute force)."""
    rng = random.Random(5)
    fillers = [en_text(rng) for _ in range(20)]
    a = en_text(rng)
    for k in range(1, 30):
        b = edit(a, k, "en", seed=1)
        c = edit(b, k, "en", seed=2)
        texts = [*fillers, a, b, c]
        truth = brute_force_pairs(texts, T)
        n = len(fillers)
        if {(n, n + 1), (n + 1, n + 2)} <= truth and (n, n + 2) not in truth:
            return texts
    raise AssertionError("no chain found")


def test_survivor_is_first_kept_row_in_input_order() -> None:
    texts = chain_corpus()
    records = [rec(t, i) for i, t in enumerate(texts)]
    n = len(texts) - 3
    # One record per text, so exact and near dedup only see the planted chain.
    kept, rejected, extra = dedup_records(records, threshold=T)
    kept_ids = [r["id"] for r in kept]
    a, b, c = (records[n + k]["id"] for k in range(3))
    assert a in kept_ids and c in kept_ids and b not in kept_ids  # c's only near twin (b) was dropped
    assert [(r["id"], r["reason"], r["duplicate_of"]) for r in rejected] == [(b, "near_duplicate", a)]
    assert rejected[0]["similarity"] >= T
    again = dedup_records([dict(r) for r in records], threshold=T)
    assert [r["id"] for r in again[0]] == kept_ids and again[1] == rejected  # deterministic
    assert extra["duplicates"] == {"exact": 0, "near": 1}


def test_exact_then_near_points_at_kept_rows() -> None:
    texts, base, above, _ = straddling_corpus("en")
    records = [rec(t, i) for i, t in enumerate(texts)]
    copy_of_above = rec(texts[above].upper() + " !!", above)  # equal to `above` after normalization
    copy_of_base = rec(texts[base] + ".", base)
    records += [copy_of_above, copy_of_base]
    kept, rejected, extra = dedup_records(records, threshold=T)
    by_line = {(r["source"]["line"], r["reason"]): r for r in rejected}
    base_id = records[base]["id"]
    assert by_line[(above + 1, "near_duplicate")]["duplicate_of"] == base_id
    exact_above = [r for r in rejected if r["reason"] == "exact_duplicate" and r.get("via")]
    assert len(exact_above) == 1 and exact_above[0]["duplicate_of"] == base_id  # never a dropped row
    assert extra["duplicates"] == {"exact": 2, "near": 1}
    assert len(kept) + len(rejected) == len(records)
    top = extra["clusters"][0]
    assert top["survivor_id"] == base_id and top["size"] == 4 and len(top["member_ids"]) == 3


def test_switches_turn_kinds_off() -> None:
    texts, base, above, _ = straddling_corpus("zh")
    records = [rec(t, i) for i, t in enumerate(texts)] + [rec(texts[0], 99)]  # an exact copy of row 0
    _, rejected, _ = dedup_records(records, exact=False, near=False)
    assert rejected == []
    _, rejected, extra = dedup_records(records, exact=True, near=False)
    assert [r["reason"] for r in rejected] == ["exact_duplicate"] and extra["near_search"] == {}
    _, rejected, _ = dedup_records(records, exact=False, near=True, threshold=T)
    assert sorted(r["reason"] for r in rejected) == ["near_duplicate", "near_duplicate"]


def test_stage_run_on_tiny_workspace(workspace: Path) -> None:
    layout = Layout(workspace)
    texts, base, above, below = straddling_corpus("en")
    records = [rec(t, i) for i, t in enumerate(texts)] + [rec(texts[3], 50), rec("你好，世界。", 51),
                                                            rec("你好 世界", 52)]
    write_jsonl(layout.interim("clean"), records)
    report = run(Config(), layout)
    kept = list(read_jsonl(layout.interim("dedup")))
    rejected = list(read_jsonl(layout.rejected("dedup")))
    assert read_json(layout.report("dedup")) == report
    assert report["rows_in"] == len(records) == report["rows_kept"] + report["rows_rejected"]
    assert report["rows_kept"] == len(kept) and report["rows_rejected"] == len(rejected) == 3
    assert report["rejected_by_reason"] == {"exact_duplicate": 2, "near_duplicate": 1}
    assert report["duplicates"] == {"exact": 2, "near": 1} and report["threshold"] == T
    assert {r["stage"] for r in rejected} == {"dedup"}
    assert all(r["record"]["id"] == r["id"] and "source" in r for r in rejected)
    kept_ids = {r["id"] for r in kept}
    assert all(r["duplicate_of"] in kept_ids for r in rejected)
    assert records[below]["id"] in kept_ids and records[above]["id"] not in kept_ids
    assert report["clusters"] and all(c["size"] >= 2 and c["sample"] for c in report["clusters"])


@pytest.mark.skipif(not (SHARED_DATA / "alpaca_en_demo.json").exists(), reason="public sample data absent")
def test_alpaca_sample_exact_duplicates() -> None:
    rows = read_json(SHARED_DATA / "alpaca_en_demo.json")
    records = [
        make_record([{"role": "user", "content": (r["instruction"] + "\n" + r["input"]).strip()},
                     {"role": "assistant", "content": r["output"]}], {"file": "alpaca.json", "index": i})
        for i, r in enumerate(rows)
    ]
    kept, rejected, extra = dedup_records(records, threshold=T)
    assert extra["duplicates"]["exact"] == 14  # the sample's documented 14 duplicate rows
    assert len(kept) + len(rejected) == len(records)
    assert {r["source"]["index"] for r in rejected}.isdisjoint({r["source"]["index"] for r in kept})


def test_punctuation_table_misses_no_plane() -> None:
    """The punctuation table is built over planes 0-1 only (0.02 s instead of 1 s per process): no code
    point above holds punctuation, and text with every punctuation character normalizes as before."""
    import sys
    import unicodedata

    from tuneline.data import dedup

    assert not any(
        unicodedata.category(chr(c)).startswith("P")
        for c in range(dedup._PUNCTUATION_PLANES_END, sys.maxunicode + 1)
    )
    every = "".join(chr(c) for c in dedup._punctuation_table())
    text = f"Hello,{every}World! ＡＢＣ。 \U00020000x\U0010fffd"
    full = {c: " " for c in range(sys.maxunicode + 1) if unicodedata.category(chr(c)).startswith("P")}
    expected = " ".join(unicodedata.normalize("NFKC", text).casefold().translate(full).split())
    assert normalize_content(text) == expected
    assert normalize_content("Hello,  World!") == "hello world"  # the ASCII fast path


def test_exact_only_stages_do_not_import_the_near_dup_engine() -> None:
    """dedup, split and validate_splits imported scikit-learn, SciPy and numba (seconds per DVC stage
    process) even with near-dup off; the engine now loads on first use."""
    import subprocess
    import sys

    code = ("import sys, tuneline.data.dedup, tuneline.data.split, tuneline.data.validate_splits; "
            "print(sorted(m for m in ('sklearn', 'numba', 'great_expectations') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
