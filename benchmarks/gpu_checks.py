"""Correctness checks of the scoring engine on a CUDA device (run where a GPU is available).

Scores the same JPEGs with a random full-size RN50 checkpoint on CPU (fp32, the reference) and on
CUDA with fp32, auto (fp16 AMP) and auto + nvJPEG decoding; prints the largest score differences
and exits non-zero if fp32 differs by more than 1e-4 or a fast path by more than 0.01.

    python benchmarks/gpu_checks.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_scoring import make_jpegs, random_rn50_checkpoint  # noqa: E402


def main() -> int:
    from qualiclip import load_model, score_images

    assert torch.cuda.is_available(), "needs a CUDA device"
    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        paths = make_jpegs(tmp_path, 24, 1024, 768, seed=1)
        checkpoint = random_rn50_checkpoint(tmp_path)
        cpu = score_images(paths, model=load_model(checkpoint, device="cpu"), precision="fp32",
                           progress=False, num_workers=4)
        gpu_model = load_model(checkpoint, device="cuda")
        for label, kwargs, limit in [
            ("cuda fp32", dict(precision="fp32"), 1e-4),
            ("cuda auto (fp16)", dict(precision="auto"), 0.01),
            ("cuda auto + nvJPEG", dict(precision="auto", gpu_jpeg=True), 0.01),
        ]:
            results = score_images(paths, model=gpu_model, progress=False, num_workers=4,
                                   **kwargs)
            errors = [r.error for r in results if r.error]
            diff = max(abs(a.score - b.score) for a, b in zip(cpu, results) if b.score is not None)
            sizes_ok = all((a.width, a.height) == (b.width, b.height) for a, b in zip(cpu, results))
            ok = diff <= limit and not errors and sizes_ok
            print(f"{label:22s} max |score - cpu fp32| = {diff:.2e} (limit {limit}) "
                  f"errors={len(errors)} sizes_match={sizes_ok} -> {'OK' if ok else 'FAIL'}")
            if not ok:
                failures.append(label)
    print("gpu checks:", "FAILED " + ", ".join(failures) if failures else "all passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
