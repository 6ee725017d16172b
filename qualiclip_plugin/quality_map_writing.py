"""Quality maps into a dataset: one ``fo.Heatmap`` field per sample.

The map is the library's (:mod:`qualiclip.quality_maps`): ``(h, w)`` in [0, 1] at about 1/32 of
the image size, higher = better; the App stretches it over the image. It is a local score for
comparing regions of one image, not a calibrated measurement.
"""

from __future__ import annotations

from collections.abc import Iterator

import fiftyone as fo

#: Samples written per ``set_values`` call: bounds memory and what an interruption loses.
CHUNK = 256


def write_quality_maps(collection: fo.core.collections.SampleCollection, model,
                       field: str = "quality_map", max_side: int | None = None,
                       ) -> Iterator[tuple[float, str]]:
    """Compute and store a quality map for every sample of ``collection``.

    Yields ``(progress in [0, 1], message)`` after each chunk, so operators can report progress;
    exhaust it to do the work. Unreadable images get ``None`` in ``field``.
    """
    from qualiclip.quality_maps import iter_quality_maps

    ids = collection.values("id")
    paths = collection.values("filepath")
    failed = 0
    for start in range(0, len(ids), CHUNK):
        chunk_ids, chunk_paths = ids[start:start + CHUNK], paths[start:start + CHUNK]
        heatmaps = []
        for result in iter_quality_maps(chunk_paths, model, max_side=max_side):
            if result.map is None:
                failed += 1
                heatmaps.append(None)
            else:
                heatmaps.append(fo.Heatmap(map=result.map, range=[0.0, 1.0]))
        collection.set_values(field, dict(zip(chunk_ids, heatmaps, strict=True)), key_field="id")
        done = start + len(chunk_ids)
        yield done / max(1, len(ids)), f"quality maps: {done}/{len(ids)} ({failed} unreadable)"
