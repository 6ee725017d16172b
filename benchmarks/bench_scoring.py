"""Throughput of ``qualiclip.score_images`` against a naive loop like the official example.

The naive loop does what the authors' example does for each image: open with PIL, convert to
RGB, ToTensor, score one image at a time (``torch.no_grad``), in fp32 on CPU and under fp16
autocast on CUDA, as that example does. Both use the same weights in the same process; every
score is compared with an exact fp32 score of the same image (on CUDA: a separate, untimed
one-at-a-time pass without autocast and with TF32 off).

No weights can be downloaded here, so by default a randomly initialised full-size RN50 QualiCLIP
is written to a temp checkpoint and loaded through the real loading path (speed does not depend
on the weight values; the accuracy check is then a check of numerics, not of quality). Pass
``--weights qualiclip`` (or a path) to use real weights.

    python benchmarks/bench_scoring.py                       # CPU, 640x480 / 480x640 JPEGs
    python benchmarks/bench_scoring.py --precisions fp32 --backends torch,onnxruntime \
        --workers-list 0,1                                   # exact mode per backend/workers
    python benchmarks/bench_scoring.py --device cuda --width 1024 --height 768 --n-images 256
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def make_jpegs(folder: Path, n: int, width: int, height: int, seed: int = 0) -> list[Path]:
    """Photo-like JPEGs (gradients, shapes, texture, noise); every other one is portrait."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        w, h = (width, height) if i % 2 == 0 else (height, width)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        img = np.stack([xx / w, yy / h, 0.5 + 0.5 * np.sin(xx / (7 + i % 5))], -1)
        for _ in range(6):
            cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(10, min(w, h) / 3)
            mask = (xx - cx) ** 2 + (yy - cy) ** 2 < r ** 2
            img[mask] = rng.uniform(0, 1, 3)
        img = np.clip(img + rng.normal(0, 0.03, img.shape), 0, 1)
        path = folder / f"img_{i:04d}.jpg"
        Image.fromarray((img * 255).astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def random_rn50_checkpoint(folder: Path) -> Path:
    import torch.nn.functional as F

    from qualiclip.architecture import RN50_CONFIG, build_visual
    from qualiclip.checkpoint import write_checkpoint

    torch.manual_seed(0)
    visual = build_visual(RN50_CONFIG)
    state = {f"visual.{k}": v for k, v in visual.state_dict().items()}
    return write_checkpoint(folder / "rn50_random.pth", model_config=RN50_CONFIG,
                            state_dict=state,
                            prompt_features=F.normalize(torch.randn(14, 1024), dim=-1))


def naive_loop(model, paths: list[Path], device: torch.device,
               precision_context=None) -> list[float]:
    """One image at a time, the way the official example scores an image: PIL decode,
    ``to_tensor``, one forward pass. ``precision_context`` is entered around the loop (the
    official example uses fp16 autocast on CUDA; the exact reference uses strict fp32)."""
    import contextlib

    from torchvision.transforms.functional import to_tensor

    scores = []
    with torch.no_grad(), (precision_context or contextlib.nullcontext()):
        for path in paths:
            image = Image.open(path).convert("RGB")
            x = to_tensor(image).unsqueeze(0).to(device)
            scores.append(float(model(x)[0]))
    if device.type == "cuda":
        torch.cuda.synchronize()
    return scores


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    from qualiclip import load_model, score_images
    from qualiclip.precision import autocast_context

    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--n-images", type=int, default=32)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--weights", default=None, help="default: random RN50 checkpoint")
    parser.add_argument("--precisions", default="auto,fp32")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--batch-sizes", default=None,
                        help="comma-separated batch sizes to try (default: --batch-size)")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--backends", default="torch",
                        help="comma-separated: torch, onnxruntime, auto")
    parser.add_argument("--workers-list", default=None,
                        help="comma-separated decode worker counts to try (default: --workers)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="timed passes per method, interleaved; the best is reported")
    args = parser.parse_args()

    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        paths = make_jpegs(tmp_path, args.n_images, args.width, args.height)
        weights = args.weights or random_rn50_checkpoint(tmp_path)
        model = load_model(weights, device=device)
        # Baseline as the official example runs: fp32 on CPU, fp16 autocast on CUDA. Score
        # differences are measured against exact fp32 (no autocast, TF32 off), untimed.
        if device.type == "cuda":
            baseline_precision = "fp16 autocast"
            baseline_context = lambda: torch.autocast("cuda", dtype=torch.float16)  # noqa: E731
        else:
            baseline_precision, baseline_context = "fp32", lambda: None  # noqa: E731
        naive_loop(model, paths[:2], device, baseline_context())  # warm-up (cuDNN autotune)
        start = time.perf_counter()
        baseline = naive_loop(model, paths, device, baseline_context())
        naive_s = time.perf_counter() - start
        reference = (naive_loop(model, paths, device, autocast_context("fp32", device))
                     if device.type == "cuda" else baseline)
        device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
        print(f"device: {device_name}; torch {torch.__version__}; threads "
              f"{torch.get_num_threads()}; {len(paths)} JPEGs {args.width}x{args.height} "
              f"(half portrait); weights: {'random RN50' if not args.weights else args.weights}")
        print("| method | precision | backend | decode workers | batch size | images/s | "
              "speed-up vs naive | max abs score diff vs exact fp32 |")
        print("|---|---|---|---|---|---|---|---|")
        base_diff = max(abs(a - b) for a, b in zip(baseline, reference, strict=True))
        workers_list = ([None if w in ("", "default") else int(w)
                         for w in args.workers_list.split(",")]
                        if args.workers_list else [args.workers])
        batch_sizes = ([int(b) for b in args.batch_sizes.split(",")] if args.batch_sizes
                       else [args.batch_size])
        variants = [(p, b, w, False, bs) for p in args.precisions.split(",")
                    for b in args.backends.split(",") for w in workers_list for bs in batch_sizes
                    if b in ("torch", "auto") or p in ("fp32", "auto")]
        if device.type == "cuda":
            variants.append(("auto", "torch", args.workers, True, args.batch_size))
        for precision, backend, _, gpu_jpeg, _ in variants:  # warm-up (and the one-time export)
            score_images(paths[:4], model=model, precision=precision, backend=backend,
                         progress=False, num_workers=0, gpu_jpeg=gpu_jpeg)
        best: dict[int, float] = {}
        outputs: dict[int, object] = {}
        for _ in range(args.repeats):  # interleaved, so a busy moment hits every method
            start = time.perf_counter()
            naive_loop(model, paths, device, baseline_context())
            naive_s = min(naive_s, time.perf_counter() - start)
            for i, (precision, backend, workers, gpu_jpeg, batch_size) in enumerate(variants):
                start = time.perf_counter()
                outputs[i] = score_images(paths, model=model, precision=precision,
                                          backend=backend, progress=False,
                                          batch_size=batch_size, num_workers=workers,
                                          gpu_jpeg=gpu_jpeg)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                best[i] = min(best.get(i, float("inf")), time.perf_counter() - start)
        naive_ips = len(paths) / naive_s
        print(f"| naive loop (official example style) | {baseline_precision} | torch | - | 1 | "
              f"{naive_ips:.2f} | 1.00x | {base_diff:.5f} |")
        for i, (precision, _backend, workers, gpu_jpeg, batch_size) in enumerate(variants):
            results = outputs[i]
            diff = max(abs(r.score - s) for r, s in zip(results, reference))
            resolved = results.preprocessing["precision"]
            ips = len(paths) / best[i]
            label = "score_images + GPU JPEG decode" if gpu_jpeg else "score_images"
            print(f"| {label} | {precision} ({resolved}) | {results.preprocessing['backend']} "
                  f"| {'default' if workers is None else workers} | {batch_size} | {ips:.2f} | "
                  f"{ips / naive_ips:.2f}x | {diff:.5f} |")

if __name__ == "__main__":
    main()
