"""Scoring with a local checkpoint in the real App: open the operator from the operator browser,
choose the local checkpoint in the Weights dropdown, run, see the new fields in the sidebar, sort
the grid by the score both ways, and find the checkpoint preselected the next time.

The App server (``conftest.py``) may offer only the checkpoint copy in its weights folder.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from qualiclip.prompts import PAIR_NAMES
from tests.app.conftest import APP_CHECKPOINT_NAME
from tests.qualiclip_plugin.test_operator import TOL


def _names(texts: list[str]) -> list[str]:
    """The image file names shown on grid tiles (the tiles show ``filepath``)."""
    names = []
    for text in texts:
        found = re.findall(r"app_\d+\.(?:png|jpg)", text)
        names.append(found[0] if found else f"<no file name in tile text {text!r}>")
    return names


def _wait_for_grid(app, expected: list[str], what: str, timeout: float = 30) -> None:
    deadline = time.time() + timeout
    while True:
        shown = _names(app.grid_texts())
        if shown == expected:
            return
        if time.time() > deadline:
            raise AssertionError(f"grid is not {what}:\n shown    {shown}\n expected {expected}")
        time.sleep(0.25)


def test_run_with_local_checkpoint_then_fields_in_sidebar_and_sort_by_score(app, app_dataset):
    from playwright.sync_api import expect

    dataset, reference = app_dataset
    by_name = {Path(p).name: s for p, s in reference.items()}
    inserted = [Path(s.filepath).name for s in dataset.select_fields()]
    app.open_dataset(dataset.name)

    with app.step("no quality fields before the run; the grid shows the file names"):
        expect(app.sidebar_entry("quality")).to_have_count(0)
        expect(app.page.locator("[data-cy=looker]")).to_have_count(len(dataset))
        app.show_in_grid("filepath")
        _wait_for_grid(app, inserted, "in insertion order")

    app.open_operator()
    with app.step("choose the local checkpoint, exact fp32 (as the reference), and run"):
        app.choose_weights(APP_CHECKPOINT_NAME)
        # "auto" is bf16 on CPUs with native bf16: up to 2e-4 off the fp32 reference scores
        # here, more than TOL and than some gaps between them (the sort order would change).
        app.choose("Precision", "fp32")
        expect(app.error_box()).to_have_count(0)
        summary = app.run_and_wait()
        expect(summary).to_contain_text(re.compile(rf"Scored in this run:\s*{len(dataset)}(?!\d)"))
        expect(summary).to_contain_text(re.compile(r"Failed \(see the error field\):\s*0(?!\d)"))
        summary.get_by_role("button", name="Done").click()
        expect(summary).to_have_count(0)

    with app.step("the new fields appear in the sidebar without reloading the page"):
        for field in ["quality", "quality_error", *(f"quality_{n}" for n in PAIR_NAMES)]:
            expect(app.sidebar_entry(field), f"no {field!r} in the sidebar").to_have_count(
                1, timeout=30_000)

    dataset.reload()
    stored = {Path(s.filepath).name: s["quality"] for s in dataset.select_fields("quality")}
    for name, score in stored.items():
        assert score == pytest.approx(by_name[name], abs=TOL), name
    ascending = sorted(stored, key=stored.get)
    assert ascending != inserted and ascending[::-1] != inserted  # the sort must reorder

    with app.step("sort the grid by quality, ascending: lowest score first"):
        app.sort_grid_by("quality")
        _wait_for_grid(app, ascending, "sorted by quality, ascending")
        assert by_name[ascending[0]] <= min(by_name.values()) + TOL

    with app.step("reverse the sort: highest score first"):
        app.toggle_sort_direction("Ascending")
        _wait_for_grid(app, ascending[::-1], "sorted by quality, descending")
        assert by_name[ascending[-1]] >= max(by_name.values()) - TOL

    app.open_operator()
    with app.step("the form now defaults to the weights used last on the dataset"):
        expect(app.form_field("Weights")).to_contain_text(APP_CHECKPOINT_NAME)
        expect(app.error_box()).to_have_count(0)
        expect(app.execute_button()).to_be_enabled()
