"""Back into FiftyOne: a ``qualiclip score --engine ray`` Parquet result imported into a
dataset (``import_scores`` and ``qualiclip plugin import-scores``) ends as the scoring
operator's fields: same values, same run record, same ownership and claim rules."""

from __future__ import annotations

import pytest

ray = pytest.importorskip("ray", reason="the ray extra is not installed")

from click.testing import CliRunner  # noqa: E402

from qualiclip.cli import main  # noqa: E402
from qualiclip.prompts import PAIR_NAMES  # noqa: E402
from qualiclip_plugin.api import compute_image_quality, import_scores  # noqa: E402
from qualiclip_plugin.scoring import claims  # noqa: E402
from qualiclip_plugin.trust import provenance  # noqa: E402
from qualiclip_plugin.trust.errors import RequestError  # noqa: E402


@pytest.fixture(scope="module")
def ray_results(image_files, tiny_checkpoint, tmp_path_factory):
    """The test images scored by the Ray engine (local instance, fp32, torch): OUT_DIR."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    out = tmp_path_factory.mktemp("ray") / "out"
    extra = tmp_path_factory.mktemp("other") / "not_in_dataset.png"
    from tests.conftest import make_image

    make_image(extra, seed=7)
    result = CliRunner().invoke(main, [
        "score", "--engine", "ray", *map(str, image_files), str(extra), "-o", str(out),
        "--weights", str(tiny_checkpoint), "--precision", "fp32", "--backend", "torch",
        "--device", "cpu", "--no-progress", "--rows-per-block", "5"])
    ray.shutdown()
    assert result.exit_code == 0, result.output
    return out


def _fields(dataset, field: str) -> list[tuple]:
    names = [field, f"{field}_error", *(f"{field}_{p}" for p in PAIR_NAMES)]
    return list(zip(*dataset.values(names)))


def test_imported_fields_equal_the_operators(make_dataset, ray_results, tiny_checkpoint):
    """Operator into 'quality', import into 'rayq' of the same dataset: every sample's score,
    attribute scores and error presence agree (fp32, 1e-6), the run records agree on what
    makes scores comparable, and flags, index and summary are the runner's."""
    dataset = make_dataset()
    compute_image_quality(dataset, field="quality", weights=str(tiny_checkpoint),
                          device="cpu", precision="fp32", backend="torch", num_workers=0,
                          flag_percent=20, flag_field="quality_low", flag_tag="low_q")
    summary = import_scores(dataset, str(ray_results), field="rayq", flag_percent=20,
                            flag_field="rayq_low", flag_tag="low_r", chunk_size=4)
    assert summary["scored"] == len(dataset) - 1 and summary["failed"] == 1
    assert summary["rows_not_matched"] == 1  # the extra image that is no sample
    for op, imp in zip(_fields(dataset, "quality"), _fields(dataset, "rayq")):
        if op[0] is None:
            assert imp[0] is None and imp[1] and op[1]
            assert imp[1].split(": ", 1)[1] == op[1].split(": ", 1)[1]
            continue
        assert imp[1] is None
        assert imp[0] == pytest.approx(op[0], abs=1e-6)
        assert imp[2:] == pytest.approx(op[2:], abs=1e-5)
    assert dataset.values("quality_low") == dataset.values("rayq_low")
    op_rec = provenance.recorded(dataset, "quality")
    imp_rec = provenance.recorded(dataset, "rayq")
    for key in provenance.COMPARABLE_KEYS:
        assert imp_rec[key] == op_rec[key], key
    assert provenance.incompatibility(op_rec, imp_rec) is None
    assert "rayq" in dataset.list_indexes()
    assert claims.holder(dataset, "rayq") is None  # the claim was released
    # Resume, as the operator's: a second import writes only the samples without a score (the
    # broken file's error again), every other row matches no sample left to do.
    again = import_scores(dataset, str(ray_results), field="rayq")
    assert (again["scored"], again["failed"], again["rows_not_matched"]) == (0, 1, len(dataset))


def test_import_follows_ownership_and_claims(make_dataset, ray_results):
    """A user's field is refused before any write; a field another run holds is refused."""
    import fiftyone as fo

    dataset = make_dataset()
    dataset.add_sample_field("mine", fo.FloatField)
    sample = dataset.first()
    sample["mine"] = 0.5
    sample.save()
    with pytest.raises(RequestError, match="mine"):
        import_scores(dataset, str(ray_results), field="mine")
    assert dataset.count("mine") == 1
    claims.claim(dataset, "busy", claims.new_owner(), label="run into 'busy'")
    with pytest.raises(RequestError):
        import_scores(dataset, str(ray_results), field="busy")
    assert "busy" not in dataset.get_field_schema()


def test_cli_import_scores(make_dataset, ray_results, tmp_path):
    """`qualiclip plugin import-scores DATASET OUT_DIR`: fields written, one-line refusals."""
    dataset = make_dataset()
    result = CliRunner().invoke(main, ["plugin", "import-scores", dataset.name,
                                       str(ray_results), "--field", "q"])
    assert result.exit_code == 0, result.output
    assert "imported" in result.output and dataset.count("q") == len(dataset) - 1
    empty = tmp_path / "empty"
    empty.mkdir()
    result = CliRunner().invoke(main, ["plugin", "import-scores", dataset.name, str(empty),
                                       "--field", "q2"])
    assert result.exit_code == 1 and "holds no results" in result.output
    assert "Traceback" not in result.output
