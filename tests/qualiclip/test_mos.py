"""MOS evaluation helpers (``qualiclip.mos``): correlations and the MOS CSV reader."""

from __future__ import annotations

from pathlib import Path

import pytest
from scipy import stats

from qualiclip.mos import correlations, read_mos_csv


def test_correlations_match_scipy():
    pred = [0.1, 0.4, 0.35, 0.8, 0.9, 0.5]
    mos = [1.0, 2.0, 3.0, 4.0, 5.0, 2.5]
    r = correlations(pred, mos)
    assert r["srcc"] == pytest.approx(stats.spearmanr(pred, mos).statistic)
    assert r["krcc"] == pytest.approx(stats.kendalltau(pred, mos).statistic)
    assert r["plcc_linear"] == pytest.approx(stats.pearsonr(pred, mos).statistic)
    assert r["plcc"] >= r["plcc_linear"] - 1e-6  # the logistic fit can only help
    assert r["n"] == 6
    perfect = correlations([1, 2, 3, 4], [10, 20, 30, 40])
    assert perfect["srcc"] == pytest.approx(1) and perfect["krcc"] == pytest.approx(1)
    with pytest.raises(ValueError):
        correlations([1, 2], [1, 2])


@pytest.mark.parametrize("n", [3, 4])
def test_too_few_points_for_the_logistic_fit_give_the_linear_plcc(n):
    """3 or 4 images: the 4-parameter fit is skipped (scipy raised a TypeError for it)."""
    pred, mos = [0.1, 0.5, 0.4, 0.9][:n], [1.0, 2.0, 3.0, 4.0][:n]
    r = correlations(pred, mos)
    assert r["plcc"] == r["plcc_linear"] == pytest.approx(stats.pearsonr(pred, mos).statistic)


def test_read_csv_with_and_without_header(tmp_path):
    (tmp_path / "a.csv").write_text("image,quality,mos\nx.jpg,9,3.5\n/abs/y.png,1,4\n")
    assert read_mos_csv(tmp_path / "a.csv") == [(tmp_path / "x.jpg", 3.5),
                                               (Path("/abs/y.png"), 4.0)]
    (tmp_path / "b.csv").write_text("x.jpg,2\nz.jpg,1.5\n")
    assert read_mos_csv(tmp_path / "b.csv", root="/data") == [(Path("/data/x.jpg"), 2.0),
                                                             (Path("/data/z.jpg"), 1.5)]
    (tmp_path / "c.csv").write_text("path,mos\nx.jpg,good\n")
    with pytest.raises(ValueError, match="not a number"):
        read_mos_csv(tmp_path / "c.csv")


def test_dmos_column_is_negated_with_a_warning(tmp_path):
    (tmp_path / "labels.csv").write_text("image,dmos\na.png,10\nb.png,55.5\n")
    with pytest.warns(UserWarning, match="dmos.*negated"):
        rows = read_mos_csv(tmp_path / "labels.csv")
    assert rows == [(tmp_path / "a.png", -10.0), (tmp_path / "b.png", -55.5)]
