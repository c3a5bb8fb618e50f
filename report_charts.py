"""The HTML report's charts: matplotlib figures on the Agg canvas, returned as inline PNG ``<img>`` tags.

No pyplot and no global backend switch (the report may be written inside a caller's process); no metadata that
changes between runs, so the same report.json draws the same bytes. report_html.py decides what is drawn and
says in words what is not recorded; this module only draws.
"""

from __future__ import annotations

import base64
import html
import io
from typing import Any

from compress_graph.ir.errors import UsageError

#: chart colours: "before" grey, "after" orange (the screenshot test looks for the orange)
BEFORE_COLOR = "#9aa9b8"
AFTER_COLOR = "#e8590c"
HIGHLIGHT_COLOR = "#1c7ed6"
#: kernel bars by schedule source (the first word of targets/kernel_profile.py's labels)
SOURCE_COLORS = {"tuned": AFTER_COLOR, "hand-scheduled": HIGHLIGHT_COLOR, "default": BEFORE_COLOR,
                 "unscheduled": "#c92a2a"}
OTHER_SOURCE_COLOR = "#495057"
PRUNE_LEVELS = (0, 25, 50, 75)  # percent of a group's channels cut at each prune sensitivity measurement


class Charts:
    """One report's figures."""

    def __init__(self) -> None:
        try:
            from matplotlib.figure import Figure
        except ImportError:
            raise UsageError("the HTML report needs matplotlib (pip install matplotlib)") from None
        self._figure = Figure

    def figure(self, width: float, height: float, cols: int = 1):
        """A figure and its ``cols`` side-by-side axes (one axes object for ``cols=1``)."""
        fig = self._figure(figsize=(width, height), dpi=96)
        axes = [fig.add_subplot(1, cols, k + 1) for k in range(cols)]
        return fig, axes[0] if cols == 1 else axes

    @staticmethod
    def img(fig, alt: str) -> str:
        buf = io.BytesIO()
        fig.tight_layout()
        fig.savefig(buf, format="png", metadata={"Software": None})
        data = base64.b64encode(buf.getvalue()).decode("ascii")
        return f'<img class="chart" alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'

    def before_after(self, labels: list[str], before: list[float], after: list[float], title: str,
                     xlabel: str) -> str:
        """Horizontal bars, one pair per label (top to bottom in the given order)."""
        import numpy as np

        height = max(2.2, 0.34 * len(labels) + 1.2)
        fig, ax = self.figure(10, height)
        y = np.arange(len(labels))
        ax.barh(y - 0.2, before, height=0.4, color=BEFORE_COLOR, label="before")
        ax.barh(y + 0.2, after, height=0.4, color=AFTER_COLOR, label="after")
        ax.set_yticks(y, labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel(xlabel)
        ax.set_title(title, fontsize=11)
        ax.legend(loc="lower right", fontsize=8)
        ax.grid(axis="x", alpha=0.3)
        return self.img(fig, title)

    def bars(self, labels: list[str], values: list[float], title: str, xlabel: str,
             highlight: set[str] | None = None, highlight_label: str = "") -> str:
        import numpy as np

        height = max(2.0, 0.3 * len(labels) + 1.2)
        fig, ax = self.figure(10, height)
        y = np.arange(len(labels))
        colors = [HIGHLIGHT_COLOR if highlight and lab in highlight else BEFORE_COLOR for lab in labels]
        ax.barh(y, values, height=0.6, color=colors)
        ax.set_yticks(y, labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel(xlabel)
        ax.set_title(title, fontsize=11)
        ax.grid(axis="x", alpha=0.3)
        if highlight:
            from matplotlib.patches import Patch

            ax.legend(handles=[Patch(color=HIGHLIGHT_COLOR, label=highlight_label),
                               Patch(color=BEFORE_COLOR, label="other")], loc="lower right", fontsize=8)
        return self.img(fig, title)

    def sensitivity(self, curves: dict[str, list[float]], chosen: dict[str, float]) -> str:
        """Prune sensitivity: error vs percent of the group cut, one line per group, and a star on each line at the
        percent the allocation chose (``chosen``: group -> percent)."""
        from matplotlib.lines import Line2D

        fig, ax = self.figure(10, 4.2)
        for g, errors in curves.items():
            (line,) = ax.plot(PRUNE_LEVELS, errors, marker="o", label=g)
            if g in chosen:
                ax.plot([chosen[g]], [on_curve(PRUNE_LEVELS, errors, chosen[g])], marker="*", markersize=15,
                        color=line.get_color(), markeredgecolor="black", linestyle="none")
        ax.set_xticks(PRUNE_LEVELS, [f"{p} %" for p in PRUNE_LEVELS])
        ax.set_xlabel("channels of the group cut")
        ax.set_ylabel("model output error")
        ax.set_title("prune sensitivity: output error when one group is cut", fontsize=11)
        ax.grid(alpha=0.3)
        handles, _ = ax.get_legend_handles_labels()
        if chosen:
            handles.append(Line2D([], [], marker="*", markersize=12, color="white", markeredgecolor="black",
                                  label="chosen cut"))
        ax.legend(handles=handles, fontsize=7, ncol=2 if len(curves) > 8 else 1, loc="upper left",
                  bbox_to_anchor=(1.01, 1.0))
        return self.img(fig, "prune sensitivity curves with the chosen cut per group")

    def kernel_times(self, names: list[str], micros: list[float], sources: list[str], title: str,
                     unit: str = "microseconds per inference") -> str:
        """Horizontal bars of time (or ``unit``) per kernel (top to bottom as given), coloured by schedule source."""
        import numpy as np
        from matplotlib.patches import Patch

        colors = [source_color(s) for s in sources]
        fig, ax = self.figure(10, max(2.0, 0.3 * len(names) + 1.4))
        y = np.arange(len(names))
        ax.barh(y, micros, height=0.6, color=colors)
        ax.set_yticks(y, [short(n, 64) for n in names], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel(unit)
        ax.set_title(title, fontsize=11)
        ax.grid(axis="x", alpha=0.3)
        seen = dict.fromkeys(sources)
        ax.legend(handles=[Patch(color=source_color(s), label=s) for s in seen], loc="lower right", fontsize=8)
        return self.img(fig, title)

    def tuning_curve(self, model: list[tuple[int, float]], tasks: dict[str, list[tuple[int, float]]]) -> str:
        """Best latency vs trials: the tuned kernels' weighted sum (left, once every task has a candidate) and
        each task's best so far (right; log scale when they span more than 20x)."""
        from matplotlib.ticker import MaxNLocator

        fig, (left, right) = self.figure(10, 3.8, cols=2)
        if model:
            left.step([t for t, _ in model], [v for _, v in model], where="post", color=AFTER_COLOR, marker="o",
                      markersize=3)
        else:
            left.text(0.5, 0.5, "no task set complete yet", ha="center", va="center", transform=left.transAxes)
        left.set_ylabel("microseconds")
        left.set_title("tuned kernels, weighted sum (best so far)", fontsize=10)
        for name, points in tasks.items():
            right.step([t for t, _ in points], [v for _, v in points], where="post", marker="o", markersize=3,
                       label=short(name, 44))
        values = [v for points in tasks.values() for _, v in points if v > 0]
        if values and max(values) > 20 * min(values):
            right.set_yscale("log")
        right.set_title("best latency per task (us)", fontsize=10)
        if tasks:
            right.legend(fontsize=6, loc="best")
        for ax in (left, right):
            ax.set_xlabel("trials")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3, which="both")
        return self.img(fig, "tuning: best latency vs trials")


def short(name: str, width: int) -> str:
    """A long kernel name's start and end (fused kernels differ in both): ``fused_conv2d_NCHWc_i...cast5_clip``."""
    if len(name) <= width:
        return name
    head = (width - 3) // 2
    return name[:head] + "..." + name[-(width - 3 - head):]


def source_color(source: str) -> str:
    return SOURCE_COLORS.get(source.split(" ", 1)[0], OTHER_SOURCE_COLOR)


def on_curve(xs: Any, ys: list[float], x: float) -> float:
    """``ys`` at ``x``: linear between the measurements, the last segment's line beyond them."""
    import numpy as np

    if x <= xs[-1] or len(xs) < 2:
        return float(np.interp(x, xs, ys))
    slope = (ys[-1] - ys[-2]) / (xs[-1] - xs[-2])
    return float(ys[-1] + slope * (x - xs[-1]))
