"""Reproduce the loss-default sweep behind the "Defaults and why" table of docs/training.md.

Each run trains the tiny random-init model (crop 64, batch 4) on 60 generated scenes, holds 10
out, and prints the held-out mean Spearman correlation between degradation level and score before
and after (ideal -1) as one JSON line:

    .venv/bin/python benchmarks/sweep_loss_defaults.py RUN STEPS WORKDIR [SEED]
    for r in m01_l1 m05_l1 m05_l0 m05_l01 m05_l0_adj m05_l0_good m05_l01_md1; do
        .venv/bin/python benchmarks/sweep_loss_defaults.py $r 400 /tmp/sweep; done
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qualiclip_train.config import TrainConfig  # noqa: E402
from qualiclip_train.trainer import train  # noqa: E402

from qualiclip.checkpoint import read_checkpoint  # noqa: E402
from tests.training.conftest import write_scenes  # noqa: E402

#: Overrides of TrainConfig per run, one per row of that table.
RUNS: dict[str, dict] = {
    "m01_l1": {"margin": 0.01, "consistency_weight": 1.0},  # first guess
    "m002_l1": {"margin": 0.002, "consistency_weight": 1.0},
    "m05_l1": {"margin": 0.05, "consistency_weight": 1.0},
    "m01_l0": {"margin": 0.01, "consistency_weight": 0.0},
    "m1_l0": {"margin": 0.1, "consistency_weight": 0.0},
    "m05_l0": {"margin": 0.05, "consistency_weight": 0.0},
    "m02_l01": {"margin": 0.02, "consistency_weight": 0.1},
    "m05_l01": {"margin": 0.05, "consistency_weight": 0.1},  # the defaults
    "m05_l1_tol": {"margin": 0.05, "consistency_weight": 1.0, "consistency_tolerance": 0.02},
    "m05_l0_adj": {"margin": 0.05, "consistency_weight": 0.0, "adjacent_only": True},
    "m05_l0_good": {"margin": 0.05, "consistency_weight": 0.0, "prompts": "good_photo"},
    "m05_l01_md1": {"margin": 0.05, "consistency_weight": 0.1, "max_distortions": 1},
    "m01_l1_lr3e-4": {"margin": 0.01, "consistency_weight": 1.0, "lr": 3e-4},
}


def main() -> None:
    name, steps, root = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
    seed = int(sys.argv[4]) if len(sys.argv) > 4 else 0  # crops, ladders, split and init
    torch.set_num_threads(2)
    images = root / "imgs"
    if not images.exists():
        write_scenes(images, 60)
    start = time.time()
    config = TrainConfig(pristine_dir=str(images), output_dir=str(root / name), init="random",
                         arch="tiny-test-rn", steps=steps, batch_size=4, crop_size=64,
                         workers=0, val_images=10, eval_every=100, checkpoint_every=0,
                         log_every=50, progress=False, seed=seed, **RUNS[name])
    meta = read_checkpoint(train(config)).metadata
    after = meta["eval_after"]
    print(json.dumps({"run": name, "seed": seed, "before": round(meta["eval_before"]["srcc"], 3),
                      "after": round(after["srcc"], 3),
                      "groups": {k: round(v, 2) for k, v in after["per_group"].items()},
                      "seconds": round(time.time() - start)}), flush=True)


if __name__ == "__main__":
    main()
