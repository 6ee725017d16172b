"""FiftyOne plugin benchmarks: operator overhead vs bare ``score_images``, and write speed.

1. Overhead: the same 2,000 small JPEGs scored by ``qualiclip.scoring.score_images`` and by the
   ``compute_image_quality`` operator (immediate mode: in-process decoding, as in the App) on a
   2,000-sample dataset, same model object, same batch size and precision. Overhead = operator
   time - bare time (view queries, chunked ``set_values`` writes, provenance, flagging, index).
   No weights can be downloaded here, so the model is a randomly initialised full-size RN50
   QualiCLIP (same compute as the official weights); ``--tiny`` uses the tiny test architecture.
2. Writes: ``writing.write_results`` for 100,000 samples in chunks of 1,000 (score + error, and
   score + error + 7 attributes), then flagging the worst 10 %. The values written are synthetic
   (random numbers in ScoreResult records): this measures the database writes alone.

A throwaway MongoDB (FiftyOne's bundled mongod) is started in a temp dir.

    .venv/bin/python benchmarks/bench_plugin.py [--images 2000] [--samples 100000] [--tiny]
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def start_mongod(workdir: Path) -> subprocess.Popen:
    """A private mongod under ``workdir``, with FiftyOne's environment pointed at it."""
    from tests.private_mongod import start_mongod as start_private_mongod

    proc, uri = start_private_mongod(workdir)
    os.environ.update(FIFTYONE_DATABASE_URI=uri,
                      FIFTYONE_DATABASE_ADMIN="true", FIFTYONE_DO_NOT_TRACK="true",
                      FIFTYONE_DATABASE_VALIDATION="false",
                      FIFTYONE_PLUGINS_DIR=str(workdir / "plugins"))
    return proc


def make_images(folder: Path, n: int) -> list[str]:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    folder.mkdir()
    paths = []
    for i in range(n):
        w, h = [(64, 64), (96, 64), (64, 96)][i % 3]
        img = (rng.random((h, w, 3)) * 255).astype("uint8")
        path = folder / f"{i:05d}.jpg"
        Image.fromarray(img).save(path, quality=90)
        paths.append(str(path))
    return paths


def make_checkpoint(folder: Path, tiny: bool) -> Path:
    import torch
    import torch.nn.functional as F

    from qualiclip.architecture import RN50_CONFIG, TINY_TEST_CONFIG, build_visual
    from qualiclip.checkpoint import write_checkpoint

    config = TINY_TEST_CONFIG if tiny else RN50_CONFIG
    torch.manual_seed(0)
    visual = build_visual(config)
    state = {f"visual.{k}": v for k, v in visual.state_dict().items()}
    return write_checkpoint(folder / "bench.pth", model_config=config, state_dict=state,
                            prompt_features=F.normalize(torch.randn(14, config["embed_dim"]),
                                                        dim=-1))


def bench_overhead(workdir: Path, n_images: int, tiny: bool, repeats: int) -> dict:
    import fiftyone as fo
    import fiftyone.operators as foo

    from qualiclip.scoring import score_images
    from qualiclip_plugin import OPERATOR_URI
    from qualiclip_plugin.install import install_plugin
    from qualiclip_plugin.model_cache import get_model

    install_plugin()
    paths = make_images(workdir / "images", n_images)
    weights = str(make_checkpoint(workdir, tiny))
    model = get_model(weights, "cpu")  # the operator reuses this cached object
    dataset = fo.Dataset("bench-overhead")
    dataset.add_samples([fo.Sample(filepath=p) for p in paths])
    operator = foo.get_operator(OPERATOR_URI)
    common = dict(batch_size=32, num_workers=0, precision="auto")
    score_images(paths[:64], model=model, progress=False, **common)  # warm-up
    bare, plugin = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        score_images(paths, model=model, progress=False, **common)
        bare.append(time.perf_counter() - start)
        start = time.perf_counter()
        summary = operator(dataset, weights=weights, device="cpu", overwrite=True,
                           pair_scores=True, flag_percent=10, **common)
        plugin.append(time.perf_counter() - start)
        assert summary["scored"] == n_images, summary
    return {"bare": bare, "plugin": plugin, "precision": dataset.get_run_info(
        "qualiclip_quality").config.precision}


def bench_writes(n_samples: int) -> dict:
    import fiftyone as fo

    from qualiclip.prompts import PAIR_NAMES
    from qualiclip.scoring import ScoreResult
    from qualiclip_plugin.scoring import writing
    from qualiclip_plugin.trust import protection

    dataset = fo.Dataset("bench-writes")
    start = time.perf_counter()
    dataset.add_samples([fo.Sample(filepath=f"/data/img_{i:06d}.jpg") for i in range(n_samples)],
                        progress=False)
    created = time.perf_counter() - start
    ids = dataset.values("id")
    rng = random.Random(0)
    results = []
    for i in range(n_samples):
        if i % 1000 == 999:
            results.append(ScoreResult(i, f"img_{i}", error="img: file not found"))
        else:
            pairs = {name: rng.random() for name in PAIR_NAMES}
            results.append(ScoreResult(i, f"img_{i}", score=sum(pairs.values()) / 7,
                                       pair_scores=pairs))
    timings = {"create_dataset": created}
    for label, pair_names, field in (("score+error", (), "q1"),
                                     ("score+error+7 attributes", PAIR_NAMES, "q2")):
        layout = writing.FieldLayout.for_field(field, pair_names, flag=f"{field}_flagged")
        writing.declare_fields(dataset, layout)
        start = time.perf_counter()
        for lo in range(0, n_samples, 1000):
            writing.write_results(dataset, ids[lo:lo + 1000], results[lo:lo + 1000], layout)
        timings[label] = time.perf_counter() - start
    start = time.perf_counter()
    flagged = writing.flag_low_quality(dataset, dataset, layout, percent=10)
    protection.move_tag(dataset, dataset, "low_quality", flagged.flagged_ids)
    timings["flag worst 10%"] = time.perf_counter() - start
    assert len(flagged.flagged_ids) == len(dataset.match_tags("low_quality"))
    return timings


def cpu_name() -> str:
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--samples", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--tiny", action="store_true", help="tiny test model instead of RN50")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-plugin-"))
    mongod = start_mongod(workdir)
    try:
        import torch

        print(f"machine: {os.cpu_count()} cores, {cpu_name()}, torch {torch.__version__}, "
              f"{torch.get_num_threads()} threads")
        o = bench_overhead(workdir, args.images, args.tiny, args.repeats)
        bare, plugin = min(o["bare"]), min(o["plugin"])
        model = "tiny test model" if args.tiny else "random-init full-size RN50"
        print(f"overhead ({args.images} images, {model}, precision {o['precision']}): "
              f"bare score_images {bare:.2f} s, operator {plugin:.2f} s, overhead "
              f"{plugin - bare:.2f} s = {100 * (plugin - bare) / bare:.1f} % of bare "
              f"(all runs: bare {[round(t, 2) for t in o['bare']]}, "
              f"operator {[round(t, 2) for t in o['plugin']]})")
        w = bench_writes(args.samples)
        for label, seconds in w.items():
            print(f"writes ({args.samples} samples): {label}: {seconds:.2f} s")
    finally:
        mongod.terminate()
        mongod.wait(timeout=30)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
