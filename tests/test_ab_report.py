"""The A/B report on a small hand-made feedback store: every number checked by hand, the page escapes
what users wrote, exchanges of earlier versions stay out of the comparison."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from helpers import T0, ab_settings, empty_registry, make_ab_model
from tuneline.ab.report import ab_report, render_markdown
from tuneline.ab.stats import AbDataError
from tuneline.feedback.store import FeedbackStore, StoreError
from tuneline.jsonio import read_json
from tuneline.layout import Layout

DAY = 86400.0
EVIL = "<script>alert('x')</script>"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> str:
    uri = empty_registry(tmp_path_factory.mktemp("ab-report-registry"))
    make_ab_model(uri, "demo", versions=3)  # champion 1, challenger 2; version 3 never served
    return uri


def exchange(rid: str, variant: str, version: str, at: float, latency: float, *, model: str = "demo",
             pinned: bool = False, prompt: str = "hello") -> dict[str, Any]:
    return {
        "request_id": rid, "created_at": at, "user_hash": f"user-{rid}", "variant": variant,
        "model_name": model,
        "model_version": version, "pinned": pinned, "latency_ms": latency, "prompt_tokens": 10,
        "completion_tokens": 20, "finish_reason": "stop",
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": prompt}],
        "answer": f"answer to {rid}",
    }


@pytest.fixture
def store(tmp_path: Path) -> FeedbackStore:
    s = FeedbackStore(f"sqlite:///{tmp_path / 'feedback.db'}")
    s.record_exchanges([
        # champion (version 1): two on day 1, three on day 2 (one pinned, one never rated)
        exchange("c1", "champion", "1", T0 + 10, 100),
        exchange("c2", "champion", "1", T0 + 20, 200),
        exchange("c3", "champion", "1", T0 + DAY + 10, 300, prompt=EVIL),
        exchange("c4", "champion", "1", T0 + DAY + 20, 400),
        exchange("c5", "champion", "1", T0 + DAY + 30, 500, pinned=True),
        # challenger (version 2)
        exchange("n1", "challenger", "2", T0 + 30, 50),
        exchange("n2", "challenger", "2", T0 + 40, 60),
        exchange("n3", "challenger", "2", T0 + DAY + 40, 70),
        exchange("n4", "challenger", "2", T0 + DAY + 50, 80),
        # an earlier challenger (version 0) and another model: not in this experiment
        exchange("old1", "challenger", "0", T0 - DAY, 10),
        exchange("old2", "challenger", "0", T0 - DAY + 5, 10),
        exchange("other", "champion", "1", T0, 10, model="other-model"),
    ])
    for rid, fb in [
        ("c1", {"thumb": 1}), ("c2", {"rating": 5}), ("c3", {"thumb": -1, "comment": "wrong & rude"}),
        ("c5", {"thumb": 1}),
        ("n1", {"rating": 3}), ("n2", {"correction": "the <b>right</b> answer"}), ("n3", {"rating": 4}),
        ("n4", {"thumb": 1}), ("n4", {"thumb": -1}),  # the latest feedback counts
        ("old1", {"thumb": 1}), ("old2", {"thumb": 1}), ("other", {"thumb": -1}),
    ]:
        s.record_feedback(rid, **fb)
    return s


def test_report_numbers(tmp_path: Path, registry: str, store: FeedbackStore) -> None:
    cfg = ab_settings(tmp_path, registry, "demo", ab={"min_rating": 4, "alpha": 0.05, "bucket": "day"})
    report = ab_report(cfg, Layout(tmp_path), store, now=T0 + 2 * DAY)
    assert read_json(tmp_path / "reports" / "ab.json") == report
    assert report["aliases"] == {"champion": "1", "challenger": "2"}
    assert report["exchanges"] == 11 and report["in_experiment"] == 9
    assert report["generated_at"] == "2023-11-17T00:00:00+00:00"

    champ, chal = report["arms"]["champion"], report["arms"]["challenger"]
    assert (champ["version"], champ["requests"], champ["pinned"], champ["pinned_rated"]) == ("1", 5, 1, 1)
    assert (champ["rated"], champ["positive"], champ["negative"], champ["corrections"]) == (3, 2, 1, 0)
    assert champ["rate"] == pytest.approx(2 / 3, abs=1e-6)
    # latencies 100..500: p50 300, p95 at position 3.8 = 400 + 0.8 * 100
    assert champ["latency_ms"] == {"p50": 300.0, "p95": 480.0}
    assert champ["tokens"] == {"prompt": 50, "completion": 100} and champ["finish_reasons"] == {"stop": 5}
    lo, hi = champ["ci"]
    assert lo < 2 / 3 < hi and 0 <= lo and hi <= 1

    # n1 rating 3 < 4: negative; n2 bare correction: negative; n3 rating 4: positive; n4 thumb down last
    assert (chal["version"], chal["requests"], chal["rated"], chal["positive"], chal["corrections"]) == (
        "2", 4, 4, 1, 1)
    assert chal["latency_ms"]["p50"] == 65.0

    # 2/3 (3 users) vs 1/4 (4 users), one rating per user. Pooled SE: sqrt(3/7 * 4/7 * (1/3 + 1/4)) =
    # sqrt(1/7) = 0.378. Cluster-robust SE (larger, so used): champion 3/2 * (2 * (1/3)^2 + (2/3)^2) / 3^2
    # = 1/9, challenger 4/3 * (3 * (1/4)^2 + (3/4)^2) / 4^2 = 1/16 -> sqrt(1/9 + 1/16) = 0.417.
    test = report["test"]
    z = (0.25 - 2 / 3) / math.sqrt(1 / 9 + 1 / 16)
    assert (test["users_champion"], test["users_challenger"]) == (3, 4)
    assert test["difference"] == pytest.approx(0.25 - 2 / 3, abs=1e-6)
    assert test["z"] == pytest.approx(z, abs=1e-6)
    assert test["p_value"] == pytest.approx(math.erfc(abs(z) / math.sqrt(2)))
    assert test["significant"] is False

    assert report["over_time"]["champion"] == [
        {"start": "2023-11-15T00:00:00+00:00", "t": int(T0), "rated": 2, "positive": 2, "rate": 1.0},
        {"start": "2023-11-16T00:00:00+00:00", "t": int(T0 + DAY), "rated": 1, "positive": 0, "rate": 0.0},
    ]
    assert [(b["rated"], b["positive"]) for b in report["over_time"]["challenger"]] == [(2, 0), (2, 1)]

    table = {(v["version"], v["variant"]): v for v in report["versions"]}
    assert set(table) == {("0", "challenger"), ("1", "champion"), ("2", "challenger")}
    assert table[("0", "challenger")]["current"] is False and table[("0", "challenger")]["positive"] == 2
    assert table[("1", "champion")]["current"] is True

    negatives = {n["request_id"]: n for n in report["negatives"]}
    assert set(negatives) == {"c3", "n1", "n2", "n4"}
    assert negatives["c3"]["prompt"] == EVIL and negatives["c3"]["comment"] == "wrong & rude"


def test_page_escapes_user_text_and_names_the_variants(
    tmp_path: Path, registry: str, store: FeedbackStore
) -> None:
    cfg = ab_settings(tmp_path, registry, "demo")
    ab_report(cfg, Layout(tmp_path), store, now=T0 + 2 * DAY)
    page = (tmp_path / "reports" / "ab.html").read_text(encoding="utf-8")
    assert "champion" in page and "challenger" in page and "<svg" in page
    assert EVIL not in page and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "<b>right</b>" not in page and "&lt;b&gt;right&lt;/b&gt;" in page
    assert "wrong &amp; rude" in page
    assert "not significant" in page


def test_markdown_summary(tmp_path: Path, registry: str, store: FeedbackStore) -> None:
    report = ab_report(ab_settings(tmp_path, registry, "demo"), Layout(tmp_path), store, now=T0)
    md = render_markdown(report)
    assert "| champion | 1 | 5 | 3 | 66.7% |" in md and "| challenger | 2 | 4 | 4 | 25.0% |" in md
    assert "not significant" in md


def test_no_challenger_and_empty_store(tmp_path: Path, registry: str) -> None:
    make_ab_model(registry, "fresh", versions=1, challenger=None)
    cfg = ab_settings(tmp_path, registry, "fresh")
    report = ab_report(cfg, Layout(tmp_path))  # opens (and creates) the store from serve.store_url
    assert report["arms"]["challenger"] is None and report["test"] is None
    assert report["arms"]["champion"]["rated"] == 0 and report["arms"]["champion"]["rate"] is None
    assert "No challenger" in (tmp_path / "reports" / "ab.html").read_text(encoding="utf-8")


def test_bad_inputs_fail_clearly(tmp_path: Path, registry: str, store: FeedbackStore) -> None:
    with pytest.raises(StoreError, match="serve.store_url"):
        ab_report(ab_settings(tmp_path, registry, "demo", serve={"store_url": "not a url"}), Layout(tmp_path))
    # A row written around the store's checks (a thumb of 5) is named, not silently counted.
    with store.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE feedback SET thumb = 5 WHERE request_id = 'c1'")
    with pytest.raises(AbDataError, match="'c1'"):
        ab_report(ab_settings(tmp_path, registry, "demo"), Layout(tmp_path), store)


def test_cli_report_and_decide(tmp_path: Path, registry: str, store: FeedbackStore,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from tuneline.ab.cli import ab_app

    monkeypatch.chdir(tmp_path)
    opts = ["--set", f"tracking.uri={registry}", "--set", "registry.model_name=demo",
            "--set", f"serve.store_url={store.url}"]
    runner = CliRunner()
    done = runner.invoke(ab_app, ["report", *opts])
    assert done.exit_code == 0, done.output
    assert "champion v1 2/3 positive" in done.output and (tmp_path / "reports" / "ab.html").exists()
    done = runner.invoke(ab_app, ["decide", *opts])
    assert done.exit_code == 0, done.output
    assert "ab decide: collect: not enough rated exchanges" in done.output
    assert read_json(tmp_path / "reports" / "ab_decision.json")["decision"]["needed"] == {
        "champion": 97, "challenger": 96}
    bad = runner.invoke(ab_app, ["report", *opts, "--set", "ab.alpha=2"])
    assert bad.exit_code == 2 and "ab.alpha" in bad.output
