"""The "Image quality" panel on 100,000 samples: aggregations vs a naive per-sample loop.

A 100,000-sample dataset with a plugin run record and synthetic scores (``quality`` and its 7
attribute fields; 1 % failed with ``quality_error``, 1 % unscored) is built in a throwaway MongoDB.
Timed, each best of ``--repeats``, on the whole dataset and on a view (``match`` on an
attribute, ~half the samples):

* ``refresh``: what the panel computes when it opens or the view changes
  (:mod:`qualiclip_plugin.panel.data`: run records, counts, 25-bin histogram, count below the
  threshold): database aggregations.
* ``naive``: the same numbers from one Python pass over ``view.iter_samples()``.
* ``bin click``, ``worst 20``, ``tag below`` / ``untag``: the panel's other actions.

    .venv/bin/python benchmarks/bench_panel.py [--samples 100000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_plugin import cpu_name, start_mongod  # noqa: E402

BINS = 25
THRESHOLD = 0.3


def make_dataset(n: int):
    """``n`` samples with synthetic scores and a run record, as a plugin run leaves them."""
    import fiftyone as fo
    import numpy as np

    from qualiclip.prompts import PAIR_NAMES
    from qualiclip_plugin.trust import provenance

    rng = np.random.default_rng(0)
    dataset = fo.Dataset("bench-panel")
    scores = rng.beta(4, 6, size=(n, 1 + len(PAIR_NAMES)))
    samples = []
    for i in range(n):
        fields = {}
        if i % 100 == 0:
            fields["quality_error"] = "cannot identify image file"
        elif i % 100 != 1:  # 1 % unscored
            fields["quality"] = float(scores[i, 0])
            fields.update({f"quality_{name}": float(scores[i, j + 1])
                           for j, name in enumerate(PAIR_NAMES)})
        samples.append(fo.Sample(filepath=f"/data/img_{i:06d}.jpg", **fields))
    dataset.add_samples(samples, progress=False)
    dataset.create_index("quality")
    provenance.record(dataset, provenance.describe_run(
        "quality", {"name": "qualiclip", "sha256": "0" * 64, "format": "qualiclip"},
        {"max_side": None, "precision": "fp32"}, list(PAIR_NAMES),
        options={"pair_scores": True, "flag_tag": None}))
    return dataset


def refresh(view) -> tuple:
    """The panel's numbers for ``view`` (as ``ImageQualityPanel._settle`` gets them)."""
    from qualiclip_plugin.panel import data as panel_data

    dataset = view._root_dataset
    src = panel_data.sources(dataset)["quality"]
    counts = panel_data.counts(view, src.field)
    hist = panel_data.histogram(view, src.path(None), bins=BINS)
    below = panel_data.below(view, src.path(None), THRESHOLD).count()
    return counts.total, counts.scored, counts.errors, hist["counts"], below


def naive(view) -> tuple:
    """The same numbers from one pass over the samples."""
    total = scored = errors = below = 0
    values = []
    for sample in view.iter_samples():
        total += 1
        score = sample["quality"]
        if score is not None:
            scored += 1
            values.append(score)
            below += score < THRESHOLD
        if sample["quality_error"] is not None:
            errors += 1
    low, high = min(values), max(values)
    high += (high - low) * 1e-6
    counts = [0] * BINS
    for value in values:
        counts[min(BINS - 1, int((value - low) / (high - low) * BINS))] += 1
    return total, scored, errors, counts, below


def best_of(repeats: int, fn, *args) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn(*args)
        times.append(time.perf_counter() - start)
    return min(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-panel-"))
    mongod = start_mongod(workdir)
    try:
        import fiftyone as fo
        from fiftyone import ViewField as F

        from qualiclip_plugin.panel import data as panel_data

        print(f"machine: {os.cpu_count()} cores, {cpu_name()}, FiftyOne {fo.__version__}")
        start = time.perf_counter()
        dataset = make_dataset(args.samples)
        print(f"built {len(dataset)} samples in {time.perf_counter() - start:.1f} s")
        views = {"whole dataset": dataset.view(),
                 "view (quality_sharp_image > 0.4)": dataset.match(F("quality_sharp_image") > 0.4)}
        for label, view in views.items():
            fast_t, fast = best_of(args.repeats, refresh, view)
            slow_t, slow = best_of(1, naive, view)
            assert fast[:3] == slow[:3] and fast[4] == slow[4], (fast, slow)
            assert sum(abs(a - b) for a, b in zip(fast[3], slow[3])) <= 2, (fast[3], slow[3])
            print(f"{label} ({fast[0]} samples): refresh {fast_t:.3f} s, naive per-sample "
                  f"{slow_t:.2f} s ({slow_t / fast_t:.0f}x)")
        view = dataset.view()
        hist = panel_data.histogram(view, "quality", BINS)
        edges = hist["edges"]
        fullest = max(range(BINS), key=hist["counts"].__getitem__)
        t, n = best_of(args.repeats, lambda: panel_data.range_view(
            view, "quality", edges[fullest], edges[fullest + 1]).count())
        print(f"bin click (view of the fullest bin + its count, {n} samples): {t:.3f} s")
        t, _ = best_of(args.repeats, lambda: panel_data.extremes(
            view, "quality", 20, worst=True).values("id"))
        print(f"worst 20 (sorted view + its ids): {t:.3f} s")
        start = time.perf_counter()
        tagged = panel_data.tag_below(dataset, view, "quality", THRESHOLD, "low_quality")
        print(f"tag below {THRESHOLD} ({tagged} samples): {time.perf_counter() - start:.2f} s")
        start = time.perf_counter()
        untagged = panel_data.untag(view, "low_quality")
        print(f"untag ({untagged} samples): {time.perf_counter() - start:.2f} s")
    finally:
        mongod.terminate()
        mongod.wait(timeout=30)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
