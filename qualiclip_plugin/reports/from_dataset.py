"""The ``--dataset`` source of ``qualiclip report``: a report of a FiftyOne dataset's score field.

The command itself is the library's (:mod:`qualiclip.report.cli`); it finds this function
through the ``qualiclip.report_sources`` entry point, so the library never imports FiftyOne.
"""

from __future__ import annotations

from pathlib import Path

import fiftyone as fo

from qualiclip.report.html import ReportConfig
from qualiclip_plugin.reports.rows import write_collection_report


def write_dataset_report(dataset_name: str, output: Path, field: str = "quality",
                         saved_view: str | None = None, group_by: list[str] | None = None,
                         config: ReportConfig | None = None) -> Path:
    """Write the HTML report of ``field`` on dataset ``dataset_name`` (or its saved view).

    Raises:
        ValueError: no such dataset or saved view, or the field holds no scores (one line).
    """
    if not fo.dataset_exists(dataset_name):
        raise ValueError(f"no FiftyOne dataset named {dataset_name!r}")
    dataset = fo.load_dataset(dataset_name)
    if saved_view and not dataset.has_saved_view(saved_view):
        known = ", ".join(dataset.list_saved_views()) or "none"
        raise ValueError(f"dataset {dataset_name!r} has no saved view {saved_view!r} "
                         f"(saved views: {known})")
    collection = dataset.load_saved_view(saved_view) if saved_view else dataset
    return write_collection_report(collection, output, field=field, group_by=group_by,
                                   config=config or ReportConfig())
