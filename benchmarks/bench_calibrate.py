"""How long ``qualiclip calibrate`` takes for 50 / 200 / 1,000 ratings on this machine.

The official weights cannot be downloaded here, so a randomly initialised full-size CLIP RN50
(image and text towers, the architecture of the release) is written to a temporary checkpoint
and calibrated through the real path (:func:`qualiclip.calibrate.calibrate`). Time does not
depend on the weight values. Two parts are timed apart:

* embedding the rated images once with the frozen image tower (grows with the ratings);
* the k-fold cross-validation plus the final fit (k + 1 fits of ``--steps`` steps through the
  text tower; nearly independent of the number of ratings, since the embeddings are cached).

Images are synthetic photo-like PNGs of ``--size`` px (square); ratings are random (the time of
a fit does not depend on what it learns).

    .venv/bin/python benchmarks/bench_calibrate.py --counts 50 200 1000
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def _images(folder: Path, n: int, size: int) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        path = folder / f"img_{i:04d}.png"
        if not path.exists():
            coarse = rng.random((size // 32, size // 32, 3))
            image = Image.fromarray((coarse * 255).astype(np.uint8)).resize((size, size),
                                                                            Image.BICUBIC)
            noisy = np.asarray(image).astype(float) + rng.normal(0, 20 * rng.random(), (size,
                                                                                      size, 3))
            Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(path)
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[50, 200, 1000])
    parser.add_argument("--size", type=int, default=384, help="image side in px")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--arch", default="RN50", help="RN50 or tiny-test-rn")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    args = parser.parse_args()

    from qualiclip.architecture import MODEL_CONFIGS, build_clip, compute_prompt_features
    from qualiclip.calibrate import calibrate, image_features
    from qualiclip.checkpoint import write_checkpoint
    from qualiclip.loading import load_model
    from qualiclip.prompts import flat_prompts

    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads; arch {args.arch} "
          f"(random weights); images {args.size}x{args.size}; {args.folds} folds, "
          f"{args.steps} steps per fit")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        torch.manual_seed(0)
        config = MODEL_CONFIGS[args.arch]
        clip = build_clip(config).eval()
        weights = write_checkpoint(root / "base.pth", model_config=config,
                                   state_dict=clip.state_dict(),
                                   prompt_features=compute_prompt_features(clip, flat_prompts()))
        del clip
        model = load_model(weights, device="cpu", progress=False)
        images = _images(root, max(args.counts), args.size)
        rng = np.random.default_rng(1)
        print("| ratings | embedding images | cross-validation + final fit | total |")
        print("|---|---|---|---|")
        for n in args.counts:
            cache = root / f"features-{n}.pt"
            start = time.perf_counter()
            image_features(model, images[:n], cache=cache)
            embed = time.perf_counter() - start
            ratings = list(zip(images[:n], rng.random(n).tolist()))
            start = time.perf_counter()
            calibrate(ratings, weights, root / f"out-{n}.pth", folds=args.folds,
                      steps=args.steps, force=True, cache=cache)
            fit = time.perf_counter() - start  # includes loading the base weights again
            print(f"| {n} | {embed:.1f} s | {fit:.1f} s | {embed + fit:.1f} s |", flush=True)


if __name__ == "__main__":
    main()
