"""score_images: order, per-image errors, same-size batching, budgets, OOM fallback, precision."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from qualiclip import score_images
from qualiclip.images import load_image
from qualiclip.model import QualiCLIP
from qualiclip.prompts import PAIR_NAMES
from qualiclip.scoring import iter_scores
from tests.conftest import make_image


@pytest.fixture()
def mixed_sources(image_folder, tmp_path):
    files = sorted(image_folder.iterdir())
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff garbage")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    return [files[0], broken, files[1], tmp_path / "missing.jpg", *files[2:], empty]


def _alone(model, source):
    with torch.no_grad():
        return model.pair_scores(load_image(source).tensor[None])[0]


@pytest.mark.parametrize("workers", [0, 2])
def test_results_in_input_order_and_errors_cost_nothing(tiny_model, mixed_sources, workers):
    results = score_images(mixed_sources, model=tiny_model, precision="fp32",
                           num_workers=workers, progress=False, batch_size=4)
    assert [r.index for r in results] == list(range(len(mixed_sources)))
    assert [r.path for r in results] == [str(s) for s in mixed_sources]
    errors = {r.path.rsplit("/", 1)[-1]: r.error for r in results if r.error}
    assert set(errors) == {"broken.jpg", "missing.jpg", "empty.png"}
    assert "not found" in errors["missing.jpg"] and "empty" in errors["empty.png"]
    for source, result in zip(mixed_sources, results):
        if result.error:
            assert result.score is None and result.pair_scores == {}
            continue
        expected = _alone(tiny_model, source)
        assert list(result.pair_scores) == list(PAIR_NAMES)
        got = torch.tensor(list(result.pair_scores.values()))
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
        assert result.score == pytest.approx(float(expected.mean()), abs=1e-5)
        image = load_image(source)
        assert (result.width, result.height) == (image.width, image.height)


def test_preprocessing_is_reported(tiny_model, image_folder):
    results = score_images(sorted(image_folder.iterdir()), model=tiny_model, max_side=48,
                           precision="fp32", progress=False)
    info = results.preprocessing
    assert info["max_side"] == 48 and "48" in info["resize"]
    assert info["precision"] == "fp32" and info["weights_sha256"] == \
        tiny_model.weights_info["sha256"]
    assert all(r.width in (96, 64) for r in results)  # original sizes are reported


def test_in_memory_sources(tiny_model):
    import numpy as np
    from PIL import Image

    arr = np.random.default_rng(0).integers(0, 256, (40, 50, 3), np.uint8)
    results = score_images([arr, Image.fromarray(arr), torch.from_numpy(arr).permute(2, 0, 1)
                            / 255.0], model=tiny_model, precision="fp32", progress=False)
    scores = [r.score for r in results]
    assert scores[0] == pytest.approx(scores[1], abs=1e-6)
    assert scores[0] == pytest.approx(scores[2], abs=1e-6)
    assert results[0].path == "<ndarray #0>"


def test_pixel_budget_bounds_batches(tiny_model, tmp_path):
    """With a budget of ~2 images, batches never exceed it; scores are unchanged."""
    sources = [make_image(tmp_path / f"{i}.png", size=(64, 64), seed=i) for i in range(7)]
    seen = []

    class Recording(QualiCLIP):
        def embed(self, x):
            seen.append(x.shape[0])
            return super().embed(x)

    model = _clone_as(Recording, tiny_model)
    budgeted = score_images(sources, model=model, precision="fp32", progress=False,
                            num_workers=0, max_batch_pixels=2 * 64 * 64,
                            backend="torch")  # the hook is in the torch module
    assert max(seen) <= 2 and sum(seen) == 7
    plain = score_images(sources, model=tiny_model, precision="fp32", progress=False)
    assert [r.score for r in budgeted] == pytest.approx([r.score for r in plain], abs=1e-6)


def test_out_of_memory_retries_with_smaller_batches(tiny_model, tmp_path):
    sources = [make_image(tmp_path / f"{i}.png", size=(64, 64), seed=i) for i in range(6)]
    calls = []

    class SmallMemory(QualiCLIP):
        """Behaves like a device that can only hold one image at a time."""

        def embed(self, x):
            calls.append(x.shape[0])
            if x.shape[0] > 1:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
            return super().embed(x)

    model = _clone_as(SmallMemory, tiny_model)
    results = score_images(sources, model=model, precision="fp32", progress=False,
                           num_workers=0, batch_size=8, backend="torch")  # torch module hook
    assert all(r.error is None for r in results)
    assert calls[0] == 6 and calls.count(1) == 6
    plain = score_images(sources, model=tiny_model, precision="fp32", progress=False)
    assert [r.score for r in results] == pytest.approx([r.score for r in plain], abs=1e-6)


def test_streaming_yields_early_results_before_the_end(tiny_model, tmp_path, monkeypatch):
    """The first result arrives while most images are still undecoded: ``iter_scores`` streams
    rather than collecting everything first. With ``num_workers=0`` every file is decoded in this
    process, through PIL's ``Image.open``, so counting its calls tells how far decoding got."""
    from PIL import Image as PILImage

    sources = [make_image(tmp_path / f"{i}.png", size=(64, 48 + (i % 2) * 16), seed=i)
               for i in range(40)]
    opened = []
    real_open = PILImage.open

    def recording_open(fp, *args, **kwargs):
        opened.append(Path(fp).name)
        return real_open(fp, *args, **kwargs)

    monkeypatch.setattr(PILImage, "open", recording_open)
    results = iter_scores(sources, model=tiny_model, batch_size=2, num_workers=0, progress=False)
    first = next(results)
    decoded_at_first = len(opened)
    # Two sizes alternate, so the first batch of 2 (images 0 and 2) is full after 3 decodes.
    assert first.index == 0 and first.error is None
    assert decoded_at_first == 3, opened
    rest = list(results)
    assert [r.index for r in rest] == list(range(1, 40))
    assert len(opened) == 40


def test_auto_precision_is_within_tolerance_of_fp32(tiny_model, image_folder):
    """"auto" resolves as documented for this machine and stays within 0.01 of fp32 (on a CPU
    without fast bf16 "auto" is fp32: the bf16 test below covers bf16 itself)."""
    from qualiclip.precision import cpu_has_fast_bf16, resolve_precision

    assert resolve_precision("auto", torch.device("cpu")) == (
        "bf16" if cpu_has_fast_bf16() else "fp32")
    sources = sorted(image_folder.iterdir())
    exact = score_images(sources, model=tiny_model, precision="fp32", progress=False)
    fast = score_images(sources, model=tiny_model, precision="auto", progress=False)
    for a, b in zip(exact, fast):
        assert abs(a.score - b.score) < 0.01


def test_bf16_on_cpu_is_within_tolerance_of_fp32_and_really_runs(tiny_model, image_folder):
    """bf16 requested explicitly runs bf16 autocast on any x86 CPU (slowly where it has no bf16
    units): scores within the documented 0.01 of fp32 (qualiclip/precision.py), yet not all
    identical to fp32's, which proves the image tower did not quietly run in fp32."""
    sources = sorted(image_folder.iterdir())
    exact = score_images(sources, model=tiny_model, device="cpu", precision="fp32",
                         num_workers=0, progress=False)
    bf16 = score_images(sources, model=tiny_model, device="cpu", precision="bf16",
                        num_workers=0, progress=False)
    assert all(r.error is None for r in exact + bf16)
    assert max(abs(a.score - b.score) for a, b in zip(exact, bf16)) < 0.01
    differences = [abs(a.pair_scores[k] - b.pair_scores[k])
                   for a, b in zip(exact, bf16) for k in PAIR_NAMES]
    assert max(differences) > 1e-5, "bf16 gave fp32's exact pair scores: autocast did not run"


def test_bad_arguments(tiny_model, image_folder):
    sources = sorted(image_folder.iterdir())
    with pytest.raises(ValueError, match="precision"):
        score_images(sources, model=tiny_model, precision="fp8", progress=False)
    with pytest.raises(ValueError, match="fp16"):
        score_images(sources, model=tiny_model, precision="fp16", device="cpu", progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        score_images(sources, model=tiny_model, batch_size=0, progress=False)
    with pytest.raises(ValueError, match="max_side"):
        score_images(sources, model=tiny_model, max_side=4, progress=False)


def _clone_as(cls, model: QualiCLIP) -> QualiCLIP:
    clone = cls(model.visual, model.prompt_features)
    clone.weights_info = dict(model.weights_info)
    return clone.eval()


def test_jpeg_byte_path_decodes_like_pil(tmp_path):
    """The nvJPEG path (exercised here with torchvision's CPU decoder) applies EXIF orientation
    and matches PIL's decode to within JPEG IDCT differences; non-JPEGs take the normal path."""
    from qualiclip.gpu_jpeg import decode_jpeg_on_gpu
    from qualiclip.scoring import _DecodeDataset

    image = Image.fromarray(
        (np.random.default_rng(0).random((40, 60, 3)) * 255).astype(np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6
    jpeg = tmp_path / "rot.jpg"
    image.save(jpeg, quality=95, exif=exif.tobytes())
    png = make_image(tmp_path / "p.png")
    dataset = _DecodeDataset([jpeg, png], max_side=None, jpeg_bytes=True)
    assert dataset[0].tensor.ndim == 1 and dataset[1].tensor.ndim == 3
    decoded = decode_jpeg_on_gpu(dataset[0].tensor, str(jpeg), torch.device("cpu"))
    reference = load_image(jpeg, as_uint8=True).tensor
    assert decoded.shape == reference.shape == (3, 60, 40)
    assert (decoded.float() - reference.float()).abs().mean() < 2.0


def test_jpeg_byte_path_leaves_truncated_and_oversized_files_to_the_cpu_reader(
        tmp_path, monkeypatch):
    """nvJPEG may decode a truncated JPEG without complaint and has no decompression-bomb guard,
    so such files take the CPU reader, which reports them like every other path does."""
    from qualiclip.scoring import _DecodeDataset

    image = Image.fromarray((np.random.default_rng(1).random((64, 64, 3)) * 255).astype(np.uint8))
    whole = tmp_path / "whole.jpg"
    image.save(whole, quality=90)
    data = whole.read_bytes()
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(data[: len(data) * 2 // 3])
    dataset = _DecodeDataset([whole, cut], max_side=None, jpeg_bytes=True)
    assert dataset[0].tensor.ndim == 1  # bytes for the GPU decoder
    assert dataset[1].tensor is None and "cut.jpg" in dataset[1].error

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 64 * 64 // 4)  # whole.jpg is now "too big"
    refused = _DecodeDataset([whole], None, jpeg_bytes=True)[0]
    assert refused.tensor is None and "decompression-bomb" in refused.error


def test_in_memory_sources_are_read_in_process(tiny_model, monkeypatch):
    """Arrays and tensors need no decoding: no worker processes by default (and never for GPU
    tensors, which worker processes cannot read)."""
    import qualiclip.scoring as scoring

    seen = []
    real_loader = scoring.DataLoader

    def recording_loader(*args, **kwargs):
        seen.append(kwargs["num_workers"])
        return real_loader(*args, **kwargs)

    monkeypatch.setattr(scoring, "DataLoader", recording_loader)
    arrays = [np.random.default_rng(i).random((40, 48, 3), dtype=np.float32) for i in range(20)]
    results = scoring.score_images(arrays, model=tiny_model, precision="fp32", progress=False)
    assert seen == [0] and all(r.error is None for r in results)


def test_size_buckets_bound_the_pixels_waiting():
    """Every image its own size (nothing ever fills a batch): the pixels waiting stay under the
    cap, every image comes out exactly once, and same-size images still share batches."""
    from qualiclip.inference import DecodedImage
    from qualiclip.size_buckets import SizeBuckets

    buckets = SizeBuckets(batch_size=32, max_batch_pixels=10_000, max_lag=10_000,
                          max_pending_pixels=20_000)
    batches, peak = [], 0
    sizes = [(40 + i, 50) for i in range(60)] + [(64, 64)] * 3
    for index, (h, w) in enumerate(sizes):
        batches += buckets.add(DecodedImage(index, f"im{index}", torch.zeros(3, h, w), w, h))
        assert buckets.pending_pixels <= 20_000
        peak = max(peak, buckets.pending_pixels)
    batches += buckets.drain()
    assert buckets.pending_pixels == 0 and peak > 10_000
    assert sorted(item.index for batch in batches for item in batch) == list(range(len(sizes)))
    assert all(len({item.shape for item in batch}) == 1 for batch in batches)
    assert [len(b) for b in batches if b[0].shape == (3, 64, 64)] == [2, 1]


def _float_tiff(path, bad=None):
    pixels = np.random.default_rng(0).uniform(0, 1, (40, 48)).astype(np.float32)
    if bad is not None:
        pixels[5, 6] = bad
    Image.fromarray(pixels, mode="F").save(path)
    return path


@pytest.mark.parametrize("workers", [0, 2])
def test_nan_pixels_are_a_per_file_error_not_a_score(tiny_model, tmp_path, workers):
    sources = [_float_tiff(tmp_path / "good.tif"), _float_tiff(tmp_path / "nan.tif", np.nan),
               _float_tiff(tmp_path / "inf.tif", np.inf), _float_tiff(tmp_path / "good2.tif")]
    results = score_images(sources, model=tiny_model, precision="fp32", num_workers=workers,
                           progress=False)
    for bad in results[1:3]:
        name = bad.path.rsplit("/", 1)[-1]
        assert bad.score is None and bad.pair_scores == {}
        assert bad.error == f"{name}: non-finite pixel values (NaN/inf) in the image"
    assert results[0].error is None and results[3].error is None
    assert np.isfinite(results[0].score) and results[0].score == pytest.approx(results[3].score)


def _nan_for_black_images(model, monkeypatch):
    """Make ``model`` return NaN features for all-black inputs (as corrupt weights would for
    every image), leaving the other rows of a batch alone."""
    original = model.embed

    def embed(x):
        out = original(x)
        black = x.flatten(1).amax(dim=1) == 0
        return torch.where(black[:, None], torch.full_like(out, float("nan")), out)

    monkeypatch.setattr(model, "embed", embed)


def test_non_finite_model_output_is_an_error_and_batch_mates_keep_their_scores(
        tiny_model, monkeypatch):
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (40, 48, 3), np.uint8), np.zeros((40, 48, 3), np.uint8),
              rng.integers(0, 256, (40, 48, 3), np.uint8)]
    expected = score_images(images, model=tiny_model, precision="fp32", progress=False)
    _nan_for_black_images(tiny_model, monkeypatch)
    batches = []
    original_score = tiny_model.pair_scores_from_features
    monkeypatch.setattr(tiny_model, "pair_scores_from_features",
                        lambda f: batches.append(len(f)) or original_score(f))
    results = score_images(images, model=tiny_model, precision="fp32", progress=False,
                           batch_size=4, backend="torch")  # the NaN hook is in the torch module
    assert batches == [3]  # one batch: the bad image's mates were scored with it
    bad = results[1]
    assert bad.score is None and bad.pair_scores == {}
    assert bad.error == ("<ndarray #1>: the model returned a non-finite score (NaN/inf): the "
                         "weights may be corrupt")
    for i in (0, 2):
        assert results[i].error is None
        assert results[i].score == pytest.approx(expected[i].score, abs=1e-6)
        assert results[i].pair_scores == pytest.approx(expected[i].pair_scores, abs=1e-6)


def test_nonfinite_error_tells_bad_pixels_from_a_bad_model():
    from qualiclip.inference import nonfinite_error

    finite = torch.rand(7)
    nan = finite.clone()
    nan[2] = float("inf")
    image = torch.rand(3, 8, 8)
    assert nonfinite_error("/x/a.png", finite, image) is None
    assert nonfinite_error("/x/a.png", nan, image).startswith(
        "a.png: the model returned a non-finite score")
    image[0, 1, 1] = float("nan")
    assert nonfinite_error("/x/a.png", nan, image) == \
        "a.png: non-finite pixel values (NaN/inf) in the image"


def test_quality_maps_with_non_finite_cells_are_errors(tiny_model, monkeypatch):
    from qualiclip.quality_maps import compute_quality_maps

    good = torch.rand(3, 64, 64)
    nan_pixel = good.clone()
    nan_pixel[1, 3, 3] = float("nan")
    maps = compute_quality_maps([good, nan_pixel, torch.zeros(3, 64, 64)], tiny_model)
    assert maps[0].error is None and np.isfinite(maps[0].map).all()
    assert maps[1].map is None and maps[1].error == \
        "image: non-finite pixel values (NaN/inf) in the image"
    assert maps[2].error is None
    original = tiny_model.quality_map
    monkeypatch.setattr(tiny_model, "quality_map", lambda x: original(x) * float("nan"))
    [broken] = compute_quality_maps([good], tiny_model)
    assert broken.map is None and "the model returned a non-finite score" in broken.error
