"""The report's figures, drawn with matplotlib into PNG bytes (no files, no display)."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np

from qualiclip.report.data import GroupStats, ReportRow, scored


def _figure(width: float, height: float):
    # The Agg canvas directly, not pyplot: no global figure registry, no GUI backend needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def _hboxplot(ax, data: list[list[float]], labels: list[str]) -> None:
    """Horizontal box plot, first entry on top; empty entries are drawn as nothing."""
    data = [d if d else [np.nan] for d in data]
    try:  # matplotlib >= 3.10 spells it ``orientation``; older ones only know ``vert``
        ax.boxplot(data, orientation="horizontal")
    except TypeError:
        ax.boxplot(data, vert=False)
    # Labels are user data (tags, label names): "$" would start matplotlib mathtext.
    ax.set_yticks(range(1, len(labels) + 1), [label.replace("$", r"\$") for label in labels])
    ax.invert_yaxis()


def histogram_png(counts: np.ndarray, edges: np.ndarray, threshold: float | None,
                  unit: str = "images") -> bytes:
    """Bar chart of precomputed histogram ``counts`` over ``edges`` (so figure and table agree);
    ``unit`` labels the counts (``"images"``, ``"videos"``)."""
    fig = _figure(6.4, 3.2)
    ax = fig.add_subplot()
    ax.bar(edges[:-1], counts, width=np.diff(edges), align="edge", color="#4c72b0",
           edgecolor="white")
    if threshold is not None:
        ax.axvline(threshold, color="#c44e52", linestyle="--",
                   label=f"flag threshold {threshold:g}")
        ax.legend(loc="upper left")
    ax.set_xlim(0, 1)
    ax.set_xlabel("QualiCLIP score (higher is better)")
    ax.set_ylabel(unit)
    return _png(fig)


def pair_scores_png(rows: Sequence[ReportRow], pair_names: Sequence[str]) -> bytes:
    """Box plot of each prompt pair's scores over all scored rows."""
    ok = scored(rows)
    data = [[r.pair_scores[p] for r in ok if p in r.pair_scores] for p in pair_names]
    fig = _figure(6.4, 0.45 * len(pair_names) + 1.2)
    ax = fig.add_subplot()
    _hboxplot(ax, data, list(pair_names))
    ax.set_xlim(0, 1)
    ax.set_xlabel("pair score (positive prompt wins -> 1)")
    return _png(fig)


def groups_png(key: str, stats: Sequence[GroupStats], rows: Sequence[ReportRow]) -> bytes:
    """Box plot of scores per value of breakdown ``key`` (``stats`` gives the order)."""
    ok = scored(rows)
    data = [[r.score for r in ok if s.value in r.groups.get(key, ())] for s in stats]
    labels = [f"{s.value} (n={s.count})" for s in stats]
    fig = _figure(6.4, 0.4 * len(stats) + 1.2)
    ax = fig.add_subplot()
    _hboxplot(ax, data, labels)
    ax.set_xlim(0, 1)
    ax.set_xlabel(f"QualiCLIP score by {key}")
    return _png(fig)
