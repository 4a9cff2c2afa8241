"""One page shell for every HTML page (tuneline/html.py).

Covers: six pages each wrote their own doctype, head and stylesheet (three of them without a viewport,
two with a lower-case doctype and no language), and two reached into another feature's CSS constant; the
pages did not look like one product and a style fix had to be made six times. Now every page generator
goes through `tuneline.html.page` (same doctype, charset, viewport, escaped title, one base stylesheet),
no other library module writes a document shell, and every title and value from data is escaped.
"""

from __future__ import annotations

import ast
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

import tuneline
from tuneline.ab.page import report_html
from tuneline.config.loader import Config
from tuneline.data.contracts import render_html as contract_html
from tuneline.data.report import render_html as data_report_html
from tuneline.evaluate.review import review_html
from tuneline.html import (
    BASE_CSS,
    BASE_CSS_MARKER,
    DOCTYPE,
    MISSING,
    Markup,
    badge,
    esc,
    fmt,
    page,
    status,
    table,
)
from tuneline.jsonio import write_json
from tuneline.layout import Layout
from tuneline.run_report import run_report
from tuneline.train.curves import curves_html

HOSTILE = '<script>alert("x")</script> & co'
ESCAPED = "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; co"
VOID = {"meta", "br", "img", "input", "link", "hr"}


class Head(HTMLParser):
    """The document's title text (entities decoded), its tags in order, and a check that tags balance."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.tags: list[str] = []
        self.title = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        assert self.stack and self.stack[-1] == tag, (tag, self.stack[-3:])
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        if self.stack == ["html", "head", "title"]:  # not an SVG <title> (a chart's tooltip)
            self.title += data


def assert_shell(html: str, title: str) -> Head:
    """`html` is a complete page made by the shared shell, whose <title> reads `title`."""
    assert html.startswith(DOCTYPE + '\n<html lang="en">\n<head>\n<meta charset="utf-8">\n')
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in html
    assert html.count(BASE_CSS_MARKER) == 1 and BASE_CSS in html
    assert html.endswith("</body>\n</html>\n")
    head = Head()
    head.feed(html)
    head.close()
    assert head.stack == [] and head.title == title
    assert "script" not in head.tags and "link" not in head.tags  # self-contained, no script
    return head


def test_page_escapes_the_title_and_adds_the_page_css_after_the_base() -> None:
    html = page(HOSTILE, "<p>body</p>", css="p.mine{color:red}")
    assert_shell(html, HOSTILE)
    assert "<script>" not in html and html.count(ESCAPED) == 2  # <title> and <h1>
    assert html.index(BASE_CSS_MARKER) < html.index("p.mine{color:red}") < html.index("</style>")
    assert "<p>body</p>" in html  # the body is HTML already
    # A heading given as Markup is inserted as is; given as text, it is escaped.
    assert "<h1>run: <b>ok</b></h1>" in page("run", "", heading=Markup("run: <b>ok</b>"))
    assert "<h1>&lt;b&gt;</h1>" in page("run", "", heading="<b>")
    assert page("t", "x") == page("t", "x")


def test_builders_escape_values_and_format_numbers_one_way() -> None:
    assert esc(HOSTILE) == ESCAPED and esc("it's") == "it&#x27;s"
    assert fmt(None) == MISSING and fmt(True) == "yes" and fmt(False) == "no"
    assert fmt(0.000123456) == "0.0001235" and fmt(1.7) == "1.7" and fmt(3) == "3"  # small values survive
    assert fmt(0.5, ".3f") == "0.500" and fmt(-0.25, "+.3f") == "-0.250" and fmt(0.125, ".1%") == "12.5%"
    assert fmt(None, ".3f") == MISSING
    rows = [[HOSTILE, 0.5], [Markup("<b>kept</b>"), None]]
    html = table([HOSTILE, "n"], rows, cls="t", col_class={1: "num"})
    assert "<script>" not in html and f"<th>{ESCAPED}</th>" in html and f"<td>{ESCAPED}</td>" in html
    assert '<td class="num">0.5</td>' in html and f'<td class="num">{MISSING}</td>' in html
    assert "<td><b>kept</b></td>" in html and html.startswith('<table class="t"><thead>')
    assert status(HOSTILE, "bad") == f'<span class="bad">{ESCAPED}</span>'
    assert badge("EM ✓", "ok") == '<span class="badge ok">EM ✓</span>'
    assert badge("x") == '<span class="badge">x</span>'


# ---- every page generator, fed a hostile value where data reaches the page ----------------------------


def curves() -> tuple[str, str]:
    return curves_html([{"step": 1, "train_loss": 2.0, "lr": 1e-4}], HOSTILE), HOSTILE


def review() -> tuple[str, str]:
    sample = {"id": HOSTILE, "category": HOSTILE, "prompt": HOSTILE, "reference": HOSTILE,
              "outputs": {"base": HOSTILE, "champion": None, "candidate": HOSTILE},
              "scores": {"candidate": {"exact_match": 1.0, "rouge_l": 0.5}}}
    return review_html([sample], HOSTILE, {"base": {HOSTILE: 0.5}, "candidate": {HOSTILE: 0.75}}), HOSTILE


def data_report() -> tuple[str, str]:
    report = {
        "generated_at": HOSTILE, "complete": False, "stopped_after": HOSTILE,
        "funnel": [{"stage": HOSTILE, "rows_in": 3, "rows_kept": 2, "rows_rejected": 1, "rows_added": None,
                    "rejected_by_reason": {HOSTILE: 1}}],
        "ledger": {"raw_rows": 3, "final_rows": 2, "rejected": 1, "augmented": 0, "balanced": False},
        "splits": {"train": {"rows": 2, "augmented": 0, "categories": {HOSTILE: 2},
                             "length_hist": {"edges": [0, 50], "counts": [2, 0]}}},
        "near_dup_clusters": [{"size": 2, "survivor_id": HOSTILE, "sample": HOSTILE}],
        "validation": {"validate_raw": {"success": False, "failed": [
            {"name": HOSTILE, "description": HOSTILE, "critical": True}]}},
    }
    return data_report_html(report), "tuneline data report"


def contract() -> tuple[str, str]:
    report = {
        "stage": HOSTILE, "success": False, "rows": 1, "note": HOSTILE,
        "expectations": [{
            "name": HOSTILE, "expectation": "expect_column_values_to_match_regex", "column": HOSTILE,
            "description": HOSTILE, "critical": True, "success": False, "observed": [HOSTILE],
            "unexpected_count": 1, "unexpected_percent": 100.0, "unexpected_ids": [HOSTILE], "kwargs": {},
        }],
    }
    return contract_html(report), f"tuneline {HOSTILE}: FAILED"


def ab() -> tuple[str, str]:
    arm = {"version": HOSTILE, "requests": 3, "pinned": 0, "rated": 2, "pinned_rated": 0, "positive": 1,
           "rate": 0.5, "ci": None, "corrections": 0, "latency_ms": {"p50": 12.0, "p95": None},
           "tokens": {"prompt": 5, "completion": 7}, "finish_reasons": {HOSTILE: 3}}
    report = {
        "model_name": HOSTILE, "generated_at": HOSTILE, "in_experiment": 3, "exchanges": 3,
        "aliases": {"champion": HOSTILE, "challenger": None},
        "arms": {"champion": arm, "challenger": None}, "test": None,
        "params": {"bucket": "day", "alpha": 0.05},
        "over_time": {"champion": [{"t": 0, "start": HOSTILE, "rate": 0.5, "positive": 1, "rated": 2}],
                      "challenger": []},
        "versions": [{"version": HOSTILE, "variant": "champion", "requests": 3, "rated": 2, "positive": 1,
                      "rate": 0.5, "current": True, "first_at": HOSTILE, "last_at": HOSTILE}],
        "negatives": [{"at": HOSTILE, "variant": "champion", "version": HOSTILE, "prompt": HOSTILE,
                       "answer": HOSTILE, "thumb": -1, "rating": None, "correction": None,
                       "comment": HOSTILE}],
    }
    return report_html(report), f"A/B: {HOSTILE}"


def run(tmp_path: Path) -> tuple[str, str]:
    layout = Layout(tmp_path)
    write_json(layout.report("evaluate"), {"variants": {"base": {HOSTILE: 0.5}, "candidate": {HOSTILE: 1.0}}})
    cfg = Config.model_validate({"tracking": {"uri": f"sqlite:///{tmp_path}/mlflow.db"}})
    return run_report(layout, cfg).read_text(encoding="utf-8"), "tuneline run report"


PAGES = {"curves": curves, "review": review, "data_report": data_report, "contract": contract, "ab": ab}


@pytest.mark.parametrize("name", [*PAGES, "run"])
def test_every_page_is_built_by_the_shell_and_escapes_its_data(name: str, tmp_path: Path) -> None:
    html, title = run(tmp_path) if name == "run" else PAGES[name]()
    assert_shell(html, title)
    assert "<script>" not in html and "</script>" not in html
    if name != "run":  # the run report's title is fixed; its hostile value is a metric name
        assert ESCAPED in html
    else:
        assert f"<td>{ESCAPED}</td>" in html


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the docstring nodes of a module, its classes and functions (prose, not markup)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                out.add(id(body[0].value))
    return out


def test_no_other_library_module_writes_a_page_shell() -> None:
    """A new page must use `tuneline.html.page`: no string in the library but html.py opens a document."""
    shell = re.compile(r"<!doctype html|<html[\s>]|</head>|<meta charset|<style[\s>]", re.I)
    root = Path(tuneline.__file__).parent
    offenders = []
    for path in sorted(root.rglob("*.py")):
        if path == root / "html.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        skip = _docstrings(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
                if shell.search(node.value):
                    offenders.append(f"{path.relative_to(root)}:{node.lineno}")
    assert not offenders, offenders

