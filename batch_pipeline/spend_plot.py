"""The picture of a spend report: per day, a bar of the cost at batch price with the saving
stacked on it (together, what the same calls cost at live price).

`.html` is a self-contained page (an inline SVG and the totals, nothing fetched), `.svg` the
chart alone; both need nothing installed. `.png` is drawn by matplotlib, the `[report]` extra,
imported only here.
"""

from __future__ import annotations

import html
import math
from datetime import date
from pathlib import Path

from batch_pipeline.core.report import Spend, SpendReport, usd

SUFFIXES = (".html", ".svg", ".png")
EXTRA_HINT = "pip install 'batch_pipeline[report]'"
PAID_COLOUR = "#3b6ea8"
SAVED_COLOUR = "#7fbf7b"
_WIDTH, _HEIGHT = 760, 380
_LEFT, _RIGHT, _TOP, _BOTTOM = 84, 20, 56, 64
_MAX_LABELS = 12


def check_plot_path(path: Path) -> None:
    """A ValueError (one line) unless `path` names a picture this module writes."""
    if path.suffix.lower() not in SUFFIXES:
        raise ValueError(f"--plot {path}: the picture is written as .html, .svg or .png")


def write_plot(report: SpendReport, path: Path) -> None:
    """Write the report's daily spend to `path`, in the kind its suffix names."""
    check_plot_path(path)
    days = _priced_days(report)
    if not days:
        raise ValueError(f"--plot {path}: no partition with results and a known price to plot")
    suffix = path.suffix.lower()
    if suffix == ".png":
        _write_png(report, days, path)
    elif suffix == ".svg":
        path.write_text(svg_chart(report, days, standalone=True), encoding="utf-8")
    else:
        path.write_text(html_page(report, days), encoding="utf-8")


def _priced_days(report: SpendReport) -> list[tuple[date, Spend]]:
    return [(day, spend) for day, spend in report.daily() if spend.cost_batch_usd is not None]


def _title(report: SpendReport) -> str:
    return f"{report.pipeline}: daily cost at batch price and saving against live price"


def html_page(report: SpendReport, days: list[tuple[date, Spend]]) -> str:
    """A page with the chart and the totals, which loads nothing from anywhere."""
    total = report.total
    rows = [
        ("partitions", f"{len(report.partitions):,}"),
        ("rows", f"{total.rows:,}"),
        ("tokens", f"{total.input_tokens:,} in, {total.output_tokens:,} out"),
        ("cost at batch price", usd(total.cost_batch_usd)),
        ("cost at live price", usd(total.cost_live_usd)),
        ("saved", f"{usd(total.saved_usd)} ({_percent(total.saved_percent)})"),
    ]
    table = "\n".join(
        f"<tr><th>{html.escape(name)}</th><td>{html.escape(value)}</td></tr>"
        for name, value in rows
    )
    return (
        "<!doctype html>\n<html lang=en>\n<head>\n<meta charset=utf-8>\n"
        f"<title>{html.escape(_title(report))}</title>\n"
        "<style>body{font-family:sans-serif;margin:24px;color:#222}"
        "th{text-align:left;padding-right:16px;font-weight:normal;color:#555}"
        "td{text-align:right}</style>\n</head>\n<body>\n"
        f"{svg_chart(report, days, standalone=False)}\n"
        f"<table>\n{table}\n</table>\n</body>\n</html>\n"
    )


def svg_chart(report: SpendReport, days: list[tuple[date, Spend]], *, standalone: bool) -> str:
    """The stacked bars as SVG; `standalone` adds the namespace a separate file needs."""
    step, scale_top = _scale(days)
    plot_w = _WIDTH - _LEFT - _RIGHT
    plot_h = _HEIGHT - _TOP - _BOTTOM
    first = days[0][0]
    span = (days[-1][0] - first).days + 1
    slot = plot_w / span

    def y(value: float) -> float:
        return _TOP + plot_h * (1 - value / scale_top)

    parts = [_text(_LEFT, 24, _title(report), size=15, anchor="start")]
    parts += _legend()
    ticks = round(scale_top / step)
    for i in range(ticks + 1):
        value = step * i
        parts.append(_line(_LEFT, y(value), _LEFT + plot_w, y(value), "#ddd"))
        parts.append(_text(_LEFT - 6, y(value) + 4, _axis_usd(value, step), anchor="end"))
    label_every = max(1, math.ceil(len(days) / _MAX_LABELS))
    for index, (day, spend) in enumerate(days):
        x = _LEFT + slot * ((day - first).days + 0.1)
        width = slot * 0.8
        paid, saved = spend.cost_batch_usd or 0.0, spend.saved_usd or 0.0
        tip = (
            f"{day}: {usd(paid)} at batch price, {usd(spend.cost_live_usd)} live, "
            f"saved {usd(saved)}"
        )
        parts.append(_rect(x, y(paid), width, y(0) - y(paid), PAID_COLOUR, tip))
        parts.append(_rect(x, y(paid + saved), width, y(paid) - y(paid + saved), SAVED_COLOUR, tip))
        if index % label_every == 0:
            parts.append(_text(x + width / 2, _TOP + plot_h + 18, day.isoformat()))
    parts.append(_line(_LEFT, y(0), _LEFT + plot_w, y(0), "#888"))
    namespace = ' xmlns="http://www.w3.org/2000/svg"' if standalone else ""
    return (
        f'<svg{namespace} width="{_WIDTH}" height="{_HEIGHT}" '
        f'viewBox="0 0 {_WIDTH} {_HEIGHT}" font-family="sans-serif" role="img">\n'
        + "\n".join(parts)
        + "\n</svg>"
    )


def _legend() -> list[str]:
    x = _LEFT
    parts = []
    for colour, label in ((PAID_COLOUR, "cost at batch price"), (SAVED_COLOUR, "saved")):
        parts.append(_rect(x, 36, 12, 12, colour))
        parts.append(_text(x + 18, 46, label, anchor="start"))
        x += 40 + 7 * len(label)
    return parts


def _write_png(report: SpendReport, days: list[tuple[date, Spend]], path: Path) -> None:
    try:
        from matplotlib.dates import DateFormatter
        from matplotlib.figure import Figure
    except ImportError:
        raise ValueError(
            f"--plot {path}: a PNG needs matplotlib, the [report] extra: {EXTRA_HINT} "
            "(or write an .html picture, which needs nothing)"
        ) from None
    figure = Figure(figsize=(_WIDTH / 100, _HEIGHT / 100), dpi=100, layout="constrained")
    axes = figure.add_subplot()
    when = [day for day, _ in days]
    paid = [spend.cost_batch_usd or 0.0 for _, spend in days]
    saved = [spend.saved_usd or 0.0 for _, spend in days]
    axes.bar(when, paid, width=0.8, color=PAID_COLOUR, label="cost at batch price")
    axes.bar(when, saved, width=0.8, bottom=paid, color=SAVED_COLOUR, label="saved")
    step, scale_top = _scale(days)
    ticks = [step * i for i in range(round(scale_top / step) + 1)]
    axes.set_yticks(ticks, [_axis_usd(value, step) for value in ticks])
    axes.set_ylim(0, scale_top)
    axes.set_xticks(when[:: max(1, math.ceil(len(when) / _MAX_LABELS))])
    axes.xaxis.set_major_formatter(DateFormatter("%Y-%m-%d"))
    axes.set_title(_title(report), fontsize=11, loc="left", pad=30)
    axes.legend(loc="lower left", bbox_to_anchor=(0, 1.0), ncols=2, frameon=False)
    axes.grid(axis="y", color="#ddd")
    axes.set_axisbelow(True)
    figure.autofmt_xdate()
    figure.savefig(path, format="png")


def _scale(days: list[tuple[date, Spend]]) -> tuple[float, float]:
    """The tick step and the top of the USD axis: the highest live cost, rounded up."""
    top = max((spend.cost_live_usd or 0.0) for _, spend in days)
    step = _nice_step(top)
    return step, step * max(1, math.ceil(top / step - 1e-9))


def _nice_step(top: float) -> float:
    """A tick step of 1, 2 or 5 times a power of ten giving at most five ticks up to `top`."""
    if top <= 0:
        return 1.0
    raw = top / 5
    power = 10 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= raw)


def _axis_usd(value: float, step: float) -> str:
    decimals = max(0, -math.floor(math.log10(step))) if step < 1 else 0
    return f"${value:,.{decimals}f}"


def _percent(value: float | None) -> str:
    return "unknown" if value is None else f"{value:.1f}%"


def _rect(x: float, y: float, w: float, h: float, fill: str, tip: str | None = None) -> str:
    title = f"<title>{html.escape(tip)}</title>" if tip else ""
    return (
        f'<rect x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{max(h, 0):.1f}" '
        f'fill="{fill}">{title}</rect>'
    )


def _line(x1: float, y1: float, x2: float, y2: float, stroke: str) -> str:
    return f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="{stroke}"/>'


def _text(x: float, y: float, text: str, *, size: int = 11, anchor: str = "middle") -> str:
    return (
        f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}">'
        f"{html.escape(text)}</text>"
    )
