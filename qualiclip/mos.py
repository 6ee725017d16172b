"""Agreement of a model with human opinion scores: SRCC, PLCC and KRCC against a (path, mos) CSV.

Works with any weights :func:`qualiclip.load_model` accepts (official or fine-tuned). Images are
scored at their native resolution in fp32, the official scoring contract.
"""

from __future__ import annotations

import csv
import math
import warnings
from pathlib import Path

import torch

_PATH_COLUMNS = ("path", "image", "file", "filename", "image_name", "img")
_MOS_COLUMNS = ("mos", "score", "dmos", "quality", "label")


def read_mos_csv(csv_path: str | Path, root: str | Path | None = None) -> list[tuple[Path, float]]:
    """Rows of ``(image path, mos)``, higher = better. The header, if any, may name the columns
    (``path``/``image``/``file`` and ``mos``/``score``/``dmos``; a ``dmos`` column is negated,
    with a warning); otherwise the first two columns are used.
    Relative paths are resolved against ``root`` (default: the CSV's folder).

    Raises:
        ValueError: empty file, or a MOS that is not a number.
    """
    csv_path = Path(csv_path)
    base = Path(root) if root is not None else csv_path.parent
    with csv_path.open(newline="") as handle:
        rows = [r for r in csv.reader(handle) if r and any(c.strip() for c in r)]
    if not rows:
        raise ValueError(f"{csv_path} is empty")
    p_col, m_col, sign = 0, 1, 1.0
    header = [c.strip().lower() for c in rows[0]]
    if not _is_number(rows[0][1] if len(rows[0]) > 1 else ""):
        p_col = next((header.index(c) for c in _PATH_COLUMNS if c in header), 0)
        m_col = next((header.index(c) for c in _MOS_COLUMNS if c in header), 1)
        if header[m_col] == "dmos":
            # Differential MOS grows as quality falls; flip it so that, as for MOS, a model
            # that agrees with people gets positive correlations.
            sign = -1.0
            warnings.warn(f"{csv_path}: column 'dmos' (lower is better) is negated, so "
                          "correlations are positive when the model agrees", stacklevel=2)
        rows = rows[1:]
    out = []
    for line, row in enumerate(rows, start=2):
        try:
            mos = sign * float(row[m_col])
        except (ValueError, IndexError) as exc:
            raise ValueError(f"{csv_path}:{line}: MOS {row[m_col:m_col + 1]} is not a number") \
                from exc
        path = Path(row[p_col].strip()).expanduser()
        out.append((path if path.is_absolute() else base / path, mos))
    return out


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def score_files(model: torch.nn.Module, paths: list[Path]) -> list[float | None]:
    """Score each image at native resolution in exact fp32 through the library's scoring
    engine (decoded and scored exactly as ``qualiclip score`` does); ``None`` for unreadable
    files, with one warning naming the count and the first of them."""
    from qualiclip.scoring import iter_scores

    scores: list[float | None] = []
    failed = []
    for result in iter_scores(paths, model=model, precision="fp32", progress=False):
        if result.error is not None:  # unreadable or missing: skip and count
            failed.append(result.path)
        scores.append(result.score)
    if failed:
        warnings.warn(f"skipped {len(failed)} unreadable image(s) (e.g. {failed[0]})",
                      stacklevel=2)
    return scores


def correlations(predicted: list[float], mos: list[float]) -> dict[str, float]:
    """``{"srcc", "plcc", "krcc", "n"}``: Spearman, Pearson and Kendall correlations.

    PLCC is computed after the customary 4-parameter logistic mapping of the predictions onto
    the MOS scale (VQEG); with 4 images or fewer, or when that fit fails, it is the linear PLCC.
    """
    import numpy as np
    from scipy import optimize, stats

    if len(predicted) < 3:
        raise ValueError(f"need at least 3 scored images to correlate, got {len(predicted)}")
    x, y = np.asarray(predicted, dtype=float), np.asarray(mos, dtype=float)
    srcc = float(stats.spearmanr(x, y).statistic)
    krcc = float(stats.kendalltau(x, y).statistic)
    linear = float(stats.pearsonr(x, y).statistic)

    def logistic(v: np.ndarray, b1: float, b2: float, b3: float, b4: float) -> np.ndarray:
        return (b1 - b2) / (1 + np.exp(-(v - b3) / abs(b4))) + b2

    if len(x) <= 4:
        # A 4-parameter fit needs more points than parameters (scipy raises otherwise).
        return {"srcc": srcc, "plcc": linear, "plcc_linear": linear, "krcc": krcc, "n": len(x)}
    try:
        p0 = [y.max(), y.min(), float(np.mean(x)), float(np.std(x)) or 1.0]
        with warnings.catch_warnings():  # an inexact covariance is irrelevant here
            warnings.simplefilter("ignore", optimize.OptimizeWarning)
            params, _ = optimize.curve_fit(logistic, x, y, p0=p0, maxfev=20000)
        plcc = float(stats.pearsonr(logistic(x, *params), y).statistic)
        if math.isnan(plcc):
            plcc = linear
    except (RuntimeError, ValueError):
        plcc = linear
    return {"srcc": srcc, "plcc": plcc, "plcc_linear": linear, "krcc": krcc, "n": len(x)}
