"""Ray Data engine vs the local engine on the same files: ``qualiclip score --engine ray`` (a
local Ray instance started by the command) against ``qualiclip score``, both end to end as a
user runs them (process start, weights load, scoring, writing), same weights and precision.

    .venv/bin/python benchmarks/bench_ray.py --n-images 160 --repeats 2
    python benchmarks/bench_ray.py --device cuda --n-images 4000 --width 1024 --height 768 \\
        --actors 1 --gpus-per-actor 1 --cpus-per-actor 8        # the per-GPU figure

Weights: a randomly initialised full-size RN50 QualiCLIP checkpoint (speed does not depend on
weight values; the official weights cannot be downloaded everywhere). Prints one JSON line per
run and a summary: images/s of each engine and the Ray engine's overhead in wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_scoring import make_jpegs, random_rn50_checkpoint  # noqa: E402

QUALICLIP = [sys.executable, "-m", "qualiclip.cli"]


def run(args: list[str]) -> float:
    """Wall seconds of one command (it must succeed)."""
    started = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True,
                          env={**os.environ, "FIFTYONE_DO_NOT_TRACK": "true"})
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args[:6])}... failed:\n{done.stderr[-2000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-images", type=int, default=160)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--weights", default=None, help="default: random RN50 checkpoint")
    parser.add_argument("--actors", default="1")
    parser.add_argument("--gpus-per-actor", type=float, default=0)
    parser.add_argument("--cpus-per-actor", type=float, default=None,
                        help="default: every core (one actor scores like the local engine)")
    parser.add_argument("--rows-per-block", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench_ray_"))
    try:
        (work / "images").mkdir()
        images = make_jpegs(work / "images", args.n_images, args.width, args.height)
        weights = args.weights or str(random_rn50_checkpoint(work))
        common = ["--weights", weights, "--precision", args.precision, "--device", args.device,
                  "--no-progress"]
        cpus = args.cpus_per_actor or float(len(os.sched_getaffinity(0)))
        local_s, ray_s = [], []
        for repeat in range(args.repeats):
            local_s.append(run([*QUALICLIP, "score", str(work / "images"), "-o",
                                str(work / "local.csv"), *common]))
            out = work / f"ray_{repeat}"
            ray_s.append(run([*QUALICLIP, "score", "--engine", "ray", str(work / "images"),
                              "-o", str(out), *common, "--actors", args.actors,
                              "--num-gpus-per-worker", str(args.gpus_per_actor),
                              "--cpus-per-worker", str(cpus),
                              "--rows-per-block", str(args.rows_per_block)]))
            print(json.dumps({"repeat": repeat, "local_s": round(local_s[-1], 2),
                              "ray_s": round(ray_s[-1], 2)}), flush=True)
        n = len(images)
        best_local, best_ray = min(local_s), min(ray_s)
        print(json.dumps({
            "n_images": n, "size": f"{args.width}x{args.height}", "device": args.device,
            "precision": args.precision, "actors": args.actors, "cpus_per_actor": cpus,
            "gpus_per_actor": args.gpus_per_actor,
            "local_images_per_s": round(n / best_local, 2),
            "ray_images_per_s": round(n / best_ray, 2),
            "ray_overhead_percent": round(100 * (best_ray / best_local - 1), 1),
            "local_s": [round(s, 2) for s in local_s], "ray_s": [round(s, 2) for s in ray_s],
        }))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
