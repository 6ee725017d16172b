"""Quality maps into a dataset: one ``fo.Heatmap`` field per sample, and why others have none.

The map is the library's (:mod:`qualiclip.quality_maps`): ``(h, w)`` in [0, 1] at about 1/32 of
the image size, higher = better; the App stretches it over the image. It is a local score for
comparing regions of one image, not a calibrated measurement, so each heatmap's ``range`` is that
map's own ``[min, max]`` (:func:`display_range`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import fiftyone as fo
import numpy as np

#: Samples written per ``set_values`` call: bounds memory and what an interruption loses.
CHUNK = 256
#: Unreadable files named in progress lines and the summary (all are in the error field).
NAMED = 10


def write_quality_maps(collection: fo.core.collections.SampleCollection, model,
                       field: str = "quality_map", max_side: int | None = None,
                       ) -> Iterator[tuple[float, str, dict[str, Any]]]:
    """Compute and store a quality map for every sample of ``collection``.

    Unreadable images get ``None`` in ``field`` and the reason (file name first) in
    ``<field>_error``; readable ones get their map and a cleared error.

    Yields:
        ``(progress in [0, 1], message, summary so far)`` after each chunk, so operators can
        report progress; exhaust it to do the work. The summary holds ``field``, ``mapped``,
        ``unreadable`` (a count), ``unreadable_files`` (the first :data:`NAMED` names) and
        ``error_field``.
    """
    from qualiclip.quality_maps import iter_quality_maps

    error_field = f"{field}_error"
    if collection._dataset.get_field(error_field) is None:
        collection._dataset.add_sample_field(error_field, fo.StringField)
    ids = collection.values("id")
    paths = collection.values("filepath")
    summary: dict[str, Any] = {"field": field, "mapped": 0, "unreadable": 0,
                               "unreadable_files": [], "error_field": error_field}
    for start in range(0, len(ids), CHUNK):
        chunk_ids, chunk_paths = ids[start:start + CHUNK], paths[start:start + CHUNK]
        heatmaps, errors = [], []
        for path, result in zip(chunk_paths, iter_quality_maps(chunk_paths, model,
                                                               max_side=max_side), strict=True):
            if result.map is None:
                summary["unreadable"] += 1
                if len(summary["unreadable_files"]) < NAMED:
                    summary["unreadable_files"].append(os.path.basename(path))
                heatmaps.append(None)
                errors.append(result.error or f"{os.path.basename(path)}: no map computed")
            else:
                summary["mapped"] += 1
                heatmaps.append(fo.Heatmap(map=result.map, range=display_range(result.map)))
                errors.append(None)
        collection.set_values(field, dict(zip(chunk_ids, heatmaps, strict=True)), key_field="id")
        collection.set_values(error_field, dict(zip(chunk_ids, errors, strict=True)),
                              key_field="id")
        done = start + len(chunk_ids)
        yield done / max(1, len(ids)), _progress_line(done, len(ids), summary), summary


def display_range(qmap: np.ndarray) -> list[float]:
    """The ``range`` a heatmap of ``qmap`` is shown with in the App: the map's own
    ``[min, max]`` (widened by 0.005 each way when the map is flat).

    The App draws a heatmap (colour by field, its default) with opacity ``|value| / max(|range|)``.
    With ``[0, 1]`` a map of low local scores, common for small images (a 112x75 image gives a
    2x3 map), is drawn almost transparent and changes no visible pixel; on its own range its
    best cell is opaque, and colour by value uses the whole colour scale for the image's cells.
    """
    low, high = float(np.min(qmap)), float(np.max(qmap))
    if high - low < 1e-6:
        low, high = low - 0.005, high + 0.005
    return [low, high]


def _progress_line(done: int, total: int, summary: dict[str, Any]) -> str:
    line = f"quality maps: {done}/{total}"
    if summary["unreadable"]:
        names = ", ".join(summary["unreadable_files"])
        more = summary["unreadable"] - len(summary["unreadable_files"])
        tail = f" and {more} more" if more else ""
        line += f" ({summary['unreadable']} unreadable: {names}{tail})"
    return line
