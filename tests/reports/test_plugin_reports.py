"""The plugin side: a dataset field -> rows/report (with label, tag and split breakdown), the
report and quality-map operators through ``foo.execute_operator``, and ``report --dataset``."""

from __future__ import annotations

import html
import re
import uuid

import numpy as np
import pytest
from click.testing import CliRunner

from qualiclip.prompts import PAIR_NAMES
from tests.conftest import make_image

PLUGIN = "@qualiclip/qualiclip"


@pytest.fixture(scope="module", autouse=True)
def plugin_link():
    from qualiclip_plugin.install import install_plugin

    return install_plugin()


@pytest.fixture()
def scored_dataset(tmp_path):
    """10 images with known scores, pair scores, tags, a split field and a class label; one
    sample unscored (its error field set). Persistent, deleted afterwards."""
    import fiftyone as fo

    dataset = fo.Dataset(f"qualiclip-reports-{uuid.uuid4().hex[:10]}", persistent=True)
    scores = [0.91, 0.12, 0.55, 0.33, 0.78, 0.05, 0.67, 0.44, 0.29, None]
    samples = []
    for i, score in enumerate(scores):
        path = make_image(tmp_path / f"s{i}.jpg", size=(64, 48), seed=i)
        sample = fo.Sample(filepath=str(path), split="train" if i < 6 else "val",
                           tags=["night"] if i % 3 == 0 else [],
                           ground_truth=fo.Classification(label="cat" if i % 2 else "dog"))
        if score is not None:
            sample["quality"] = score
            for k, pair in enumerate(PAIR_NAMES):
                sample[f"quality_{pair}"] = round(score + 0.01 * k, 3)
        else:
            sample["quality_error"] = "cannot identify image file"
        samples.append(sample)
    dataset.add_samples(samples)
    yield dataset
    if fo.dataset_exists(dataset.name):
        fo.delete_dataset(dataset.name)


def test_rows_from_collection_reads_scores_and_groups(scored_dataset):
    from qualiclip_plugin.report import default_group_fields, rows_from_collection

    assert default_group_fields(scored_dataset) == ["tags", "split", "ground_truth"]
    rows = rows_from_collection(scored_dataset)
    by_path = {r.path: r for r in rows}
    first = by_path[scored_dataset.first().filepath]
    assert first.score == 0.91
    assert first.pair_scores == {p: round(0.91 + 0.01 * k, 3) for k, p in enumerate(PAIR_NAMES)}
    assert first.groups == {"tags": ("night",), "split": ("train",), "ground_truth": ("dog",)}
    last = by_path[scored_dataset.last().filepath]
    assert last.score is None and last.error == "cannot identify image file"
    assert rows[1].groups["tags"] == ("(none)",)

    view = scored_dataset.match_tags("night")
    assert [r.path for r in rows_from_collection(view, group_by=["split"])] == \
        view.values("filepath")
    with pytest.raises(ValueError, match="no field 'nope'"):
        rows_from_collection(scored_dataset, field="nope")


def test_report_operator_writes_the_view_report(scored_dataset, tmp_path):
    import fiftyone.operators as foo

    out = tmp_path / "report.html"
    result = foo.execute_operator(f"{PLUGIN}/write_quality_report", ctx=dict(
        view=scored_dataset.view(), params=dict(field="quality", output=str(out), n=3,
                                                threshold=0.4)))
    assert result.error is None, result.error
    assert result.result["path"] == str(out)
    page = out.read_text()
    paths = scored_dataset.values("filepath")
    scores = scored_dataset.values("quality")
    lowest = [p for _, p in sorted((s, p) for s, p in zip(scores, paths, strict=True)
                                   if s is not None)][:3]
    worst_html = page[page.index('id="worst"'):page.index('id="best"')]
    assert [html.unescape(p) for p in re.findall(r'data-path="([^"]+)"', worst_html)] == lowest
    # breakdown: dog/cat counts of scored samples, flag count
    table = page[page.index('data-key="ground_truth"'):]
    table = table[:table.index("</table>")]
    counts = dict(re.findall(r'data-value="(\w+)">.*?class="count">(\d+)<', table))
    labels = scored_dataset.values("ground_truth.label")
    assert counts == {lab: str(sum(1 for s, lb in zip(scores, labels, strict=True)
                                   if lb == lab and s is not None)) for lab in ("cat", "dog")}
    flagged = re.search(r'data-key="flagged">.*?<td>(\d+)</td>', page).group(1)
    assert int(flagged) == sum(1 for s in scores if s is not None and s < 0.4)


def test_report_cli_from_dataset(scored_dataset, tmp_path):
    from qualiclip.cli import main

    out = tmp_path / "cli.html"
    result = CliRunner().invoke(main, ["report", "--dataset", scored_dataset.name, "--field",
                                       "quality", "--group-by", "split", "-o", str(out)])
    assert result.exit_code == 0, result.output
    page = out.read_text()
    assert 'data-key="split"' in page and 'data-key="ground_truth"' not in page
    missing = CliRunner().invoke(main, ["report", "--dataset", "no-such-dataset-xyz"])
    assert missing.exit_code != 0 and "no FiftyOne dataset" in missing.output


def test_quality_maps_operator_writes_heatmaps(scored_dataset, tiny_checkpoint, tmp_path):
    import fiftyone as fo
    import fiftyone.operators as foo

    from qualiclip import load_model
    from qualiclip.quality_maps import compute_quality_maps

    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    scored_dataset.add_sample(fo.Sample(filepath=str(broken)))
    result = foo.execute_operator(f"{PLUGIN}/compute_quality_maps", ctx=dict(
        view=scored_dataset.view(), params=dict(field="qmap", weights=str(tiny_checkpoint),
                                                device="cpu")))
    assert result.error is None, result.error
    model = load_model(tiny_checkpoint, device="cpu")
    heatmaps = scored_dataset.values("qmap")
    expected = compute_quality_maps(scored_dataset.values("filepath"), model)
    assert len(heatmaps) == 11
    for heatmap, ref in zip(heatmaps, expected, strict=True):
        if ref.map is None:
            assert heatmap is None
            continue
        assert isinstance(heatmap, fo.Heatmap)
        assert list(heatmap.range) == [0.0, 1.0]
        np.testing.assert_allclose(heatmap.map, ref.map, atol=1e-6)
    assert heatmaps[-1] is None
