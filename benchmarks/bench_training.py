"""Training throughput: images/s and the data pipeline's share of step time.

Runs the trainer's own pieces (loader -> ladders on the device -> forward/backward -> AdamW) on
generated images, random init, nothing downloaded:

* ``--device cpu`` (default): the tiny test config (``tiny-test-rn``) at crop 64 and 224;
* ``--device cuda``: additionally CLIP RN50 at crop 224 under bf16 autocast.

"images/s" counts degraded crops through the image encoder (each pristine image gives
2 crops x L levels). "data share" is the time spent waiting for the loader plus degrading the
crops, as a fraction of the whole step. Prints a markdown table.

    .venv/bin/python benchmarks/bench_training.py                 # CPU
    .venv/bin/python benchmarks/bench_training.py --device cuda   # + RN50 on the GPU (~1-2 min)
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from qualiclip_train.data import PristineCrops, StepBatchSampler
from qualiclip_train.initial_model import (
    PromptSimilarity,
    initial_model,
    set_train_mode,
    trainable_model,
)
from qualiclip_train.losses import qualiclip_loss
from qualiclip_train.trainer import degrade_batch
from torch.utils.data import DataLoader

from qualiclip.architecture import resolve_model_config


def make_images(folder: Path, count: int, side: int) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        yy, xx = np.mgrid[0:side, 0:side] / side
        img = np.stack([xx, yy, (xx + yy) / 2], -1) + rng.normal(0, 0.05, (side, side, 3))
        path = folder / f"{i}.jpg"
        Image.fromarray((np.clip(img, 0, 1) * 255).astype("uint8")).save(path, quality=95)
        paths.append(path)
    return paths


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench(arch: str, crop: int, batch: int, steps: int, warmup: int, device: torch.device,
          workers: int, degrade_on: str = "device", levels: int = 5) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_images(Path(tmp), 64, max(crop + crop // 2, 96))
        model = trainable_model(initial_model("random", arch, seed=0)).to(device)
        scorer = PromptSimilarity(model)
        set_train_mode(model, train_bn=True)
        opt = torch.optim.AdamW(model.visual.parameters(), lr=1e-4)
        amp = torch.bfloat16 if device.type == "cuda" else None
        sampler = StepBatchSampler(len(paths), batch, seed=0, start=0, stop=warmup + steps)
        in_workers = degrade_on == "workers"
        dataset = PristineCrops(paths, crop, levels=levels if in_workers else None)
        loader = DataLoader(dataset, batch_sampler=sampler,
                            num_workers=workers, pin_memory=device.type == "cuda",
                            persistent_workers=False)
        data_t = compute_t = 0.0
        n_images = 0
        it = iter(loader)
        for step in range(warmup + steps):
            t0 = time.perf_counter()
            b = next(it)
            if in_workers:
                degraded = b["degraded"].to(device, non_blocking=True).float().div_(255)
            else:
                crops = b["crops"].to(device, non_blocking=True).float().div_(255)
                with torch.no_grad():
                    degraded = degrade_batch(crops, b["ladder_seed"], levels, 4)
            sync(device)
            t1 = time.perf_counter()
            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                sims = scorer(degraded.reshape(-1, 3, crop, crop))
            sims = sims.float().view(batch, 2, levels, -1, 2)
            loss = qualiclip_loss(sims[..., 0], sims[..., 1], 0.01, 1.0, 0.0)["loss"]
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            sync(device)
            t2 = time.perf_counter()
            if step >= warmup:
                data_t += t1 - t0
                compute_t += t2 - t1
                n_images += degraded.shape[0] * 2 * levels
        total = data_t + compute_t
        return {"arch": arch, "crop": crop, "batch": batch, "device": str(device),
                "degrade_on": f"{degrade_on} ({workers} workers)",
                "images_per_s": n_images / total, "pristine_per_s": n_images / total / 2 / levels,
                "step_ms": 1000 * total / steps, "data_share": data_t / total,
                "model_only_images_per_s": n_images / compute_t}


def machine(device: torch.device) -> str:
    cpu = platform.processor() or ""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        cpu = next((ln.split(":", 1)[1].strip() for ln in out.splitlines()
                    if ln.startswith("Model name")), cpu)
    except OSError:
        pass
    desc = f"{torch.get_num_threads()} torch threads, CPU {cpu}"
    if device.type == "cuda":
        desc += f", GPU {torch.cuda.get_device_name(device)}"
    return desc + f", torch {torch.__version__}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per setting")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    resolve_model_config("tiny-test-rn")
    rows = []
    if device.type == "cpu":
        steps = args.steps or 10
        workers = 1 if args.workers is None else args.workers
        rows.append(bench("tiny-test-rn", 64, 8, steps, 2, device, workers, "device"))
        rows.append(bench("tiny-test-rn", 64, 8, steps, 2, device, workers, "workers"))
        rows.append(bench("tiny-test-rn", 224, 4, max(3, steps // 2), 1, device, workers,
                          "workers"))
    else:
        steps = args.steps or 20
        workers = min(14, os.cpu_count() or 1) if args.workers is None else args.workers
        rows.append(bench("RN50", 224, 16, max(5, steps // 4), 2, device, workers, "device"))
        rows.append(bench("RN50", 224, 16, steps, 5, device, workers, "workers"))
        rows.append(bench("RN50", 224, 32, steps, 3, device, workers, "workers"))
    print(f"\nMachine: {machine(device)}\n")
    print("| model | crop | batch (pristine) | device | degradation | images/s | pristine/s "
          "| step ms | data share | images/s model only |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['arch']} | {r['crop']} | {r['batch']} | {r['device']} | {r['degrade_on']} | "
              f"{r['images_per_s']:.1f} | {r['pristine_per_s']:.1f} | {r['step_ms']:.0f} | "
              f"{100 * r['data_share']:.0f}% | {r['model_only_images_per_s']:.1f} |")


if __name__ == "__main__":
    main()
