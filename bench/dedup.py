"""Benchmark of the near-duplicate search against brute force and MinHash-LSH, on synthetic corpora.

    python bench/dedup.py --sizes 10000 100000 --langs en zh --out bench/RESULTS.md

Each (language, size, method) runs in its own subprocess, which reads the corpus from a file, so that its peak
RSS (ru_maxrss: interpreter, imports, the texts and the method) is its own.
Timings include TF-IDF vectorization (MinHash: shingling + signatures) and exclude corpus generation.
Methods:
  search   tuneline.data.neardup.search (exact prefix filtering) — the thing measured.
  brute    the definition: blocked X @ X.T in float64 over the same TF-IDF rows (sizes <= --brute-max).
  minhash  datasketch MinHashLSH on character 3-gram sets, candidates verified by the exact TF-IDF cosine
           (so its precision is 1 by construction; the question is its recall and time).
Corpora (generator v2, cached under bench/.cache/; about 20 s for 1M English documents): token ids drawn with
a fixed seed and joined. English: 35-99 words per document, Zipf (s=1.05) over 100,000 syllable-built words
(common English words first), 1/24 of tokens numbers, 1/24 followed by a comma, and TAIL_RATE (0.4 %) fresh
random tokens over letters, digits, accented/Greek/Cyrillic letters and symbols — the open tail that makes the
character 3-gram vocabulary keep growing like real text (rate calibrated on the alpaca and C4 samples).
Chinese: 110-329 words of 1-4 characters over 3,500 CJK characters, no spaces, 1/8 followed by punctuation.
About 4 % of rows are edited copies of an earlier row: half with few word replacements (cosine well above
the threshold), half with more (cosine around it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

COMMON_EN = (
    "the of and to a in is you that it for are on with as be this can your have or by not but what all were "
    "when we there use an which how their if will each about up out many then them these so some her would "
    "make like him into time has look two more write go see number no way could people my than first water "
    "been call who now find long down day did get come made may part explain list describe summarize give "
    "example sentence translate following answer question text word story poem email code function data"
).split()


ONSETS = ("b c d f g h j k l m n p r s t v w y z bl br ch cl cr dr fl fr gl gr pl pr sc sh sk sl sm sn sp "
          "st sw th tr tw wh str spr").split()
NUCLEI = "a e i o u y ai au ea ee ei ie oa oo ou".split()
CODAS = [""] * 6 + "b ck d ft g k l ld lt m n nd ng nk nt p r rd rk rm rn rt s sh sk ss st t th x".split()
# The open tail: names, identifiers, codes, loanwords. Real text keeps adding character 3-grams that no
# letter-only vocabulary has (digits inside words, accents, symbols, other scripts).
TAIL_ALPHABET = np.array([ord(c) for c in (
    "abcdefghijklmnopqrstuvwxyz0123456789àáâäãåçèéêëìíîïñòóôöõøùúûüýÿßæœłşğčřžšαβγδεζηθλμπσφωжзлпфцш-_/.'@#+"
)], dtype=np.uint32)


def _zipf(n: int, s: float = 1.05) -> np.ndarray:
    p = 1.0 / np.arange(1, n + 1) ** s
    return p / p.sum()


def _syllable_words(rng: np.random.Generator, size: int) -> list[str]:
    """`size` distinct pronounceable words of 1-4 syllables (onset? nucleus coda?), shortest ones first."""
    words, seen = list(COMMON_EN), set(COMMON_EN)
    while len(words) < size:
        k = 4 * (size - len(words))
        n_syl = rng.choice([1, 2, 2, 3, 3, 4], size=k)
        parts = [rng.integers(0, len(v), size=(k, 4)) for v in (ONSETS, NUCLEI, CODAS)]
        no_onset = rng.random((k, 4)) < 0.25
        for w in range(k):
            s = "".join(("" if no_onset[w, y] else ONSETS[parts[0][w, y]]) + NUCLEI[parts[1][w, y]]
                        + CODAS[parts[2][w, y]] for y in range(n_syl[w]))
            if s not in seen:
                seen.add(s)
                words.append(s)
                if len(words) == size:
                    break
    head, rest = words[: len(COMMON_EN)], sorted(words[len(COMMON_EN) :], key=len)  # short words frequent
    return head + rest


def _tail_tokens(rng: np.random.Generator, count: int) -> list[str]:
    """`count` random tokens of 4-10 symbols over TAIL_ALPHABET (fresh draws: an open vocabulary)."""
    if count == 0:
        return []
    codes = TAIL_ALPHABET[rng.integers(0, len(TAIL_ALPHABET), size=(count, 10))]
    lengths = rng.integers(4, 11, size=count)
    codes[np.arange(10)[None, :] >= lengths[:, None]] = 0
    return np.ascontiguousarray(codes).view("<U10").ravel().tolist()  # trailing NULs are dropped


def _lexicon(rng: np.random.Generator, lang: str) -> tuple[list[str], int]:
    """(token strings, size of the Zipf-drawn word vocabulary at their start)."""
    if lang == "en":
        words = _syllable_words(rng, 100_000)
        # + the same words followed by a comma, and numbers: decorations, addressed by id like words.
        return words + [w + "," for w in words] + [str(k) for k in range(10_000)], len(words)
    chars = [chr(c) for c in rng.choice(np.arange(0x4E00, 0x9FA6), size=3500, replace=False)]
    cdf = _zipf(len(chars), 0.9).cumsum()
    words, seen = [], set()
    while len(words) < 30_000:
        k = int(rng.choice([1, 2, 2, 2, 3, 4]))
        w = "".join(chars[i] for i in cdf.searchsorted(rng.random(k) * cdf[-1], side="right"))
        if w not in seen:
            seen.add(w)
            words.append(w)
    return words + [w + "，" for w in words] + [w + "。" for w in words], len(words)


GEN_VERSION = 2  # bump when the corpus generator changes: the cache key includes it
CACHE = ROOT / "bench" / ".cache"
TAIL_RATE = 0.004  # share of English tokens from the open tail: calibrated on real text, see RESULTS.md


def make_corpus_ids(n: int, lang: str, seed: int = 0) -> tuple[list[str], np.ndarray, np.ndarray, list]:
    """Token ids of `n` documents: (lexicon, flat ids, per-document offsets, planted pairs).

    Planted pairs are (source row, edited row, 'few' | 'more' edits); about 4 % of rows are edited copies.
    """
    rng = np.random.default_rng(seed)
    lex, n_words = _lexicon(rng, lang)
    cdf = _zipf(n_words).cumsum()
    cdf /= cdf[-1]

    def draw(size: int) -> np.ndarray:
        return cdf.searchsorted(rng.random(size), side="right").astype(np.int32)

    lo_hi = (35, 100) if lang == "en" else (110, 330)
    lengths = rng.integers(*lo_hi, size=n)
    planted_rows = np.flatnonzero((np.arange(n) > 10) & (rng.random(n) < 0.04))
    sources = (rng.random(len(planted_rows)) * planted_rows).astype(np.int64)  # uniform over earlier rows
    for i, s in zip(planted_rows.tolist(), sources.tolist(), strict=True):  # increasing i: s is final
        lengths[i] = lengths[s]
    offsets = np.concatenate(([0], np.cumsum(lengths))).astype(np.int64)
    ids = draw(int(offsets[-1]))
    u = rng.random(len(ids))
    if lang == "en":  # 1/24 numbers, 1/24 "word,", TAIL_RATE fresh tail tokens
        num = u < 1 / 24
        ids[num] = 2 * n_words + rng.integers(0, 10_000, size=int(num.sum()))
        comma = (u >= 1 / 24) & (u < 1 / 12)
        ids[comma] += n_words
        tail = (u >= 1 / 12) & (u < 1 / 12 + TAIL_RATE)
        n_tail = int(tail.sum())
        ids[tail] = len(lex) + np.arange(n_tail, dtype=np.int32)
        lex = lex + _tail_tokens(rng, n_tail)
    else:  # punctuation after 1/8 of the words
        ids[u < 0.7 / 8] += n_words
        ids[(u >= 0.7 / 8) & (u < 1 / 8)] += 2 * n_words
    more = (0.035, 0.08) if lang == "en" else (0.02, 0.045)  # aimed at straddling the 0.95 threshold
    kinds = np.where(rng.random(len(planted_rows)) < 0.5, "few", "more")
    planted = []
    for i, s, kind in zip(planted_rows.tolist(), sources.tolist(), kinds.tolist(), strict=True):
        a, b = offsets[i], offsets[i + 1]
        m = b - a
        ids[a:b] = ids[offsets[s] : offsets[s] + m]
        frac = rng.uniform(0.0, 0.012) if kind == "few" else rng.uniform(*more)
        k = max(1, round(frac * m)) if kind == "more" else round(frac * m)
        ids[a + rng.choice(m, size=min(k, m), replace=False)] = draw(min(k, m))
        planted.append((s, i, kind))
    return lex, ids, offsets, planted


def make_corpus(n: int, lang: str, seed: int = 0) -> tuple[list[str], list[tuple[int, int, str]]]:
    """`n` texts plus planted pairs (source row, edited row, 'few' | 'more' edits)."""
    lex, ids, offsets, planted = make_corpus_ids(n, lang, seed)
    return list(_texts(lex, ids, offsets, lang)), planted


def _texts(lex: list[str], ids: np.ndarray, offsets: np.ndarray, lang: str, step: int = 50_000):
    sep = " " if lang == "en" else ""
    arr = np.array(lex, dtype=object)
    for lo in range(0, len(offsets) - 1, step):
        hi = min(lo + step, len(offsets) - 1)
        toks = arr[ids[offsets[lo] : offsets[hi]]].tolist()
        base = offsets[lo]
        for a, b in zip(offsets[lo:hi].tolist(), offsets[lo + 1 : hi + 1].tolist(), strict=True):
            yield sep.join(toks[a - base : b - base])


def corpus_file(n: int, lang: str, seed: int = 0) -> tuple[Path, list[tuple[int, int, str]]]:
    """The corpus as a text file (one document a line) under bench/.cache/, generated on first use."""
    path = CACHE / f"corpus-v{GEN_VERSION}-{lang}-{n}-{seed}.txt"
    meta = path.with_suffix(".planted.json")
    if not (path.exists() and meta.exists()):
        CACHE.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        lex, ids, offsets, planted = make_corpus_ids(n, lang, seed)
        tmp = path.with_suffix(".tmp")
        with tmp.open("w", encoding="utf-8") as fh:
            for text in _texts(lex, ids, offsets, lang):
                fh.write(text + "\n")
        tmp.replace(path)
        meta.write_text(json.dumps(planted), encoding="utf-8")
        print(f"  generated {path.name} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return path, [tuple(p) for p in json.loads(meta.read_text(encoding="utf-8"))]


def _minhash_pairs(texts: list[str], threshold: float, num_perm: int = 128, jaccard: float = 0.7):
    from datasketch import MinHash, MinHashLSH

    from tuneline.data.neardup import exact_dots, tfidf_matrix

    shingles = [{t[k : k + 3].lower().encode("utf-8") for k in range(max(1, len(t) - 2))} for t in texts]
    sigs = MinHash.bulk(shingles, num_perm=num_perm)
    lsh = MinHashLSH(threshold=jaccard, num_perm=num_perm)
    cand: set[tuple[int, int]] = set()
    for i, mh in enumerate(sigs):
        for j in lsh.query(mh):
            cand.add((j, i))
        lsh.insert(i, mh)
    x = tfidf_matrix(texts)
    if not cand:
        return set(), 0
    arr = np.array(sorted(cand), dtype=np.int64)
    sims = exact_dots(x, arr[:, 0], arr[:, 1])
    keep = arr[sims >= threshold]
    return {(int(a), int(b)) for a, b in keep}, len(cand)


def worker(method: str, corpus: Path, threshold: float, out: Path, sample: int = 0, threads: int = 1) -> None:
    from tuneline.data.neardup import brute_force_matrix, search, search_matrix, tfidf_matrix

    # Read, not regenerated: the peak RSS is then the method's (plus interpreter, imports and the texts).
    with corpus.open(encoding="utf-8") as fh:
        texts = [line[:-1] for line in fh]
    n = len(texts)
    chars_mean = float(np.mean([len(t) for t in texts]))
    search(texts[:50], threshold)  # compile (or load the cached) numba kernels outside the timing
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    info: dict = {}
    if method == "search":
        # The texts are handed over, as the dedup stage does: each is freed once vectorized.
        x = tfidf_matrix(texts, release_texts=True)
        info["tfidf_seconds"] = time.perf_counter() - t0
        res = search_matrix(x, threshold, threads=threads)
        info["threads"] = threads
        pairs = res.pairs()
        info.update(res.stats)
    elif method == "brute":
        x = tfidf_matrix(texts, release_texts=True)
        info["tfidf_seconds"] = time.perf_counter() - t0
        pairs = brute_force_matrix(x, threshold, block=250).pairs()
    else:
        pairs, info["candidates"] = _minhash_pairs(texts, threshold)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if method == "search" and sample:
        info["sample"] = _sample_check(x, pairs, threshold, sample)  # after the timing and the peak
    np.save(out, np.array(sorted(pairs), dtype=np.int64).reshape(-1, 2))
    print(json.dumps({
        "method": method, "n": n, "seconds": seconds, "pairs": len(pairs), "peak_rss_mb": peak,
        "rss_before_mb": rss_before / 1024, "stats": info,
        "chars_mean": chars_mean,
    }))


def _sample_check(x, pairs: set[tuple[int, int]], threshold: float, k: int, seed: int = 1) -> dict:
    """Brute force for `k` random rows against all rows; recall/precision of the search on their pairs.

    Each block is X[rows] @ X[sample].T in float64: every cosine summed in ascending feature order, bit
    for bit what `brute_force_matrix` computes for those pairs.
    """
    from tuneline.data.neardup import _cut

    t0 = time.perf_counter()
    n = x.shape[0]
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(n, size=min(k, n), replace=False))
    b = x[sample].astype(np.float64).T.tocsr()
    cut = _cut(threshold)
    truth: set[tuple[int, int]] = set()
    for lo in range(0, n, 20_000):
        prod = (x[lo : lo + 20_000].astype(np.float64) @ b).tocoo()
        keep = prod.data >= cut
        rows = prod.row[keep].astype(np.int64) + lo
        other = sample[prod.col[keep]]
        pairs_in = zip(rows.tolist(), other.tolist(), strict=True)
        truth |= {(min(r, s), max(r, s)) for r, s in pairs_in if r != s}
    in_sample = set(sample.tolist())
    found = {p for p in pairs if p[0] in in_sample or p[1] in in_sample}
    hit = len(found & truth)
    return {"rows": len(sample), "brute_pairs": len(truth), "search_pairs": len(found), "common": hit,
            "seconds": time.perf_counter() - t0}


def _run(method: str, n: int, lang: str, args: argparse.Namespace, corpus: Path, tmp: Path, threads: int = 1):
    out = tmp / f"{method}-{lang}-{n}-{threads}.npy"
    cmd = [sys.executable, __file__, "--worker", method, "--corpus", str(corpus),
           "--threshold", str(args.threshold), "--pairs-out", str(out), "--threads", str(threads)]
    if method == "search" and n > args.brute_max:
        cmd += ["--sample", str(args.sample)]
    env = dict(os.environ, OMP_NUM_THREADS="1", TUNELINE_PROGRESS="0")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{method} {lang} {n} failed:\n{proc.stderr[-3000:]}")
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"  {method:8s} {lang} {n:>8,}: {row['seconds']:8.1f} s, {row['peak_rss_mb']:7.0f} MB, "
          f"{row['pairs']} pairs; {json.dumps(row['stats'])}", file=sys.stderr)
    return row, {tuple(p) for p in np.load(out).tolist()}


def _planted_sides(texts: list[str], planted: list[tuple[int, int, str]], args: argparse.Namespace) -> str:
    """How the planted pairs fall around the threshold (exact cosines)."""
    from tuneline.data.neardup import exact_dots, tfidf_matrix

    arr = np.array([(a, b) for a, b, _ in planted], dtype=np.int64)
    sims = exact_dots(tfidf_matrix(texts), arr[:, 0], arr[:, 1])
    t = args.threshold
    above = int((sims >= t).sum())
    just_above = int(((sims >= t) & (sims < t + 0.02)).sum())
    just_below = int(((sims < t) & (sims >= t - 0.02)).sum())
    return f"{len(planted)} planted: {above} >= t ({just_above} within +0.02), {just_below} in [t-0.02, t)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000])
    ap.add_argument("--langs", nargs="+", default=["en", "zh"], choices=["en", "zh"])
    ap.add_argument("--threshold", type=float, default=0.95)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--brute-max", type=int, default=100_000, help="largest size compared with brute force")
    ap.add_argument("--minhash-max", type=int, default=100_000, help="largest size run with MinHash-LSH")
    ap.add_argument("--out", type=Path, help="write the markdown as the '## dedup' section of this file")
    ap.add_argument("--worker", choices=["search", "brute", "minhash"], help=argparse.SUPPRESS)
    ap.add_argument("--pairs-out", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--corpus", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, nargs="+", default=[1],
                    help="search once per thread count (the first is the reference of the others)")
    ap.add_argument("--sample", type=int, default=2000,
                    help="above --brute-max: rows checked against brute force (their pairs with all rows)")
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.corpus, args.threshold, args.pairs_out, args.sample, args.threads[0])
        return
    lines = [
        "| lang | docs | method | seconds | of which TF-IDF | docs/s | peak RSS MB | pairs | recall "
        "| precision | speed-up |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    notes = []
    with tempfile.TemporaryDirectory() as tmp:
        for lang in args.langs:
            for n in args.sizes:
                corpus, planted = corpus_file(n, lang, args.seed)
                sides = ""
                if n <= args.brute_max:
                    sides = _planted_sides(corpus.read_text(encoding="utf-8").split("\n")[:-1], planted, args)
                ours, ours_pairs = _run("search", n, lang, args, corpus, Path(tmp), args.threads[0])
                results = [(ours, ours_pairs)]
                for threads in args.threads[1:]:
                    row, pairs = _run("search", n, lang, args, corpus, Path(tmp), threads)
                    notes.append(f"{lang} {n:,}: search on {threads} threads: "
                                 f"{'the same' if pairs == ours_pairs else 'DIFFERENT'} pairs as on "
                                 f"{args.threads[0]}, {ours['seconds'] / row['seconds']:.2f}x faster")
                    results.append((row, pairs))
                truth = None
                if n <= args.brute_max:
                    brute, truth = _run("brute", n, lang, args, corpus, Path(tmp))
                    results.append((brute, truth))
                    notes.append(f"{lang} {n:,}: {sides}")
                if n <= args.minhash_max:
                    results.append(_run("minhash", n, lang, args, corpus, Path(tmp)))
                ref = truth if truth is not None else ours_pairs
                s = ours["stats"]
                if "sample" in s:
                    c = s["sample"]
                    notes.append(
                        f"{lang} {n:,}: exactness on {c['rows']:,} random rows vs all {n:,} (brute force, "
                        f"{c['seconds']:.0f} s): {c['brute_pairs']} true pairs, search found "
                        f"{c['search_pairs']}, "
                        f"{c['common']} in common")
                notes.append(f"{lang} {n:,}: search verified {s.get('verified', 0):,} of "
                             f"{s.get('candidates', 0):,} candidates; {s.get('features', 0):,} features; "
                             f"mean {ours['chars_mean']:.0f} chars/doc")
                for row, pairs in results:
                    hit = len(pairs & ref)
                    rec = f"{hit / len(ref):.4f}" if ref else "n/a"
                    prec = f"{hit / len(pairs):.4f}" if pairs else "n/a"
                    if (row is ours and truth is None) or (truth is not None and row["method"] == "brute"):
                        rec = prec = "(ref)"
                    speed = f"{row['seconds'] / ours['seconds']:.2f}×" if row is not ours else "1×"
                    method = row["method"]
                    if method == "search":
                        method += f" ({row['stats']['threads']}t)"
                    tfidf = f"{row['stats']['tfidf_seconds']:.1f}" if "tfidf_seconds" in row["stats"] else "–"
                    lines.append(
                        f"| {lang} | {n:,} | {method} | {row['seconds']:.1f} | {tfidf} | "
                        f"{n / row['seconds']:,.0f} | {row['peak_rss_mb']:,.0f} | {row['pairs']:,} | "
                        f"{rec} | {prec} | {speed} |"
                    )
    md = _markdown(args, lines, notes)
    print(md)
    if args.out:
        _write_section(args.out, md)


def _markdown(args: argparse.Namespace, lines: list[str], notes: list[str]) -> str:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    cmd = "python bench/dedup.py " + " ".join(sys.argv[1:])
    return "\n".join([
        "## dedup",
        "",
        f"Near-duplicate search (TF-IDF char_wb 3-grams, cosine >= {args.threshold}), "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs "
        f"(`nproc` {len(os.sched_getaffinity(0))}), {cpu}, Python {platform.python_version()}.",
        "",
        f"Command: `OMP_NUM_THREADS=1 {cmd}`",
        "",
        "seconds: vectorizing + searching (corpus generation excluded); TF-IDF column: the vectorizing part. "
        "speed-up = method seconds / search seconds (so brute 30× means search is 30 times faster). "
        "recall/precision are against brute force where it ran, else against search.",
        "",
        *lines,
        "",
        *[f"- {n}" for n in notes],
        "",
    ])


def _write_section(path: Path, md: str) -> None:
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n\n"
    start = text.find("## dedup")
    if start >= 0:
        end = text.find("\n## ", start + 1)
        text = text[:start] + md + (text[end + 1 :] if end >= 0 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + md
    path.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
