"""Sensitivity curves as one PNG: a panel per distortion type, a line per weights."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

from qualiclip_train.sensitivity import CurvePoint


def short_labels(names: Sequence[str]) -> dict[str, str]:
    """Each weights name shortened to its fewest trailing path parts that still tell it apart
    from the others (``runs/a/qualiclip-finetuned.pth`` -> ``a/qualiclip-finetuned.pth``), so
    legends stay narrow; the CSV keeps the names as given."""
    parts = {n: Path(n).parts or (n,) for n in names}
    depth = 1
    while True:
        labels = {n: "/".join(p[-depth:]) for n, p in parts.items()}
        if len(set(labels.values())) == len(labels) or all(depth >= len(p) for p in parts.values()):
            return labels
        depth += 1


def plot_curves(points: Sequence[CurvePoint], path: str | os.PathLike, columns: int = 6) -> Path:
    """Draw mean score (band: +- one std over images) against level 0..L, level 0 being the
    pristine images, for every type in ``points``; all panels share the y axis so drops compare
    across types. Returns the path of the PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    types = list(dict.fromkeys(p.type for p in points))
    weights = list(dict.fromkeys(p.weights for p in points))
    labels = short_labels(weights)
    rows = math.ceil(len(types) / columns)
    fig = Figure(figsize=(2.4 * columns, 2.0 * rows + 0.6), dpi=90)
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, columns, sharex=True, sharey=True, squeeze=False)
    colors = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860"]
    for ax, name in zip(axes.flat, types, strict=False):
        for k, w in enumerate(weights):
            curve = sorted((p for p in points if p.type == name and p.weights == w),
                           key=lambda p: p.level)
            if not curve:
                continue
            xs = [0] + [p.level for p in curve]
            ys = [curve[0].pristine_score] + [p.mean_score for p in curve]
            sd = [0.0] + [p.std_score for p in curve]
            color = colors[k % len(colors)]
            ax.plot(xs, ys, marker="o", markersize=3, color=color,
                    label=f"{labels[w] or 'model'} (srcc {curve[0].srcc:+.2f})")
            ax.fill_between(xs, [y - s for y, s in zip(ys, sd, strict=True)],
                            [y + s for y, s in zip(ys, sd, strict=True)], color=color,
                            alpha=0.15, linewidth=0)
        ax.set_title(f"{name}\n({curve[0].group})" if curve else name, fontsize=8)
        ax.legend(fontsize=6, loc="lower left")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(types):]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("level (0 = pristine)", fontsize=8)
    for ax in axes[:, 0]:
        ax.set_ylabel("mean score", fontsize=8)
    n = points[0].n_images if points else 0
    fig.suptitle(f"QualiCLIP score vs degradation level, mean over {n} images "
                 "(a falling curve = the model tracks it)", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path
