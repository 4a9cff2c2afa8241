"""Loss / LR curves page: self-contained, both charts, NaN marked not plotted, escaped, deterministic."""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from tuneline.train.curves import curves_html, format_tick, nice_ticks, split_series, write_curves

SVG = "{http://www.w3.org/2000/svg}"
VOID = {"meta", "br", "img", "input", "link", "hr"}


def history(steps: int = 20) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for s in range(1, steps + 1):
        lr = 2e-4 * min(1.0, s / 3) * (0.5 * (1 + math.cos(math.pi * s / steps)))
        rows.append({"step": s, "train_loss": 4.0 - 0.1 * s, "lr": lr, "grad_norm": 1.0})
        if s % 5 == 0:
            rows.append({"step": s, "val_loss": 3.9 - 0.05 * s, "val_perplexity": math.exp(3.9 - 0.05 * s)})
    return rows


class TagBalance(HTMLParser):
    """Fails on a close tag that does not match the open one; records every tag and attribute."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_endtag(self, tag: str) -> None:
        assert self.stack and self.stack[-1] == tag, (tag, self.stack[-3:])
        self.stack.pop()


def parse(page: str) -> tuple[TagBalance, list[ET.Element]]:
    checker = TagBalance()
    checker.feed(page)
    checker.close()
    assert checker.stack == []
    svgs = [ET.fromstring(m) for m in re.findall(r"<svg.*?</svg>", page, re.S)]  # each chart is valid XML
    return checker, svgs


def polyline(svg: ET.Element, cls: str) -> list[tuple[float, float]]:
    (line,) = [p for p in svg.iter(f"{SVG}polyline") if p.get("class") == cls]
    return [tuple(map(float, xy.split(","))) for xy in line.get("points", "").split()]  # type: ignore[misc]


def test_page_is_self_contained_with_both_charts() -> None:
    page = curves_html(history(), "run 1")
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    checker, svgs = parse(page)
    assert len(svgs) == 2
    tags = {t for t, _ in checker.tags}
    assert "script" not in tags and "img" not in tags and "link" not in tags
    assert not [a for _, attrs in checker.tags for a in attrs if a in ("src", "href") or a.startswith("on")]
    assert (
        re.findall(r"https?://[^\"]+", page) == ["http://www.w3.org/2000/svg"] * 2
    )  # the SVG namespace only
    loss, lr = svgs
    assert loss.get("aria-label") == "Loss" and lr.get("aria-label") == "Learning rate"
    train = polyline(loss, "train_loss")
    assert len(train) == 20
    # Steps grow to the right; a falling loss rises in SVG coordinates (y grows downwards).
    assert all(a[0] < b[0] for a, b in zip(train, train[1:], strict=False))
    assert all(a[1] < b[1] for a, b in zip(train, train[1:], strict=False))
    assert len(polyline(loss, "val_loss")) == 4 and len(list(loss.iter(f"{SVG}circle"))) == 4  # evals marked
    lr_points = polyline(lr, "lr")
    assert len(lr_points) == 20 and lr_points[0][0] == train[0][0] and lr_points[-1][0] == train[-1][0]
    texts = [t.text for t in lr.iter(f"{SVG}text")]
    assert "2.0e-4" in texts and "1.0e-4" in texts and "0" in texts  # LR ticks readable


def test_nonfinite_values_are_marked_not_plotted() -> None:
    rows = history(10)
    train = {r["step"]: r for r in rows if "train_loss" in r}
    train[4]["train_loss"] = float("nan")
    train[6]["train_loss"] = "inf"  # a JSON-safe history writes non-finite numbers as strings
    rows.append({"step": 11, "val_loss": float("-inf")})
    page = curves_html(rows, "nan run")
    _, (loss, _) = parse(page)
    assert len(polyline(loss, "train_loss")) == 8
    marks = [p for p in loss.iter(f"{SVG}path") if p.get("class") == "nonfinite"]
    assert len(marks) == 3
    assert "nan" not in " ".join(p.get("points", "") for p in loss.iter(f"{SVG}polyline")).lower()
    assert "2 not finite, not plotted (steps 4, 6)" in page and "1 not finite, not plotted (steps 11)" in page


def test_empty_and_single_point_histories() -> None:
    page = curves_html([], "nothing yet")
    _, svgs = parse(page)
    assert page.count(">no data</text>") == 2 and not list(svgs[0].iter(f"{SVG}polyline"))
    one = curves_html([{"step": 3, "train_loss": 2.5, "lr": 1e-4}], "one step")
    _, (loss, lr) = parse(one)
    assert not list(loss.iter(f"{SVG}polyline"))  # a one-point line is invisible: a dot instead
    (dot,) = loss.iter(f"{SVG}circle")
    assert 78 < float(dot.get("cx", "0")) < 760 - 24 and "step 3: 2.5" in (dot.findtext(f"{SVG}title") or "")
    assert len(list(lr.iter(f"{SVG}circle"))) == 1
    only_val = curves_html([{"step": 10, "val_loss": 4.0}, {"step": "x", "val_loss": 1.0}, {"lr": 1.0}], "v")
    _, (loss, lr) = parse(only_val)
    assert len(list(loss.iter(f"{SVG}circle"))) == 1  # rows without a numeric step are skipped
    assert "no data" in [t.text for t in lr.iter(f"{SVG}text")]


def test_title_is_escaped() -> None:
    page = curves_html(history(3), '<script>alert("x")</script> & co')
    assert "<script>" not in page
    assert page.count("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; co") == 2  # <title> and <h1>
    parse(page)


def test_output_is_deterministic_and_written_atomically(tmp_path: Path) -> None:
    rows = history()
    assert curves_html(rows, "t") == curves_html([dict(r) for r in rows], "t")
    first = write_curves(rows, tmp_path / "reports" / "train_curves.html", "t")
    data = first.read_bytes()
    write_curves(rows, first, "t")
    assert first.read_bytes() == data and data.decode("utf-8") == curves_html(rows, "t")
    assert [p.name for p in first.parent.iterdir()] == ["train_curves.html"]  # no temp file left
    assert curves_html(rows, "t") != curves_html(rows[:-1], "t")


def test_ticks_are_round_and_cover_the_range() -> None:
    assert nice_ticks(0, 1) == [0, 0.2, 0.4, 0.6000000000000001, 0.8, 1.0]
    ticks = nice_ticks(1.12, 4.93)
    assert (
        ticks[0] <= 1.12
        and ticks[-1] >= 4.93
        and [format_tick(t, ticks) for t in ticks] == ["1", "2", "3", "4", "5"]
    )
    ticks = nice_ticks(2.45, 2.55)
    assert [format_tick(t, ticks) for t in ticks] == ["2.44", "2.46", "2.48", "2.50", "2.52", "2.54", "2.56"]
    ticks = nice_ticks(0, 2.1e-4)
    assert [format_tick(t, ticks) for t in ticks] == ["0", "5.0e-5", "1.0e-4", "1.5e-4", "2.0e-4", "2.5e-4"]
    ticks = nice_ticks(0.1, 0.35)
    assert [format_tick(t, ticks) for t in ticks] == ["0.10", "0.15", "0.20", "0.25", "0.30", "0.35"]
    assert nice_ticks(1, 18, integer=True) == [0, 5, 10, 15, 20] and nice_ticks(2, 4, integer=True) == [
        2,
        3,
        4,
    ]


def test_split_series_sorts_by_step_and_skips_rows_without_the_key() -> None:
    rows = [{"step": 2, "lr": 1.0}, {"step": 1, "lr": 2.0}, {"step": 3}, {"step": 4, "lr": None}, {"lr": 5.0}]
    assert split_series(rows, "lr") == ([(1.0, 2.0), (2.0, 1.0)], [4.0])
