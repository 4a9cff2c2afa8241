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
Corpora: instruction-like texts (200-600 characters) drawn with a fixed seed from a Zipf-weighted vocabulary
(English: synthetic words + common words + numbers; Chinese: 1-4 character words over 3,500 CJK characters,
no spaces). About 4 % of rows are planted edits of an earlier row: half with few edits (cosine well above the
threshold), half with more edits (cosine mostly just below it).
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


def _zipf(n: int, s: float = 1.05) -> np.ndarray:
    p = 1.0 / np.arange(1, n + 1) ** s
    return p / p.sum()


def _vocab_en(rng: np.random.Generator, size: int = 60_000) -> list[str]:
    # Letters drawn with English frequencies: real text has a long tail of rare character 3-grams (names,
    # numbers, typos, code) that syllable-built words lack; this comes closer to the alpaca sample's tail.
    letters = list("etaoinshrdlcumwfgypbvkjxqz")
    freq = np.array([12.7, 9.1, 8.2, 7.5, 7.0, 6.7, 6.3, 6.1, 6.0, 4.3, 4.0, 2.8, 2.8, 2.4, 2.4, 2.2, 2.0,
                     2.0, 1.9, 1.5, 1.0, 0.8, 0.2, 0.2, 0.1, 0.1])
    freq = freq / freq.sum()
    words = list(COMMON_EN)
    seen = set(words)
    while len(words) < size:
        w = "".join(rng.choice(letters, size=int(rng.integers(2, 11)), p=freq))
        if w not in seen:
            seen.add(w)
            words.append(w)
    return words


def _vocab_zh(rng: np.random.Generator, size: int = 30_000) -> list[str]:
    chars = [chr(c) for c in rng.choice(np.arange(0x4E00, 0x9FA6), size=3500, replace=False)]
    pc = _zipf(len(chars), 0.9)
    words, seen = [], set()
    while len(words) < size:
        k = int(rng.choice([1, 2, 2, 2, 3, 4]))
        w = "".join(chars[i] for i in rng.choice(len(chars), size=k, p=pc))
        if w not in seen:
            seen.add(w)
            words.append(w)
    return words


def make_corpus(n: int, lang: str, seed: int = 0) -> tuple[list[str], list[tuple[int, int, str]]]:
    """`n` texts plus planted pairs (source row, edited row, 'few' | 'more' edits)."""
    rng = np.random.default_rng(seed)
    vocab = _vocab_en(rng) if lang == "en" else _vocab_zh(rng)
    p = _zipf(len(vocab))
    # What rng.choice(len(vocab), size, p=p) does, without re-validating p on every call (same stream).
    cdf = p.cumsum()
    cdf /= cdf[-1]

    def draw(size: int | None = None) -> np.ndarray:
        return cdf.searchsorted(rng.random(size), side="right")

    sep, target_words = (" ", (35, 100)) if lang == "en" else ("", (110, 330))
    docs_tokens: list[list[str]] = []
    planted: list[tuple[int, int, str]] = []
    for i in range(n):
        if i > 10 and rng.random() < 0.04:
            src = int(rng.integers(0, i))
            toks = list(docs_tokens[src])
            kind = "few" if rng.random() < 0.5 else "more"
            more = (0.035, 0.08) if lang == "en" else (0.02, 0.045)  # aimed at straddling 0.95
            frac = rng.uniform(0.0, 0.012) if kind == "few" else rng.uniform(*more)
            k = max(1, round(frac * len(toks))) if kind == "more" else round(frac * len(toks))
            for pos in rng.choice(len(toks), size=min(k, len(toks)), replace=False):
                toks[pos] = vocab[int(draw())]
            planted.append((src, i, kind))
        else:
            m = int(rng.integers(*target_words))
            idx = draw(m)
            toks = [vocab[j] for j in idx]
            if lang == "en":
                for pos in rng.choice(m, size=m // 12, replace=False):
                    toks[pos] = str(int(rng.integers(0, 10_000))) if rng.random() < 0.5 else toks[pos] + ","
            else:
                for pos in rng.choice(m, size=m // 8, replace=False):
                    toks[pos] += "，" if rng.random() < 0.7 else "。"
        docs_tokens.append(toks)
    return [sep.join(t) for t in docs_tokens], planted


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


def worker(method: str, corpus: Path, threshold: float, out: Path) -> None:
    from tuneline.data.neardup import brute_force_matrix, search, search_matrix, tfidf_matrix

    # Read, not regenerated: the peak RSS is then the method's (plus interpreter, imports and the texts).
    texts = corpus.read_text(encoding="utf-8").split("\n")[:-1]
    n = len(texts)
    search(texts[:50], threshold)  # compile (or load the cached) numba kernels outside the timing
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    info: dict = {}
    if method == "search":
        x = tfidf_matrix(texts)
        info["tfidf_seconds"] = time.perf_counter() - t0
        res = search_matrix(x, threshold)
        pairs = res.pairs()
        info.update(res.stats)
    elif method == "brute":
        x = tfidf_matrix(texts)
        info["tfidf_seconds"] = time.perf_counter() - t0
        pairs = brute_force_matrix(x, threshold, block=250).pairs()
    else:
        pairs, info["candidates"] = _minhash_pairs(texts, threshold)
    seconds = time.perf_counter() - t0
    np.save(out, np.array(sorted(pairs), dtype=np.int64).reshape(-1, 2))
    print(json.dumps({
        "method": method, "n": n, "seconds": seconds, "pairs": len(pairs),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_before_mb": rss_before / 1024, "stats": info,
        "chars_mean": float(np.mean([len(t) for t in texts])),
    }))


def _run(method: str, n: int, lang: str, args: argparse.Namespace, tmp: Path) -> tuple[dict, set]:
    out = tmp / f"{method}-{lang}-{n}.npy"
    cmd = [sys.executable, __file__, "--worker", method, "--corpus", str(tmp / f"corpus-{lang}-{n}.txt"),
           "--threshold", str(args.threshold), "--pairs-out", str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1", TUNELINE_PROGRESS="0")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{method} {lang} {n} failed:\n{proc.stderr[-3000:]}")
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"  {method:8s} {lang} {n:>8,}: {row['seconds']:8.1f} s, {row['peak_rss_mb']:7.0f} MB, "
          f"{row['pairs']} pairs", file=sys.stderr)
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
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.corpus, args.threshold, args.pairs_out)
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
                texts, planted = make_corpus(n, lang, args.seed)
                corpus = Path(tmp, f"corpus-{lang}-{n}.txt")
                corpus.write_text("".join(t + "\n" for t in texts), encoding="utf-8")
                sides = _planted_sides(texts, planted, args) if n <= args.brute_max else ""
                del texts, planted
                ours, ours_pairs = _run("search", n, lang, args, Path(tmp))
                results = [(ours, ours_pairs)]
                truth = None
                if n <= args.brute_max:
                    brute, truth = _run("brute", n, lang, args, Path(tmp))
                    results.append((brute, truth))
                    notes.append(f"{lang} {n:,}: {sides}")
                if n <= args.minhash_max:
                    results.append(_run("minhash", n, lang, args, Path(tmp)))
                ref = truth if truth is not None else ours_pairs
                ref_name = "brute" if truth is not None else "search"
                s = ours["stats"]
                notes.append(f"{lang} {n:,}: search verified {s.get('verified', 0):,} of "
                             f"{s.get('candidates', 0):,} candidates; {s.get('features', 0):,} features; "
                             f"mean {ours['chars_mean']:.0f} chars/doc")
                for row, pairs in results:
                    hit = len(pairs & ref)
                    rec = f"{hit / len(ref):.4f}" if ref else "n/a"
                    prec = f"{hit / len(pairs):.4f}" if pairs else "n/a"
                    if row["method"] == ref_name:
                        rec = prec = "(ref)"
                    speed = f"{row['seconds'] / ours['seconds']:.1f}×" if row is not ours else "1×"
                    tfidf = f"{row['stats']['tfidf_seconds']:.1f}" if "tfidf_seconds" in row["stats"] else "–"
                    lines.append(
                        f"| {lang} | {n:,} | {row['method']} | {row['seconds']:.1f} | {tfidf} | "
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
