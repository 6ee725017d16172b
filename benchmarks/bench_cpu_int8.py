"""Fast-mode trial: int8 post-training static quantization of the ONNX export (measured, not
shipped; see docs/backends.md).

The fp32 export of ``QualiCLIP.embed`` (:mod:`qualiclip.backends.export`) is quantized with ONNX
Runtime's ``quantize_static`` (QDQ format, per-channel int8 weights, uint8 activations, MinMax
calibration) on calibration photos: scikit-image's bundled sample photos when scikit-image is
installed (else procedural photo-like images), each also blurred, noised and JPEG-compressed so
the activation ranges cover degraded inputs too, at several sizes. The same QDQ file is run by
ONNX Runtime and by OpenVINO (which executes QDQ graphs in int8). Reported: speed against the fp32
runtimes and torch (interleaved repeats), and the largest |difference| of the quality score and of
the pair scores against torch fp32, on held-out photos at several sizes.

With random weights (the default; nothing can be downloaded here) the score differences say
nothing about the released model: a random network's activations have other ranges and the
scores of random prompts sit elsewhere. Pass ``--weights`` for a real checkpoint.

    python benchmarks/bench_cpu_int8.py
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_cpu_backends import cpu_description, random_rn50_model  # noqa: E402

CALIBRATION_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "brick", "grass")
TEST_PHOTOS = ("immunohistochemistry", "camera", "moon", "gravel")
SIZES = ((224, 224), (480, 640), (640, 480), (333, 500))


def photos(names: tuple[str, ...], seed: int) -> list[Image.Image]:
    """scikit-image sample photos (greyscale ones as RGB), else procedural images."""
    try:
        import skimage.data
    except ImportError:
        skimage = None
    out = []
    for i, name in enumerate(names):
        if skimage is not None:
            array = getattr(skimage.data, name)()
            if array.ndim == 2:
                array = np.stack([array] * 3, -1)
            out.append(Image.fromarray(array[..., :3].astype(np.uint8)))
        else:
            rng = np.random.default_rng(seed + i)
            yy, xx = np.mgrid[0:512, 0:512] / 512.0
            img = np.stack([xx, yy, 0.5 + 0.5 * np.sin(20 * xx * yy)], -1)
            img += rng.normal(0, 0.05, img.shape)
            out.append(Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)))
    return out


def degraded(image: Image.Image, rng: np.random.Generator) -> list[Image.Image]:
    """The image, blurred, noised and JPEG-compressed."""
    noisy = np.asarray(image, dtype=np.float32) + rng.normal(0, 20, (*image.size[::-1], 3))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=10)
    return [image, image.filter(ImageFilter.GaussianBlur(3)),
            Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)),
            Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")]


def to_batch(image: Image.Image, size: tuple[int, int]) -> torch.Tensor:
    h, w = size
    array = np.asarray(image.convert("RGB").resize((w, h), Image.BICUBIC), dtype=np.float32)
    return torch.from_numpy(array / 255.0).permute(2, 0, 1)[None].contiguous()


def quantize(fp32_path: Path, int8_path: Path, calibration: list[torch.Tensor]) -> float:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter(calibration)

        def get_next(self):
            x = next(self.items, None)
            return None if x is None else {"images": x.numpy()}

    start = time.perf_counter()
    quantize_static(str(fp32_path), str(int8_path), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax)
    return time.perf_counter() - start


def ort_session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda x: torch.from_numpy(session.run(None, {"images": x.numpy()})[0])


def ov_compiled(path: Path, threads: int):
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(path)), "CPU", {
        "INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32",
        "PERFORMANCE_HINT": "LATENCY"})
    request = compiled.create_infer_request()

    def run(x):
        request.infer({0: x.numpy()})
        return torch.from_numpy(request.get_output_tensor(0).data.copy())
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--weights", default=None, help="default: random full-size RN50")
    args = parser.parse_args()

    from qualiclip.backends.export import ensure_onnx

    threads = torch.get_num_threads()
    if args.weights:
        from qualiclip import load_model

        model = load_model(args.weights, device="cpu")
    else:
        model = random_rn50_model()
    rng = np.random.default_rng(0)
    calibration = [to_batch(im, size)
                   for photo in photos(CALIBRATION_PHOTOS, 0) for im in degraded(photo, rng)
                   for size in ((224, 224), (320, 480))]
    tests = {size: [to_batch(im, size) for photo in photos(TEST_PHOTOS, 100)
                    for im in degraded(photo, rng)[:2]] for size in SIZES}
    with tempfile.TemporaryDirectory() as tmp:
        fp32_path = ensure_onnx(model, folder=tmp)
        int8_path = Path(tmp) / "int8.onnx"
        seconds = quantize(fp32_path, int8_path, calibration)
        print(f"# quantized in {seconds:.0f} s on {len(calibration)} calibration inputs; "
              f"fp32 {fp32_path.stat().st_size / 2**20:.0f} MiB, int8 "
              f"{int8_path.stat().st_size / 2**20:.0f} MiB", flush=True)
        methods = {"torch fp32": lambda x: model.embed(x),
                   "onnxruntime fp32": ort_session(fp32_path, threads),
                   "onnxruntime int8": ort_session(int8_path, threads)}
        try:
            methods["openvino fp32"] = ov_compiled(fp32_path, threads)
            methods["openvino int8"] = ov_compiled(int8_path, threads)
        except ImportError:
            print("# openvino not installed: skipped")
        rows = []
        with torch.no_grad():
            for size, inputs in tests.items():
                ref = torch.cat([model.pair_scores_from_features(model.embed(x))
                                 for x in inputs])
                times = {name: [] for name in methods}
                diffs = {}
                for name, fn in methods.items():
                    got = torch.cat([model.pair_scores_from_features(fn(x)) for x in inputs])
                    diffs[name] = (float((got.mean(-1) - ref.mean(-1)).abs().max()),
                                   float((got - ref).abs().max()))
                for _ in range(args.repeats):
                    for name, fn in methods.items():
                        start = time.perf_counter()
                        for x in inputs[:4]:
                            fn(x)
                        times[name].append(time.perf_counter() - start)
                for name in methods:
                    ratio = statistics.median(
                        [b / t for b, t in zip(times["torch fp32"], times[name])])
                    ips = statistics.median([4 / t for t in times[name]])
                    rows.append((size, name, ips, ratio, *diffs[name]))
                    print(f"# {size} {name}: {ips:.2f} img/s x{ratio:.2f} "
                          f"score diff {diffs[name][0]:.4f}", flush=True)
    cpu = cpu_description()
    print(f"\nCPU: {cpu['model']} ({cpu['flags']}), {threads} threads; {args.repeats} "
          f"interleaved repeats; {len(TEST_PHOTOS) * 2} held-out inputs per size; weights: "
          f"{args.weights or 'random RN50 (score differences not representative)'}\n")
    print("| input (WxH) | method | images/s | speed-up vs torch fp32 | max abs score diff | "
          "max abs pair-score diff |")
    print("|---|---|---|---|---|---|")
    for (h, w), name, ips, ratio, score_diff, pair_diff in rows:
        print(f"| {w}x{h} | {name} | {ips:.2f} | {ratio:.2f}x | {score_diff:.4f} | "
              f"{pair_diff:.4f} |")


if __name__ == "__main__":
    main()
