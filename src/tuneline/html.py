"""The one page shell and base stylesheet of every HTML page tuneline writes, and the builders they share.

Every page (the data report, the contract pages of `validate_raw` / `validate_splits`, the training
curves, review.html, run.html, ab.html) is made by `page`: the same doctype, charset, viewport, escaped
title and heading, and one stylesheet, `BASE_CSS` (typography, tables, status colours, badges, the
inline-SVG chart styles), followed by the page's own additions. So the pages look like one product and a
style fix is made once. Pages stay self-contained: inline CSS, no script, no external asset, no
timestamp added here, so the same arguments give the same bytes and DVC caches a page like any output.

The small builders several pages repeat live here too: `esc` (escape any value), `fmt` (a value as
text: numbers, None, booleans), `table` (a table whose cells are escaped unless marked `Markup`),
`status` and `badge` (a coloured word). This module is a floor: it imports nothing from tuneline.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

DOCTYPE = "<!DOCTYPE html>"
# The first line of the stylesheet: a page built by `page` carries it exactly once (tests look for it).
BASE_CSS_MARKER = "/* tuneline base stylesheet */"
MISSING = "–"  # how every page shows a value that is absent (None)

Kind = Literal["ok", "bad", "warn", "muted", ""]

BASE_CSS = BASE_CSS_MARKER + """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:1.5rem auto;max-width:1200px;
padding:0 1rem;color:#1d232a;background:#fff}
h1{font-size:1.5rem}h3{font-size:1rem}
h2{font-size:1.15rem;margin-top:1.8rem;border-bottom:1px solid #d8dee4;padding-bottom:.25rem}
table{border-collapse:collapse;margin:.5rem 0 1rem}
th,td{border:1px solid #d0d7de;padding:.25rem .55rem;font-size:13px;text-align:left;vertical-align:top}
th{background:#f4f5f8}
.num{text-align:right;font-variant-numeric:tabular-nums}
.ok{color:#17803d;font-weight:600}.bad{color:#c00;font-weight:600}.warn{color:#9a6700;font-weight:600}
.muted{color:#667}small{color:#667}
.badge{display:inline-block;font-size:.8em;padding:.05rem .45rem;border-radius:3px;background:#eaeef2}
.badge.ok{background:#dafbe1}.badge.bad{background:#ffebe9}.badge.warn{background:#fff8c5}
pre{white-space:pre-wrap;word-break:break-word;background:#f6f8fa;padding:.5rem;border-radius:4px;
font-size:12px;overflow:auto;margin:.3rem 0}
code{background:#f3f3f7;padding:0 .25rem;border-radius:3px}
svg{display:block;margin:8px 0;max-width:100%;height:auto}
svg text{font-size:11px;fill:#333}svg .title{font-size:13px;font-weight:600}
svg .plot{fill:#fff;stroke:#999}svg .grid{stroke:#e5e5e5}svg .axis{stroke:#999}
svg .empty{fill:#999;font-size:14px}ul.notes{font-size:13px;margin:4px 0 20px}
"""


class Markup(str):
    """Text that is already HTML: `table`, `page` and `status` insert it as is instead of escaping it."""


def esc(value: Any) -> str:
    """`value` as text with &, <, >, " and ' escaped (safe in element text and quoted attributes)."""
    return html.escape(str(value), quote=True)


def fmt(value: Any, spec: str | None = None) -> str:
    """A value as display text (not escaped): None as `MISSING`, booleans as yes / no, numbers by `spec`.

    Args:
        value: anything; a number (not a bool) is formatted with `spec`.
        spec: a format spec (".3f", "+.3f", ".1%"); None gives floats four significant digits and
            integers as they are.
    """
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float):
        if spec is not None:
            return format(value, spec)
        if isinstance(value, float):
            return format(value, ".4g")
    return str(value)


def cell(value: Any) -> str:
    """`value` as HTML: `Markup` as is, anything else through `fmt` and escaped."""
    return value if isinstance(value, Markup) else esc(fmt(value))


def status(text: Any, kind: Kind) -> Markup:
    """A coloured word (`ok` green, `bad` red, `warn` amber, `muted` grey), e.g. a gate's verdict."""
    return Markup(f'<span class="{kind}">{cell(text)}</span>')


def badge(text: Any, kind: Kind = "") -> Markup:
    """A small pill with a tinted background, e.g. a pass / fail mark next to an answer."""
    return Markup(f'<span class="{f"badge {kind}".strip()}">{cell(text)}</span>')


def table(
    header: Sequence[Any],
    rows: Iterable[Sequence[Any]],
    cls: str = "",
    col_class: Mapping[int, str] | None = None,
) -> Markup:
    """A table: one header row, then one row per entry of `rows`.

    Args:
        header: the column names (escaped unless `Markup`).
        rows: the cells of each row; a cell is a value shown with `fmt` and escaped, or `Markup`.
        cls: the table's class attribute (none when empty), for a page's own CSS.
        col_class: {column index: class} for the data cells of those columns (e.g. {3: "num"}).
    """
    col_class = col_class or {}
    attr = f' class="{esc(cls)}"' if cls else ""
    head = "".join(f"<th>{cell(h)}</th>" for h in header)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="{esc(col_class[i])}">{cell(c)}</td>' if i in col_class else f"<td>{cell(c)}</td>"
            for i, c in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return Markup(f"<table{attr}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")


def page(title: str, body: str, css: str = "", heading: Any = None) -> str:
    """A complete, self-contained HTML document: the shell every tuneline page is built with.

    Args:
        title: the document title (escaped); also the heading unless `heading` is given.
        body: the page's content, already HTML, placed after the heading.
        css: the page's own CSS, appended after `BASE_CSS` (so it may refine the base rules).
        heading: the `<h1>` content when it differs from the title (escaped unless `Markup`).

    Returns:
        The document, ending with a newline; the same arguments always give the same string.
    """
    return "\n".join([
        DOCTYPE,
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc(title)}</title>",
        f"<style>{BASE_CSS}{css}</style>",
        "</head>",
        "<body>",
        f"<h1>{cell(title if heading is None else heading)}</h1>",
        body,
        "</body>",
        "</html>",
        "",
    ])
