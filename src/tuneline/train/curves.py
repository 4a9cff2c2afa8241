"""Loss and learning-rate curves of a training run as one self-contained HTML page.

Two charts drawn as inline SVG (no script, no external asset, no plotting dependency): train and
val loss against the optimizer step, and the learning rate against the step. Both share the same
step axis so a loss jump can be read against the LR at that step. Values that are not finite (a NaN
loss) are not plotted but marked with a red cross on the step axis and listed under the chart,
because a hole in the curve is exactly what a reader must not miss. The output is a pure function of
the input: numbers are written with fixed precision, so the same history gives the same bytes.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from tuneline.html import esc, page
from tuneline.jsonio import write_text

WIDTH, HEIGHT = 760, 300
LEFT, RIGHT, TOP, BOTTOM = 78, 24, 34, 46  # margins around the plot area (room for tick labels)
TICKS = 6  # about this many ticks per axis
COLORS = {"train_loss": "#1f77b4", "val_loss": "#d62728", "lr": "#2ca02c"}
LABELS = {"train_loss": "train loss", "val_loss": "val loss", "lr": "learning rate"}

Point = tuple[float, float]


def _number(value: Any) -> float | None:
    """A float for numbers (NaN included); None for anything else (missing, text, bool)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        return float(value)  # "nan" / "inf" strings (a JSON-safe history) become non-finite floats
    except ValueError:
        return None


def split_series(history: list[dict[str, Any]], key: str) -> tuple[list[Point], list[float]]:
    """Points (step, value) of `key` in step order, and the steps whose value is not finite.

    Rows without a numeric `step` or without `key` are skipped.
    """
    points: list[Point] = []
    bad: list[float] = []
    for row in history:
        step, value = _number(row.get("step")), _number(row.get(key))
        if step is None or not math.isfinite(step) or key not in row:
            continue
        if value is not None and math.isfinite(value):
            points.append((step, value))
        else:
            bad.append(step)
    points.sort(key=lambda p: p[0])  # stable: rows logged twice at one step keep their order
    return points, sorted(bad)


def nice_ticks(lo: float, hi: float, count: int = TICKS, integer: bool = False) -> list[float]:
    """Round tick values (1, 2, 2.5 or 5 x 10^k apart; whole numbers if `integer`) from the last one
    <= lo to the first one >= hi."""
    if not hi > lo:
        return [lo]
    raw = (hi - lo) / max(1, count - 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw * (1 - 1e-9))
    if integer:  # optimizer steps: no 2.5, nothing under 1
        step = 5.0 if step == 2.5 else max(1.0, float(round(step)))
    first, last = math.floor(lo / step + 1e-9), math.ceil(hi / step - 1e-9)
    return [i * step for i in range(first, last + 1)]


def format_tick(value: float, ticks: list[float]) -> str:
    """A tick label with as many decimals as the tick spacing needs; scientific for tiny/huge scales."""
    spacing = abs(ticks[1] - ticks[0]) if len(ticks) > 1 else abs(value) or 1.0
    scale = max(abs(t) for t in ticks) or spacing
    if value == 0:
        return "0"
    if scale < 1e-3 or scale >= 1e6:
        digits = max(0, math.floor(math.log10(scale)) - math.floor(math.log10(spacing)))
        mantissa, exponent = f"{value:.{min(digits, 6)}e}".split("e")
        return f"{mantissa}e{int(exponent)}"  # 2.5e-4, not 2.5e-04
    decimals = max(0, -math.floor(math.log10(spacing) + 1e-9))
    if abs(round(spacing, decimals) - spacing) > spacing * 1e-6:
        decimals += 1  # spacing 2.5 x 10^k needs one more decimal
    return f"{value:.{min(decimals, 8)}f}"


def _span(values: list[float]) -> tuple[float, float]:
    """The values' range; a single value gets a range around it, so it is not drawn on the edge."""
    lo, hi = min(values), max(values)
    if hi == lo:
        half = abs(lo) * 0.1 or 1.0
        return lo - half, hi + half
    return lo, hi


def _f(x: float) -> str:
    return f"{x:.2f}"


def _chart(
    series: dict[str, tuple[list[Point], list[float]]],
    x_range: tuple[float, float],
    title: str,
    y_label: str,
    has_steps: bool,
) -> str:
    """One SVG chart: axes with ticks, one polyline per series, circles for sparse series."""
    pw, ph = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    x0, x1 = x_range
    values = [v for points, _ in series.values() for _, v in points]
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{esc(title)}">',
        f'<text x="{LEFT}" y="20" class="title">{esc(title)}</text>',
        f'<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" class="plot"/>',
    ]
    if not values:
        parts.append(
            f'<text x="{_f(LEFT + pw / 2)}" y="{_f(TOP + ph / 2)}" text-anchor="middle" '
            'class="empty">no data</text>'
        )
    yticks = nice_ticks(*_span(values)) if values else [0.0, 1.0]
    y0, y1 = yticks[0], yticks[-1]  # the plot spans whole ticks

    def sx(x: float) -> float:
        return LEFT + (x - x0) / (x1 - x0) * pw

    def sy(y: float) -> float:
        return TOP + ph - (y - y0) / (y1 - y0) * ph

    # The step axis spans the data exactly (no steps at all: no ticks); steps are whole numbers.
    xticks = [t for t in nice_ticks(x0, x1, integer=True) if x0 <= t <= x1] if has_steps else []
    for t in yticks if values else []:
        y = _f(sy(t))
        parts.append(
            f'<line x1="{LEFT}" y1="{y}" x2="{LEFT + pw}" y2="{y}" class="grid"/>'
            f'<text x="{LEFT - 6}" y="{y}" text-anchor="end" dy="0.32em">'
            f"{format_tick(t, yticks)}</text>"
        )
    for t in xticks:
        x = _f(sx(t))
        parts.append(
            f'<line x1="{x}" y1="{TOP + ph}" x2="{x}" y2="{TOP + ph + 4}" class="axis"/>'
            f'<text x="{x}" y="{TOP + ph + 17}" text-anchor="middle">{format_tick(t, xticks)}</text>'
        )
    parts.append(
        f'<text x="{_f(LEFT + pw / 2)}" y="{HEIGHT - 6}" text-anchor="middle">step</text>'
        f'<text transform="translate(14 {_f(TOP + ph / 2)}) rotate(-90)" text-anchor="middle">'
        f"{esc(y_label)}</text>"
    )
    legend_x = LEFT + pw
    for key, (points, bad) in reversed(series.items()):
        color = COLORS[key]
        coords = " ".join(f"{_f(sx(x))},{_f(sy(y))}" for x, y in points)
        if len(points) > 1:
            parts.append(
                f'<polyline points="{coords}" fill="none" stroke="{color}" stroke-width="1.6" class="{key}"/>'
            )
        if len(points) <= 1 or key == "val_loss":  # evaluations are sparse: show each one
            parts.extend(
                f'<circle cx="{_f(sx(x))}" cy="{_f(sy(y))}" r="3" fill="{color}">'
                f"<title>step {x:g}: {y:.6g}</title></circle>"
                for x, y in points
            )
        for step in bad:  # a non-finite value: a red cross on the step axis, never a silent gap
            cx, cy = sx(step), TOP + ph - 8
            parts.append(
                f'<path d="M{_f(cx - 4)},{_f(cy - 4)}L{_f(cx + 4)},{_f(cy + 4)}M{_f(cx - 4)},'
                f'{_f(cy + 4)}L{_f(cx + 4)},{_f(cy - 4)}" stroke="#c00" stroke-width="2" '
                f'class="nonfinite"><title>step {step:g}: {LABELS[key]} not finite</title></path>'
            )
        legend_x -= 8 + 7 * len(LABELS[key]) + 18
        parts.append(
            f'<rect x="{legend_x}" y="12" width="12" height="3" fill="{color}"/>'
            f'<text x="{legend_x + 16}" y="17">{LABELS[key]}</text>'
        )
    parts.append("</svg>")
    return "\n".join(parts)


def _notes(series: dict[str, tuple[list[Point], list[float]]]) -> str:
    """One line per series: its range, and the steps with a non-finite value."""
    lines = []
    for key, (points, bad) in series.items():
        if points:
            best_step, best = min(points, key=lambda p: (p[1], p[0]))
            text = (
                f"{LABELS[key]}: {points[0][1]:.4g} at step {points[0][0]:g} &#8594; {points[-1][1]:.4g} "
                f"at step {points[-1][0]:g} (min {best:.4g} at step {best_step:g})"
            )
        else:
            text = f"{LABELS[key]}: no finite value"
        if bad:
            shown = ", ".join(f"{s:g}" for s in bad[:20]) + (" ..." if len(bad) > 20 else "")
            text += f'; <span class="bad">{len(bad)} not finite, not plotted (steps {shown})</span>'
        lines.append(f"<li>{text}</li>")
    return '<ul class="notes">' + "".join(lines) + "</ul>"


def charts(history: list[dict[str, Any]]) -> str:
    """The two chart sections (loss, learning rate) as an HTML fragment; its styles (axes, grid, plot area,
    the notes under a chart) are the shared ones of `tuneline.html.BASE_CSS`, so any page can show it."""
    loss = {key: split_series(history, key) for key in ("train_loss", "val_loss")}
    lr = {"lr": split_series(history, "lr")}
    steps = [x for s in (*loss.values(), *lr.values()) for x in [p[0] for p in s[0]] + s[1]]
    x_range = (min(steps), max(steps)) if steps else (0.0, 1.0)
    if x_range[0] == x_range[1]:
        x_range = (x_range[0] - 1, x_range[1] + 1)  # one step only: centre it
    return "\n".join([
        '<section id="loss">',
        _chart(loss, x_range, "Loss", "loss", bool(steps)),
        _notes(loss),
        "</section>",
        '<section id="lr">',
        _chart(lr, x_range, "Learning rate", "learning rate", bool(steps)),
        _notes(lr),
        "</section>",
    ])


def curves_html(history: list[dict[str, Any]], title: str) -> str:
    """The curves page for a loss history.

    Args:
        history: rows such as {"step": 3, "train_loss": 4.1, "lr": 2e-4, "grad_norm": 1.3} or
            {"step": 10, "val_loss": 4.0}; other keys are ignored. Values may be NaN/inf (floats or the
            strings "nan"/"inf"): they are marked, not plotted.
        title: page heading (escaped).

    Returns:
        A complete HTML document with two inline SVG charts (loss, learning rate); same input, same bytes.
    """
    return page(title, charts(history))


def write_curves(history: list[dict[str, Any]], path: Path, title: str) -> Path:
    """Write `curves_html(history, title)` to `path` atomically; returns `path`."""
    write_text(path, curves_html(history, title))
    return path
