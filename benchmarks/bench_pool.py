"""The attention pool: CLIP's full-sequence formulation vs ``QualiCLIP.pool``'s cheaper order.

``QualiCLIP.pool`` projects keys and values after mixing the tokens (one query per head), which
is algebraically equal to CLIP's attention pool (minus the positional embedding) and needs
~50 M instead of ~2.5 G multiply-adds at 640x480. This prints, per feature-map grid, the
time of each on the CPU (best of ``--repeats``, interleaved), their FLOPs as torch's counter
counts them, and the largest |difference| of the embeddings, relative to their largest value.

No weights can be downloaded here: a randomly initialised full-size RN50 QualiCLIP is used
(speed does not depend on the weight values).

    python benchmarks/bench_pool.py                      # grids of 224x224, 640x480, 1024x768
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from torch.utils.flop_counter import FlopCounterMode


def full_sequence_pool(pool, fmap: torch.Tensor) -> torch.Tensor:
    """CLIP's attention pool without the positional embedding, as the official code runs it:
    every token (mean token first) projected to queries, keys and values, multi-head
    attention over the whole sequence, output projection, first token kept."""
    n, c = fmap.shape[:2]
    seq = fmap.flatten(2).transpose(1, 2)
    seq = torch.cat([seq.mean(dim=1, keepdim=True), seq], dim=1)
    heads = pool.num_heads

    def split(x: torch.Tensor) -> torch.Tensor:
        return x.reshape(n, -1, heads, c // heads).transpose(1, 2)

    q, k, v = split(pool.q_proj(seq)), split(pool.k_proj(seq)), split(pool.v_proj(seq))
    attention = (q @ k.transpose(-1, -2) / math.sqrt(c // heads)).softmax(dim=-1)
    return pool.c_proj((attention @ v).transpose(1, 2).reshape(n, -1, c))[:, 0]


def seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def gflop(fn) -> float:
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops() / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grids", default="7x7,15x20,24x32",
                        help="feature-map HxW, comma-separated (image side / 32)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    from bench_cpu_backends import random_rn50_model

    model = random_rn50_model().eval()
    pool = model.visual.attnpool
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, random RN50\n")
    print("| feature grid (image) | full sequence ms | QualiCLIP.pool ms | speed-up | "
          "GFLOP full / ours | max rel. diff |")
    print("|---|---|---|---|---|---|")
    torch.manual_seed(0)
    for grid in args.grids.split(","):
        h, w = (int(v) for v in grid.split("x"))
        fmap = torch.randn(1, pool.k_proj.in_features, h, w).relu()
        print(compare(model, fmap, args.repeats))


@torch.no_grad()
def compare(model, fmap: torch.Tensor, repeats: int) -> str:
    """One table row for the ``(1, C, h, w)`` feature map ``fmap``."""
    pool = model.visual.attnpool

    def full() -> torch.Tensor:
        return full_sequence_pool(pool, fmap)

    def ours() -> torch.Tensor:
        return model.pool(fmap)

    ref = full()
    diff = float((ref - ours()).abs().max() / ref.abs().max())
    full_ms = ours_ms = float("inf")
    for _ in range(repeats):  # interleaved
        full_ms = min(full_ms, 1e3 * seconds(full))
        ours_ms = min(ours_ms, 1e3 * seconds(ours))
    h, w = fmap.shape[2:]
    return (f"| {h}x{w} ({32 * w}x{32 * h}) | {full_ms:.1f} | {ours_ms:.1f} | "
            f"{full_ms / ours_ms:.1f}x | {gflop(full):.2f} / {gflop(ours):.3f} | {diff:.1e} |")

if __name__ == "__main__":
    main()
