"""CPU inference backends for the image tower: torch eager vs ONNX Runtime vs OpenVINO.

Compares, in one process and interleaved (every repeat runs every method once per workload, so
a busy shared machine slows all methods alike):

* ``naive``: torch fp32, one image per call, ``model(x)`` (the official example's loop, without
  decoding);
* ``torch``: torch fp32, ``model.embed`` on the whole batch, then
  ``model.pair_scores_from_features``;
* ``onnxruntime`` / ``openvino``: the cached ONNX export of ``model.embed`` run by the runtime
  (:mod:`qualiclip.backends`), then the same ``pair_scores_from_features`` in torch.

Model only: images are random tensors already in memory (decoding is the scoring engine's part
and is measured by ``bench_scoring.py``). For each workload it prints images/s (median over the
repeats), the speed-up over the naive loop (median of the per-repeat ratios), the process CPU
time per image (less sensitive than wall time to other load on a shared machine), the achieved
GFLOP/s against the CPU's fp32 peak, and the largest |difference| of pair scores and of the
quality score against torch fp32 on the same inputs.

No weights can be downloaded here: a randomly initialised full-size RN50 QualiCLIP is used
(speed does not depend on weight values; the score differences measure numerics on random
weights, not the released model). ``--weights`` takes a real checkpoint.

    python benchmarks/bench_cpu_backends.py                      # all workloads, 5 repeats
    python benchmarks/bench_cpu_backends.py --repeats 3 --methods naive,torch,onnxruntime
    python benchmarks/bench_cpu_backends.py --workloads 480x640:1x4,224x224:8x1
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

#: fp32 FLOP per cycle per core with AVX2: 2 FMA units x 8 fp32 lanes x 2 FLOP per FMA
#: (AVX-512: 16 lanes, on CPUs with two 512-bit FMA units).
AVX2_FLOP_PER_CYCLE = 2 * 8 * 2


@dataclass(frozen=True)
class Workload:
    """``batches`` calls on ``batch`` images of ``height x width`` (all random, same shape)."""

    height: int
    width: int
    batch: int
    batches: int

    @property
    def label(self) -> str:
        return f"{self.width}x{self.height} (WxH), batch {self.batch}"

    @property
    def n_images(self) -> int:
        return self.batch * self.batches

    def gflop_per_image(self, model) -> float:
        """FLOPs (2 per multiply-add) of one image through ``model.embed`` at this size, as
        torch's FLOP counter counts them (convolutions and matmuls). CLIP's RN50 is 10.8 GFLOP
        at 224x224 (its three-convolution stem and full-resolution 3x3 convolutions make it
        heavier than torchvision's ResNet-50, ~8.2)."""
        from torch.utils.flop_counter import FlopCounterMode

        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            model.embed(torch.zeros(1, 3, self.height, self.width))
        return counter.get_total_flops() / 1e9


#: Default: 640x480 photos (the target workload) both ways, one per call (native resolution:
#: each photo is its own batch unless sizes repeat) and four per call; 224x224 one and eight
#: per call.
DEFAULT_WORKLOADS = "480x640:1x4,640x480:1x4,480x640:4x1,224x224:1x8,224x224:8x1"


def parse_workloads(text: str) -> list[Workload]:
    """``HxW:BATCHxBATCHES,...`` -> workloads."""
    out = []
    for item in text.split(","):
        size, calls = item.split(":")
        h, w = (int(v) for v in size.split("x"))
        b, n = (int(v) for v in calls.split("x"))
        out.append(Workload(h, w, b, n))
    return out


def cpu_description() -> dict[str, str]:
    """Model name, cores, clock (GHz, from /proc/cpuinfo's "cpu MHz") and vector/matrix flags."""
    info = {"model": platform.processor() or "unknown", "ghz": "", "flags": ""}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name"):
                info["model"] = line.split(":", 1)[1].strip()
    except OSError:
        pass
    try:
        text = open("/proc/cpuinfo").read()
        mhz = [float(line.split(":")[1]) for line in text.splitlines()
               if line.startswith("cpu MHz")]
        if mhz:
            info["ghz"] = f"{max(mhz) / 1000:.3f}"
        flags = next(line for line in text.splitlines() if line.startswith("flags")).split()
        wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile", "avx512_vnni", "avx_vnni")
        info["flags"] = " ".join(f for f in wanted if f in flags)
        fields = {key.strip(): value.strip() for key, value in
                  (line.split(":", 1) for line in text.splitlines()[:30] if ":" in line)}
        info["family"] = fields.get("cpu family", "")
        info["cpu_model"] = fields.get("model", "")
    except (OSError, StopIteration, ValueError):
        pass
    return info


def flop_per_cycle(cpu: dict[str, str]) -> int:
    """fp32 FLOP per cycle per core: AVX2 32, AVX-512 64; AMD Zen 1 / Zen+ (family 23, model
    below 0x30) split each 256-bit FMA into two 128-bit halves: 16."""
    if "avx512f" in cpu["flags"].split():
        return 2 * AVX2_FLOP_PER_CYCLE
    family, model = cpu.get("family", ""), cpu.get("cpu_model", "")
    if family == "23" and model.isdigit() and int(model) < 0x30:
        return AVX2_FLOP_PER_CYCLE // 2
    return AVX2_FLOP_PER_CYCLE


def fp32_peak_gflops(cores: int, ghz: float, cpu: dict[str, str]) -> float:
    """Theoretical fp32 peak: cores x GHz x :func:`flop_per_cycle`."""
    return cores * ghz * flop_per_cycle(cpu)


def random_rn50_model(seed: int = 0):
    from qualiclip.architecture import build_visual, resolve_model_config
    from qualiclip.model import QualiCLIP

    torch.manual_seed(seed)
    config = resolve_model_config("RN50")
    prompts = F.normalize(torch.randn(14, config["embed_dim"]), dim=-1)
    return QualiCLIP(build_visual(config), prompts).eval().requires_grad_(False)


def make_methods(model, names: list[str], threads: int) -> dict[str, Callable]:
    """name -> ``f(batch) -> (N, P) pair scores``. Runtimes not installed are skipped (noted)."""
    methods: dict[str, Callable] = {}

    def naive(batch):
        return torch.cat([model.pair_scores(x[None]) for x in batch])

    def batched(batch):
        return model.pair_scores_from_features(model.embed(batch))

    for name in names:
        if name == "naive":
            methods[name] = naive
        elif name == "torch":
            methods[name] = batched
        elif name in ("onnxruntime", "openvino"):
            from qualiclip.backends import BackendUnavailableError

            try:
                if name == "onnxruntime":
                    from qualiclip.backends.onnxruntime_backend import OnnxRuntimeEmbedder as cls
                else:
                    from qualiclip.backends.openvino_backend import OpenVinoEmbedder as cls
                start = time.perf_counter()
                embedder = cls(model, threads=threads)
                print(f"# {name}: ready in {time.perf_counter() - start:.1f} s "
                      f"({embedder.onnx_path.name})")
            except BackendUnavailableError as exc:
                print(f"# {name}: skipped: {exc}")
                continue
            methods[name] = (lambda e: lambda batch: model.pair_scores_from_features(e(batch)))(
                embedder)
        else:
            raise SystemExit(f"unknown method {name!r}")
    return methods


def run(model, methods: dict[str, Callable], workloads: list[Workload], repeats: int,
        seed: int = 0) -> list[dict]:
    """Interleaved timing and parity. Returns one row per (workload, method)."""
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for wl in workloads:
        inputs = [torch.rand(wl.batch, 3, wl.height, wl.width, generator=gen)
                  for _ in range(wl.batches)]
        with torch.no_grad():
            reference = torch.cat([model.pair_scores_from_features(model.embed(x))
                                   for x in inputs])
            diffs = {}
            for name, fn in methods.items():
                got = torch.cat([fn(x) for x in inputs])  # also the warm-up
                diffs[name] = (float((got - reference).abs().max()),
                               float((got.mean(-1) - reference.mean(-1)).abs().max()))
            times: dict[str, list[float]] = {name: [] for name in methods}
            cpu_times: dict[str, list[float]] = {name: [] for name in methods}
            for _ in range(repeats):
                for name, fn in methods.items():
                    start, cpu_start = time.perf_counter(), time.process_time()
                    for x in inputs:
                        fn(x)
                    times[name].append(time.perf_counter() - start)
                    cpu_times[name].append(time.process_time() - cpu_start)
        base = times.get("naive")
        for name in methods:
            ips = [wl.n_images / t for t in times[name]]
            ratios = ([b / t for b, t in zip(base, times[name])] if base else [float("nan")])
            rows.append({"workload": wl, "method": name, "ips": statistics.median(ips),
                         "speedup": statistics.median(ratios),
                         "cpu_s": statistics.median(cpu_times[name]) / wl.n_images,
                         "pair_diff": diffs[name][0],
                         "score_diff": diffs[name][1]})
            print(f"# {wl.label:32s} {name:12s} {statistics.median(ips):6.2f} img/s "
                  f"x{statistics.median(ratios):.2f}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default="naive,torch,onnxruntime,openvino")
    parser.add_argument("--workloads", default=DEFAULT_WORKLOADS,
                        help="HxW:BATCHxBATCHES,... (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch and runtime intra-op threads (default: torch's)")
    parser.add_argument("--weights", default=None, help="default: random full-size RN50")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    if args.weights:
        from qualiclip import load_model

        model = load_model(args.weights, device="cpu")
    else:
        model = random_rn50_model()
    cpu = cpu_description()
    cores = len(__import__("os").sched_getaffinity(0))
    ghz = float(cpu["ghz"] or "nan")
    peak = fp32_peak_gflops(cores, ghz, cpu)
    with tempfile.TemporaryDirectory() as tmp:
        import os

        os.environ.setdefault("QUALICLIP_CACHE", tmp)  # a fresh export unless the user set one
        methods = make_methods(model, args.methods.split(","), threads)
        rows = run(model, methods, parse_workloads(args.workloads), args.repeats)

    versions = [f"torch {torch.__version__}"]
    for module in ("onnxruntime", "openvino"):
        if module in methods:
            versions.append(f"{module} {__import__(module).__version__}")
    print(f"\nCPU: {cpu['model']} (family {cpu.get('family')} model {cpu.get('cpu_model')}), "
          f"{cores} cores at {ghz:.2f} GHz ({cpu['flags']}); fp32 peak "
          f"{peak:.0f} GFLOP/s ({cores} x {ghz:.2f} GHz x {flop_per_cycle(cpu)} FLOP/cycle); "
          f"{threads} threads; {', '.join(versions)}; {args.repeats} interleaved repeats; "
          f"weights: {args.weights or 'random RN50'}\n")
    print("| input (WxH), batch | method | images/s | speed-up vs naive | CPU s/image | GFLOP/s "
          "| % of fp32 peak | max abs pair-score diff | max abs score diff |")
    print("|---|---|---|---|---|---|---|---|---|")
    # counting runs the model once: once per workload, not once per row
    gflop = {wl: wl.gflop_per_image(model) for wl in {row["workload"] for row in rows}}
    for row in rows:
        wl = row["workload"]
        gflops = row["ips"] * gflop[wl]
        print(f"| {wl.width}x{wl.height}, {wl.batch} | {row['method']} | {row['ips']:.2f} | "
              f"{row['speedup']:.2f}x | {row['cpu_s']:.2f} | {gflops:.0f} | "
              f"{100 * gflops / peak:.0f} % | "
              f"{row['pair_diff']:.1e} | {row['score_diff']:.1e} |")


if __name__ == "__main__":
    main()
