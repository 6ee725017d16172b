"""Ray Data engine vs the local engine on the same files: ``qualiclip score --engine ray`` (a
local Ray instance started by the command) against ``qualiclip score``, both end to end as a
user runs them (process start, weights load, scoring, writing), same weights and precision.

    .venv/bin/python benchmarks/bench_ray.py --n-images 160 --repeats 2
    python benchmarks/bench_ray.py --device cuda --n-images 4000 --width 1024 --height 768 \\
        --actors 1 --gpus-per-actor 1 --cpus-per-actor 8        # the per-GPU figure

Weights: a randomly initialised full-size RN50 QualiCLIP checkpoint (speed does not depend on
weight values; the official weights cannot be downloaded everywhere). The two engines alternate
(local, Ray, local, Ray ...), so load from other processes on a shared machine falls on both.
Prints one JSON line per run and a summary: images/s of each engine, the Ray engine's overhead
in wall time, and the CPU seconds (user + system) of each command's whole process tree (Ray's
own processes and workers included; sampled with psutil every 0.2 s), which other processes'
load changes less than wall time.
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


def run(args: list[str]) -> tuple[float, float]:
    """``(wall seconds, CPU seconds of its process tree)`` of one command (it must succeed);
    the CPU seconds are NaN without psutil."""
    try:
        import psutil
    except ImportError:
        psutil = None
    started = time.perf_counter()
    errors = tempfile.TemporaryFile("w+")  # a pipe could fill up and stall the command
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=errors, text=True,
                            env={**os.environ, "FIFTYONE_DO_NOT_TRACK": "true"})
    cpu: dict[int, float] = {}  # last reading per process: Ray's workers are not waited for
    if psutil is None:
        cpu[proc.pid] = float("nan")
        proc.wait()
    else:
        root = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            tree = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            break
        for process in tree:
            try:
                times = process.cpu_times()
                cpu[process.pid] = times.user + times.system
            except psutil.NoSuchProcess:
                pass
        time.sleep(0.2)
    seconds = time.perf_counter() - started
    errors.seek(0)
    stderr = errors.read()
    if proc.wait() != 0:
        raise SystemExit(f"{' '.join(args[:6])}... failed:\n{stderr[-2000:]}")
    return seconds, sum(cpu.values())


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
        local_s, ray_s, local_cpu, ray_cpu = [], [], [], []
        for repeat in range(args.repeats):
            wall, cpu_s = run([*QUALICLIP, "score", str(work / "images"), "-o",
                               str(work / "local.csv"), *common])
            local_s.append(wall)
            local_cpu.append(cpu_s)
            out = work / f"ray_{repeat}"
            wall, cpu_s = run([*QUALICLIP, "score", "--engine", "ray", str(work / "images"),
                               "-o", str(out), *common, "--actors", args.actors,
                               "--num-gpus-per-worker", str(args.gpus_per_actor),
                               "--cpus-per-worker", str(cpus),
                               "--rows-per-block", str(args.rows_per_block)])
            ray_s.append(wall)
            ray_cpu.append(cpu_s)
            print(json.dumps({"repeat": repeat, "local_s": round(local_s[-1], 2),
                              "ray_s": round(ray_s[-1], 2),
                              "local_cpu_s": round(local_cpu[-1], 1),
                              "ray_cpu_s": round(ray_cpu[-1], 1),
                              "load_average": round(os.getloadavg()[0], 1)}), flush=True)
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
            "local_cpu_s": [round(s, 1) for s in local_cpu],
            "ray_cpu_s": [round(s, 1) for s in ray_cpu],
            "ray_cpu_overhead_percent": round(100 * (min(ray_cpu) / min(local_cpu) - 1), 1),
        }))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
