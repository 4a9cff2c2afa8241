"""The A/B report rendered for people: one summary line, Markdown (a dashboard artifact) and the HTML
page (self-contained: inline SVG, no script; every user string escaped)."""

from __future__ import annotations

from typing import Any

from tuneline.html import MISSING, cell, esc, fmt, page, table

VARIANTS = ("champion", "challenger")


def verdict_sentence(report: dict[str, Any]) -> str:
    """The two-proportion test in words."""
    test, arms = report["test"], report["arms"]
    if arms["challenger"] is None:
        return "No challenger: nothing to compare."
    if arms["champion"] is None:
        return "No champion: nothing to compare the challenger against."
    if test is None:
        return "No rated exchanges on one of the variants yet: no test."
    sign = "higher" if test["difference"] > 0 else "lower" if test["difference"] < 0 else "equal"
    verdict = (f"significant (p < {test['alpha']:g})" if test["significant"]
               else f"not significant (p >= {test['alpha']:g})")
    return (
        f"Challenger (version {arms['challenger']['version']}) positive rate "
        f"{test['rate_challenger']:.1%} vs champion (version {arms['champion']['version']}) "
        f"{test['rate_champion']:.1%}: {sign} by {abs(test['difference']) * 100:.1f} points, "
        f"z = {test['z']:.2f}, p = {test['p_value']:.3g}: {verdict}."
    )


def summary_line(report: dict[str, Any]) -> str:
    """One line: the rated counts and rates of both arms and the test verdict."""
    parts = []
    for v in VARIANTS:
        arm = report["arms"][v]
        if arm is None:
            parts.append(f"{v} none")
        else:
            rate = "n/a" if arm["rate"] is None else f"{arm['rate']:.1%}"
            parts.append(f"{v} v{arm['version']} {arm['positive']}/{arm['rated']} positive ({rate})")
    test = report["test"]
    verdict = "no test" if test is None else f"p={test['p_value']:.3g}" + (
        " significant" if test["significant"] else " not significant")
    return f"{'; '.join(parts)}; {verdict}"


def _md_cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def render_markdown(report: dict[str, Any]) -> str:
    """A short Markdown summary of the report (a table of both arms and the test in words)."""
    lines = [
        f"# A/B: {_md_cell(report['model_name'])}",
        "",
        f"Generated {report['generated_at']}; {report['in_experiment']} of {report['exchanges']} exchanges "
        "in the current experiment.",
        "",
        "| variant | version | requests | rated | positive rate | CI | p50 ms | p95 ms | corrections |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for v in VARIANTS:
        arm = report["arms"][v]
        if arm is None:
            lines.append(f"| {v} | none | | | | | | | |")
            continue
        rate = "n/a" if arm["rate"] is None else f"{arm['rate']:.1%}"
        ci = "n/a" if arm["ci"] is None else f"{arm['ci'][0]:.1%} to {arm['ci'][1]:.1%}"
        lat = arm["latency_ms"]
        p50 = "n/a" if lat["p50"] is None else f"{lat['p50']:.0f}"
        p95 = "n/a" if lat["p95"] is None else f"{lat['p95']:.0f}"
        lines.append(
            f"| {v} | {_md_cell(arm['version'])} | {arm['requests']} | {arm['rated']} | {rate} | {ci} | "
            f"{p50} | {p95} | {arm['corrections']} |"
        )
    lines += ["", verdict_sentence(report), ""]
    return "\n".join(lines)


# --- the HTML page (self-contained: inline SVG, no script; every user string escaped) ---------------

COLORS = {"champion": "#1f77b4", "challenger": "#d62728"}
# ab.html's own styles, on top of `tuneline.html.BASE_CSS` (which also styles the charts' SVG).
AB_CSS = (
    "table.ab td,table.ab th{text-align:right}table.ab td{white-space:nowrap}"
    "table.ab td.text{text-align:left;min-width:160px;max-width:360px;white-space:pre-wrap;"
    "word-break:break-word}p.verdict{font-size:15px}"
)


def _pct(x: float | None) -> str:
    return fmt(x, ".1%")


def _ms(x: float | None) -> str:
    return fmt(x, ".0f")


def _svg_open(width: int, height: int, label: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img" aria-label="{esc(label)}">')


def _latency_svg(arms: dict[str, Any]) -> str:
    """Horizontal bars: p50 and p95 latency of each arm, on one scale."""
    bars = [(v, k, arm["latency_ms"][k]) for v in VARIANTS if (arm := arms[v]) is not None
            for k in ("p50", "p95") if arm["latency_ms"][k] is not None]
    if not bars:
        return "<p>No requests yet: no latency.</p>"
    top = max(x for *_, x in bars) or 1.0
    width, label_w, bar_h, gap = 640, 130, 18, 6
    parts = [_svg_open(width, gap + len(bars) * (bar_h + gap), "latency")]
    for i, (variant, key, x) in enumerate(bars):
        y, w = gap + i * (bar_h + gap), (width - label_w - 90) * x / top
        parts.append(
            f'<text x="{label_w - 6}" y="{y + bar_h / 2:.1f}" text-anchor="end" dy="0.32em">'
            f"{variant} {key}</text>"
            f'<rect x="{label_w}" y="{y}" width="{w:.2f}" height="{bar_h}" fill="{COLORS[variant]}" '
            f'opacity="{0.55 if key == "p50" else 0.9}"/>'
            f'<text x="{label_w + w + 6:.2f}" y="{y + bar_h / 2:.1f}" dy="0.32em">{x:.0f} ms</text>'
        )
    return "\n".join([*parts, "</svg>"])


def _rate_svg(variant: str, points: list[dict[str, Any]], overall: float | None, bucket: str) -> str:
    """The positive rate per time bucket of one arm (y 0..1); the dashed line is the arm's overall rate."""
    width, height, left, right, top, bottom = 760, 230, 56, 20, 30, 40
    pw, ph = width - left - right, height - top - bottom
    title = f"{variant}: positive rate per {bucket}"
    parts = [_svg_open(width, height, title), f'<text x="{left}" y="18" class="title">{esc(title)}</text>',
             f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" class="plot"/>']
    ts = [float(p["t"]) for p in points]
    x0, x1 = (min(ts), max(ts)) if ts else (0.0, 1.0)
    if x0 == x1:
        x0, x1 = x0 - 1, x1 + 1  # one bucket: centre it

    def sx(t: float) -> float:
        return left + (t - x0) / (x1 - x0) * pw

    def sy(rate: float) -> float:
        return top + ph - rate * ph

    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        y = f"{sy(tick):.2f}"
        parts.append(f'<line x1="{left}" y1="{y}" x2="{left + pw}" y2="{y}" class="grid"/>'
                     f'<text x="{left - 6}" y="{y}" text-anchor="end" dy="0.32em">{tick:.0%}</text>')
    if not points:
        parts.append(f'<text x="{left + pw / 2:.2f}" y="{top + ph / 2:.2f}" text-anchor="middle" '
                     'class="empty">no rated exchanges</text>')
    labels = sorted({round(i * (len(points) - 1) / 5) for i in range(6)}) if points else []
    for i in labels:
        start = points[i]["start"]
        stamp = start[:10] if bucket == "day" else start[:13].replace("T", " ") + "h"
        # The outermost labels hang inwards so they are not clipped at the chart's edges.
        anchor = "start" if i == 0 and len(points) > 1 else "end" if i == len(points) - 1 > 0 else "middle"
        parts.append(f'<text x="{sx(ts[i]):.2f}" y="{top + ph + 17}" text-anchor="{anchor}">'
                     f"{esc(stamp)}</text>")
    color = COLORS[variant]
    if overall is not None:
        parts.append(f'<line x1="{left}" y1="{sy(overall):.2f}" x2="{left + pw}" y2="{sy(overall):.2f}" '
                     f'stroke="{color}" stroke-dasharray="4 3" opacity="0.6"/>')
    if len(points) > 1:
        coords = " ".join(f"{sx(t):.2f},{sy(p['rate']):.2f}" for t, p in zip(ts, points, strict=True))
        parts.append(f'<polyline points="{coords}" fill="none" stroke="{color}" stroke-width="1.6"/>')
    parts.extend(
        f'<circle cx="{sx(t):.2f}" cy="{sy(p["rate"]):.2f}" r="3" fill="{color}"><title>{esc(p["start"])}: '
        f'{p["rate"]:.1%} ({p["positive"]}/{p["rated"]})</title></circle>'
        for t, p in zip(ts, points, strict=True)
    )
    return "\n".join([*parts, "</svg>"])


def report_html(report: dict[str, Any]) -> str:
    """The A/B page: verdict, summary table, latency bars, rate-over-time charts, versions, negatives."""
    arms = report["arms"]
    summary: list[list[Any]] = []
    for v in VARIANTS:
        a = arms[v]
        if a is None:
            summary.append([v, "none", *[""] * 11])
            continue
        ci = MISSING if a["ci"] is None else f"{a['ci'][0]:.1%} – {a['ci'][1]:.1%}"
        rated = str(a["rated"]) + (f" (+{a['pinned_rated']} pinned)" if a["pinned_rated"] else "")
        reasons = ", ".join(f"{k}: {n}" for k, n in a["finish_reasons"].items())
        summary.append([v, a["version"], a["requests"], a["pinned"], rated, a["positive"], _pct(a["rate"]),
                        ci, a["corrections"], _ms(a["latency_ms"]["p50"]), _ms(a["latency_ms"]["p95"]),
                        f"{a['tokens']['prompt']} / {a['tokens']['completion']}", reasons])
    versions = [[r["version"], r["variant"], r["requests"], r["rated"], r["positive"], _pct(r["rate"]),
                 "yes" if r["current"] else "", r["first_at"], r["last_at"]] for r in report["versions"]]
    negatives = [[n["at"], n["variant"], n["version"], n["prompt"], n["answer"],
                  n["thumb"] if n["thumb"] is not None else n["rating"], n["correction"], n["comment"]]
                 for n in report["negatives"]]
    bucket = report["params"]["bucket"]
    charts = [_rate_svg(v, report["over_time"][v], arms[v]["rate"] if arms[v] else None, bucket)
              for v in VARIANTS]
    aliases = report["aliases"]
    body = "\n".join([
        f"<p>Generated {cell(report['generated_at'])}. Champion version {cell(aliases['champion'])}, "
        f"challenger version {cell(aliases['challenger'])}; {report['in_experiment']} of "
        f"{report['exchanges']} exchanges in the current experiment. Pinned requests are shown but not "
        "tested (their users chose the variant).</p>",
        f'<h2>Result</h2><p class="verdict">{esc(verdict_sentence(report))}</p>',
        "<h2>Summary</h2>",
        table(["variant", "version", "requests", "pinned", "rated", "positive", "positive rate",
               f"CI {1 - report['params']['alpha']:.0%}", "corrections", "p50 ms", "p95 ms",
               "tokens prompt / completion", "finish reasons"], summary, cls="ab"),
        "<h2>Latency</h2>", _latency_svg(arms),
        "<h2>Positive rate over time</h2>", *charts,
        "<h2>All versions seen</h2>",
        table(["version", "variant", "requests", "rated", "positive", "rate", "in experiment", "first",
               "last"], versions, cls="ab"),
        f"<h2>Latest negative feedback ({len(negatives)})</h2>",
        table(["at", "variant", "version", "prompt", "answer", "thumb / rating", "correction", "comment"],
              negatives, cls="ab", col_class={3: "text", 4: "text", 6: "text", 7: "text"})
        if negatives else "<p>None.</p>",
    ])
    return page(f"A/B: {report['model_name']}", body, css=AB_CSS)
