"""Charts for the HTML reports, drawn by matplotlib and inlined as SVG (host side only).

One module for every report: the morning report (``midshift/host_tools/morning_report``) and the
simulator's shift report (``midshift/simulator/shift_report.py``). Each function returns one
``<svg>`` element as text, without the XML prolog, ready to paste into a page: no files
beside the page, no scripts. Text stays text (``svg.fonttype = none``), so a browser
renders it in the page's font and a DOM check can read the labels.

No pyplot: each chart is its own ``Figure`` on the SVG canvas (matplotlib's Agg/SVG
backends need no display and keep no global figure list), so charts can be drawn from any
thread. Output is deterministic (no date in the metadata, a fixed hash salt per chart, so
two identical inputs give identical bytes); the salt is the chart's ``name``, which must
be unique within a page because matplotlib names clip paths from it.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # never a GUI, even when a display is set

from matplotlib import rcParams  # noqa: E402 - after choosing the backend
from matplotlib.figure import Figure  # noqa: E402

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b",
          "#e377c2"]
SHADE = "#f4a6a6"
WIDTH_IN = 10.0

# Series: (label, xs, ys, style) with style "step", "line" or "dashed-step".
Series = tuple[str, Sequence[float], Sequence[float], str]
# A shaded window on the x axis: (start, end, label).
Window = tuple[float, float, str]


def _figure(height_in: float) -> tuple[Figure, object]:
    rcParams["svg.fonttype"] = "none"
    fig = Figure(figsize=(WIDTH_IN, height_in), layout="constrained")
    ax = fig.add_subplot()
    ax.spines[["top", "right"]].set_visible(False)
    ax.tick_params(labelsize=9)
    return fig, ax


def _svg(fig: Figure, name: str, title: str) -> str:
    rcParams["svg.hashsalt"] = name
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None, "Title": title})
    text = buf.getvalue()
    svg = text[text.index("<svg"):]
    # Scale with the page: drop the fixed size in points, keep the viewBox.
    svg = re.sub(r'<svg([^>]*?) width="[^"]*" height="[^"]*"',
                 rf'<svg\1 class="chart" data-chart="{name}" role="img" '
                 r'style="width:100%;height:auto"', svg, count=1)
    return svg.strip()


def _shade(ax: object, windows: Sequence[Window]) -> None:
    """Windows shaded across the plot, labelled on three staggered rows at the top."""
    for i, (a, b, label) in enumerate(windows):
        ax.axvspan(a, max(b, a + 1e-9), color=SHADE, alpha=0.35, lw=0)  # type: ignore[attr-defined]
        if label:
            ax.annotate(label, (a, 1.0), xycoords=("data", "axes fraction"),  # type: ignore[attr-defined]
                        xytext=(2, -10 - 11 * (i % 3)), textcoords="offset points",
                        fontsize=8, color="#a33", va="top")


def lines(name: str, series: Sequence[Series], x_label: str, y_label: str,
          windows: Sequence[Window] = (), y_ticks: Sequence[tuple[float, str]] | None = None,
          x_ticks: Sequence[tuple[float, str]] | None = None, height_in: float = 2.6,
          x_max: float | None = None) -> str:
    """Lines (or steps) over a shared x axis, with shaded windows and a legend."""
    fig, ax = _figure(height_in)
    _shade(ax, windows)
    for i, (label, xs, ys, style) in enumerate(series):
        kw = {"color": COLORS[i % len(COLORS)], "lw": 1.4, "label": label}
        if style.endswith("step"):
            ax.step(xs, ys, where="post", ls="--" if style.startswith("dashed") else "-", **kw)
        else:
            ax.plot(xs, ys, **kw)
    ax.set_xlabel(x_label, fontsize=9)
    ax.set_ylabel(y_label, fontsize=9)
    ax.set_xlim(0, x_max if x_max else None)
    ax.set_ylim(bottom=0)
    if y_ticks is not None:
        ax.set_yticks([v for v, _ in y_ticks], [t for _, t in y_ticks])
    if x_ticks is not None:
        ax.set_xticks([v for v, _ in x_ticks], [t for _, t in x_ticks])
    if series:
        ax.legend(fontsize=8, loc="upper right", frameon=False)
    return _svg(fig, name, y_label)


def bars(name: str, categories: Sequence[str], stacks: Sequence[tuple[str, Sequence[float]]],
         y_label: str, title: str = "", windows: Sequence[Window] = (),
         value_labels: bool = False, height_in: float = 2.6,
         horizontal: bool = False) -> str:
    """Bars per category, stacked when there are several ``stacks`` (label, values);
    ``windows`` shade category positions (0-based, fractional) behind the bars."""
    fig, ax = _figure(height_in)
    _shade(ax, windows)
    pos = list(range(len(categories)))
    base = [0.0] * len(categories)
    for i, (label, values) in enumerate(stacks):
        color = COLORS[i % len(COLORS)]
        if horizontal:
            drawn = ax.barh(pos, values, left=base, color=color, label=label, height=0.6)
        else:
            drawn = ax.bar(pos, values, bottom=base, color=color, label=label, width=0.8)
        base = [b + v for b, v in zip(base, values, strict=True)]
        if value_labels and len(stacks) == 1:
            ax.bar_label(drawn, fontsize=8, fmt="%g")
    if horizontal:
        ax.set_yticks(pos, categories)
        ax.invert_yaxis()
        ax.set_xlabel(y_label, fontsize=9)
    else:
        step = max(1, len(categories) // 24)  # at most ~24 tick labels
        ax.set_xticks(pos[::step], list(categories)[::step])
        ax.set_ylabel(y_label, fontsize=9)
        ax.set_xlim(-0.6, len(categories) - 0.4)
    if title:
        ax.set_title(title, fontsize=10, loc="left")
    if len(stacks) > 1:  # above the plot, in one row: never over a bar
        ax.legend(fontsize=8, loc="lower right", bbox_to_anchor=(1, 1), ncols=len(stacks),
                  frameon=False)
    return _svg(fig, name, title or y_label)
