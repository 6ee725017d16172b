"""Ray Data scoring (``qualiclip.ray``, ``qualiclip score --engine ray``) on one local Ray
instance (2 CPUs, no dashboard), with the tiny model: the same scores as ``score_images``, one
error row per broken file, WebDataset and Parquet sources, resume after a killed job.

Object stores (``s3://``, ``gs://``) cannot be reached here: URIs are tested through pyarrow's
local file system (``file://``), which is the same code path (``pyarrow.fs.FileSystem.from_uri``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import textwrap
from contextlib import contextmanager
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="the ray extra is not installed")
pa = pytest.importorskip("pyarrow")

from click.testing import CliRunner  # noqa: E402

from qualiclip import score_images  # noqa: E402
from qualiclip.cli import main  # noqa: E402
from qualiclip.prompts import PAIR_NAMES  # noqa: E402
from qualiclip.ray import QualiCLIPScorer, read_results  # noqa: E402
from tests.conftest import make_image  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
SIZES = [(96, 64), (64, 80), (72, 72)]
BROKEN = {"broken.jpg": b"\xff\xd8\xffnot really a jpeg", "empty.png": b"",
          "text.png": b"just text", "cut.jpg": None}


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray instance for the module (starting one takes seconds)."""
    import ray.data

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """60 files: 56 images of three sizes (JPEG, PNG) and 4 broken ones mixed in."""
    folder = tmp_path_factory.mktemp("ray_photos")
    for i in range(56):
        make_image(folder / f"img_{i:02d}.{'jpg' if i % 2 else 'png'}", size=SIZES[i % 3],
                   seed=i)
    for name, data in BROKEN.items():
        if data is None:  # a JPEG cut in half
            data = (folder / "img_01.jpg").read_bytes()[:300]
        (folder / name).write_bytes(data)
    return folder


def _scorer_kwargs(tiny_checkpoint) -> dict:
    return dict(weights=str(tiny_checkpoint), device="cpu", precision="fp32", backend="torch",
                batch_size=8)


@pytest.fixture(scope="module")
def reference(photos, tiny_checkpoint):
    """``score_images`` of every file (fp32, torch): path -> ScoreResult."""
    files = sorted(str(p) for p in photos.iterdir())
    results = score_images(files, weights=str(tiny_checkpoint), device="cpu",
                           precision="fp32", backend="torch", num_workers=0, progress=False)
    return {r.path: r for r in results}


#: How far one attribute score may move when the images share their model batches with other
#: images, or torch runs on another number of threads, than in the reference (fp32 on the CPU):
#: the image tower's embedding moves by a few float32 ulps (~4e-8), which CLIP's logit scale
#: of 100 amplifies; measured up to 2.1e-6 with this tiny model and 1.4e-6 with a full RN50
#: (docs/scale.md, "Exactness"). Another image's score or another preprocessing is >= 1e-3 away.
PAIR_TOLERANCE = 5e-6


def _check_rows(rows: list[dict], reference: dict, key=lambda row: row["path"],
                pair_tolerance: float = PAIR_TOLERANCE) -> None:
    """Every row equals the reference's result for its file (score within 1e-6 in fp32, each
    attribute within ``pair_tolerance``), and every reference file has exactly one row."""
    keys = [key(row) for row in rows]
    assert sorted(keys) == sorted(reference), "one row per input, no more, no fewer"
    for row, name in zip(rows, keys):
        ref = reference[name]
        if ref.error is not None:
            assert row["score"] is None and row["error"], (name, row)
            # The same reason, after the row's own name (a WebDataset key has no extension).
            assert row["error"].split(": ", 1)[1] == ref.error.split(": ", 1)[1], row["error"]
            continue
        assert row["error"] is None, (name, row["error"])
        assert row["score"] == pytest.approx(ref.score, abs=1e-6)
        for pair in PAIR_NAMES:
            assert row[pair] == pytest.approx(ref.pair_scores[pair], abs=pair_tolerance), pair
        assert (row["width"], row["height"]) == (ref.width, ref.height)


@contextmanager
def _torch_threads(n: int):
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def test_same_batches_and_threads_give_score_images_scores(local_ray, photos, tiny_checkpoint,
                                                           tmp_path):
    """``qualiclip score --engine ray`` with every input in one block and a one-CPU actor batches
    exactly as ``score_images`` does over the same sorted files with the same batch size, on one
    torch thread: then every column, each attribute score included, is within 1e-6."""
    files = sorted(str(p) for p in photos.iterdir())
    with _torch_threads(1):
        reference = {r.path: r for r in score_images(
            files, weights=str(tiny_checkpoint), device="cpu", precision="fp32",
            backend="torch", num_workers=0, progress=False, batch_size=8)}
    out = tmp_path / "out"
    err = _cli([str(photos), "-o", str(out), "--rows-per-block", "64", "--cpus-per-worker", "1"],
               tiny_checkpoint)
    assert "scored 56, failed 4" in err
    rows = read_results(str(out)).to_pylist()
    assert len(read_results(str(out)).column("preprocessing").unique()) == 1  # one actor
    _check_rows(rows, reference, pair_tolerance=1e-6)


def test_actor_threads_follow_its_reserved_cpus(local_ray, tiny_checkpoint):
    """An actor's torch threads are the CPUs Ray reserved for it, even when the worker inherited
    another $OMP_NUM_THREADS (Ray sets it only where the driver had not)."""
    @ray.remote(num_cpus=1, runtime_env={"env_vars": {"OMP_NUM_THREADS": "2"}})
    def threads_in_actor() -> tuple[str, int]:
        import torch

        QualiCLIPScorer(weights=str(tiny_checkpoint), device="cpu", precision="fp32",
                        backend="torch")
        return os.environ["OMP_NUM_THREADS"], torch.get_num_threads()

    assert ray.get(threads_in_actor.remote()) == ("2", 1)


def test_binary_files_score_as_score_images(local_ray, photos, reference, tiny_checkpoint):
    """read_binary_files -> QualiCLIPScorer actors: 56 scores equal score_images', and each of
    the 4 broken files is one error row (its batch mates keep their scores)."""
    ds = ray.data.read_binary_files(str(photos), include_paths=True)
    rows = ds.map_batches(QualiCLIPScorer, compute=ray.data.ActorPoolStrategy(size=1),
                          batch_size=16, fn_constructor_kwargs=_scorer_kwargs(tiny_checkpoint)
                          ).take_all()
    assert len(rows) == 60
    _check_rows(rows, reference)
    errors = {Path(r["path"]).name: r["error"] for r in rows if r["error"]}
    assert sorted(errors) == sorted(BROKEN)
    assert errors["empty.png"] == "empty.png: file is empty"
    assert "not an image file" in errors["text.png"]


def test_webdataset_and_parquet_of_bytes(local_ray, photos, reference, tiny_checkpoint,
                                         tmp_path):
    """The same images as WebDataset samples (``read_webdataset(decoder=None)``: key in
    ``__key__``, bytes under the extension) and as a Parquet column of bytes."""
    files = sorted(photos.iterdir())
    shard = tmp_path / "shard-000.tar"
    with tarfile.open(shard, "w") as tar:
        for path in files:
            tar.add(path, arcname=f"{path.stem}.{path.suffix.lstrip('.')}")
    wds = ray.data.read_webdataset(str(shard), decoder=None)
    rows = wds.map_batches(QualiCLIPScorer, compute=ray.data.ActorPoolStrategy(size=1),
                           batch_size=32, fn_constructor_kwargs=_scorer_kwargs(tiny_checkpoint)
                           ).take_all()
    by_stem = {Path(name).stem: name for name in reference}
    _check_rows(rows, reference, key=lambda row: by_stem[row["path"]])

    table = pa.table({"key": [str(p) for p in files], "data": [p.read_bytes() for p in files]})
    import pyarrow.parquet as pq

    pq.write_table(table, tmp_path / "images.parquet")
    kwargs = _scorer_kwargs(tiny_checkpoint) | {"key_column": "key", "image_column": "data"}
    rows = ray.data.read_parquet(str(tmp_path / "images.parquet")).map_batches(
        QualiCLIPScorer, compute=ray.data.ActorPoolStrategy(size=1), batch_size=20,
        fn_constructor_kwargs=kwargs).take_all()
    _check_rows(rows, reference)


def _cli(args: list[str], tiny_checkpoint) -> str:
    result = CliRunner().invoke(main, ["score", "--engine", "ray", *args, "--weights",
                                       str(tiny_checkpoint), "--precision", "fp32",
                                       "--backend", "torch", "--device", "cpu", "--no-progress",
                                       "--batch-size", "8"])
    assert result.exit_code == 0, result.output
    return result.stderr


def test_cli_folder_uri_and_shard_to_parquet(local_ray, photos, reference, tiny_checkpoint,
                                             tmp_path):
    """``qualiclip score --engine ray``: half the files by folder glob, half as a WebDataset
    shard, the broken ones through a file:// URI; one Parquet dataset with the weights' SHA-256
    and the preprocessing in every row."""
    files = sorted(photos.iterdir())
    shard = tmp_path / "part.tar"
    with tarfile.open(shard, "w") as tar:
        for path in files[:20]:
            if path.name not in BROKEN:
                tar.add(path, arcname=path.name)
    uri_folder = tmp_path / "uri"
    uri_folder.mkdir()
    for name in BROKEN:
        (uri_folder / name).write_bytes((photos / name).read_bytes())
    glob = [str(p) for p in files[20:] if p.name not in BROKEN]
    out = tmp_path / "out"
    err = _cli([*glob, str(shard), f"file://{uri_folder}", "-o", str(out),
                "--rows-per-block", "16"], tiny_checkpoint)
    assert "scored 56, failed 4" in err
    table = read_results(str(out))
    rows = table.to_pylist()

    def key(row):
        path = row["path"]
        if "::" in path:
            return str(photos / path.split("::")[1])
        return str(photos / Path(path.removeprefix("file://")).name)

    _check_rows(rows, reference, key=key)
    assert {r["weights_sha256"] for r in rows} == {_sha(tiny_checkpoint)}
    assert '"precision": "fp32"' in rows[0]["preprocessing"]
    # A rerun finds everything written: nothing is scored twice.
    err = _cli([*glob, str(shard), f"file://{uri_folder}", "-o", str(out)], tiny_checkpoint)
    assert "scored 0, failed 0" in err and "60 already written" in err
    assert read_results(str(out)).num_rows == 60


def _sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_killed_job_rerun_scores_each_input_exactly_once(local_ray, photos, reference,
                                                         tiny_checkpoint, tmp_path):
    """A driver killed (SIGKILL) right after its 2nd Parquet part, with blocks in flight, then
    ``qualiclip score --engine ray`` into the same OUT_DIR: every input exactly once, the
    killed run's parts kept (not rescored)."""
    out = tmp_path / "out"
    script = textwrap.dedent(f"""
        import os, signal, ray
        import qualiclip.ray as qray
        ray.init(address={ray.get_runtime_context().gcs_address!r}, log_to_driver=False)
        inputs = qray.list_inputs([{str(photos)!r}], recursive=False)
        parts = qray.score_to_parquet(inputs, {str(out)!r}, weights={str(tiny_checkpoint)!r},
                                      device="cpu", precision="fp32", backend="torch",
                                      rows_per_block=5, actors=2, num_cpus_per_worker=0.5,
                                      progress=False)
        for n, part in enumerate(parts, 1):
            print("part", part.path, flush=True)
            if n == 2:
                os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=REPO, timeout=240)
    assert proc.returncode == -9, proc.stderr[-3000:]
    first = read_results(str(out))
    assert first.num_rows == 10, "the killed run kept exactly its two finished parts"
    assert not any(name.endswith(".parquet") and not name.startswith("part-")
                   for name in os.listdir(out))
    err = _cli([str(photos), "-o", str(out), "--rows-per-block", "16"], tiny_checkpoint)
    failed = 4 - sum(e is not None for e in first.column("error").to_pylist())
    assert f"scored {50 - failed}, failed {failed}, " in err and "10 already written" in err
    rows = read_results(str(out)).to_pylist()
    _check_rows(rows, reference)  # each of the 60 inputs exactly once, with its score


def _refused(args: list[str], out: Path, env: dict | None = None) -> str:
    """A rerun into ``out`` that must be refused before anything is scored: its one line."""
    result = CliRunner().invoke(main, ["score", "--engine", "ray", *args, "-o", str(out),
                                       "--no-progress"], env=env)
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    assert read_results(str(out)).num_rows == 1, "nothing was written"
    return lines[0]


def test_resume_refuses_other_weights_and_settings(local_ray, photos, tiny_checkpoint, tiny_clip,
                                                   tiny_prompt_features, tmp_path):
    """Resuming into an OUT_DIR whose scores were made with other weights, --max-side,
    (resolved) --precision, --backend or attribute columns would mix scores of two scales in
    one column: one line naming the option, nothing scored. The same settings resume."""
    import pyarrow.parquet as pq

    from qualiclip.architecture import TINY_TEST_CONFIG
    from qualiclip.checkpoint import write_checkpoint
    from qualiclip.ray import SettingsMismatch, part_files, score_to_parquet

    out = tmp_path / "out"
    image = str(photos / "img_00.png")
    _cli([image, "-o", str(out)], tiny_checkpoint)  # fp32, torch, native resolution
    same = ["--weights", str(tiny_checkpoint), "--device", "cpu", "--batch-size", "8"]
    other = write_checkpoint(tmp_path / "other.pth", model_config=TINY_TEST_CONFIG,
                             state_dict=tiny_clip.state_dict(),
                             prompt_features=-tiny_prompt_features)
    line = _refused([image, "--weights", str(other)], out)
    assert "holds scores made with other weights" in line
    fp32 = ["--precision", "fp32", "--backend", "torch"]
    line = _refused([image, *same, *fp32, "--max-side", "64"], out)
    assert "holds scores made with native resolution (this run: --max-side 64)" in line
    line = _refused([image, *same, "--precision", "bf16", "--backend", "torch"], out)
    assert "--precision fp32 (this run: --precision bf16)" in line
    # 'auto' is compared as it resolves: bf16 on a CPU with native bf16 (forced here).
    line = _refused([image, *same, "--precision", "auto", "--backend", "torch"], out,
                    env={"QUALICLIP_CPU_BF16": "1"})
    assert "--precision fp32 (this run: --precision bf16)" in line
    pytest.importorskip("onnxruntime")
    line = _refused([image, *same, "--precision", "fp32", "--backend", "onnxruntime"], out)
    assert "--backend torch (this run: --backend onnxruntime)" in line
    # ... and as fp32 where the CPU has no native bf16: the same settings, so it resumes.
    result = CliRunner().invoke(main, ["score", "--engine", "ray", image, *same, "--precision",
                                       "auto", "--backend", "torch", "-o", str(out),
                                       "--no-progress"], env={"QUALICLIP_CPU_BF16": "0"})
    assert result.exit_code == 0 and "1 already written" in result.stderr, result.output

    # A folder whose attribute columns differ (a checkpoint with its own prompt pairs).
    (part,) = part_files(str(out))
    table = pq.read_table(part)
    pq.write_table(table.rename_columns([f"my_{n}" if n == "good_photo" else n
                                         for n in table.column_names]), part)
    line = _refused([image, *same, *fp32], out)
    assert "attribute columns my_good_photo" in line and "(this run: attribute columns " \
        "good_photo" in line

    # Actors resolving settings otherwise than the folder holds (nodes with and without native
    # bf16): the block is refused before it is written.
    fresh = tmp_path / "fresh"
    inputs = qray_inputs([image])
    held = {"max_side": None, "precision": "bf16", "backend": "torch",
            "attributes": list(PAIR_NAMES)}
    with pytest.raises(SettingsMismatch, match="--precision bf16 .this run: --precision fp32"):
        list(score_to_parquet(inputs, str(fresh), weights=str(tiny_checkpoint), device="cpu",
                              precision="fp32", backend="torch", progress=False,
                              settings=held))
    assert part_files(str(fresh)) == []


def qray_inputs(paths: list[str]):
    from qualiclip.ray import list_inputs

    return list_inputs(paths, recursive=False)
