"""Winograd convolutions on an AVX2 CPU: OpenCV's DNN module vs ONNX Runtime vs the naive loop.

Neither ONNX Runtime nor OpenVINO/oneDNN has a Winograd fp32 convolution for AVX2 CPUs; OpenCV's
DNN module does (F(6x6, 3x3), ``net.enableWinograd``). This measures whether it is the way past
ONNX Runtime for exact-enough CPU scoring (goal: >= 1.6x the naive loop). Model only, in one
process, methods interleaved, best of ``--repeats``:

* ``naive``: ``model(x)`` one image per call, torch fp32 (the official example's loop without
  decoding);
* ``onnxruntime``: the library's backend (cached export of ``model.embed``), then
  ``pair_scores_from_features``;
* ``opencv``, ``opencv-winograd``: OpenCV DNN runs the ResNet trunk exported to ONNX (dynamic
  batch/height/width); normalisation, the attention pool and the scores stay in torch (OpenCV
  misreads the normalisation's broadcast buffers, and the pool is cheap).

The images alternate between landscape and portrait and end with an odd size, as a folder of
photos does: each call has another shape than the previous one, so per-shape set-up costs count.
Score differences are against the naive loop.

No weights can be downloaded here: a randomly initialised full-size RN50 QualiCLIP is used.
Needs ``opencv-python-headless`` (FiftyOne installs it).

    python benchmarks/bench_cpu_winograd.py --repeats 3
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from qualiclip.model import overall_score


def export_trunk(model, path: Path) -> Path:
    """ONNX graph of the ResNet trunk without its input normalisation: ``(N, 3, H, W)``
    normalised -> ``(N, C, H/32, W/32)``, batch and sides dynamic."""
    visual = model.visual

    class Trunk(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = visual.stem(x)
            for layer in (visual.layer1, visual.layer2, visual.layer3, visual.layer4):
                x = layer(x)
            return x

    dynamic = {"images": {0: "n", 2: "h", 3: "w"}, "fmap": {0: "n", 2: "fh", 3: "fw"}}
    torch.onnx.export(Trunk(), (torch.randn(1, 3, 224, 224),), str(path), opset_version=17,
                      dynamo=False, input_names=["images"], output_names=["fmap"],
                      dynamic_axes=dynamic)
    return path


def opencv_scorer(model, onnx_path: Path, winograd: bool, threads: int):
    import cv2

    cv2.setNumThreads(threads)
    net = cv2.dnn.readNetFromONNX(str(onnx_path))
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
    net.enableWinograd(winograd)

    @torch.no_grad()
    def score(x: torch.Tensor) -> torch.Tensor:
        net.setInput(((x - model.mean) / model.std).numpy())
        fmap = torch.from_numpy(net.forward())
        return overall_score(model.pair_scores_from_features(model.pool(fmap)))

    return score


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--n-images", type=int, default=6, help="640x480 / 480x640, alternating")
    args = parser.parse_args()

    import cv2
    from bench_cpu_backends import cpu_description, random_rn50_model

    from qualiclip.backends.onnxruntime_backend import OnnxRuntimeEmbedder

    threads = torch.get_num_threads()
    model = random_rn50_model()
    torch.manual_seed(1)
    images = [torch.rand(1, 3, 480, 640) if i % 2 == 0 else torch.rand(1, 3, 640, 480)
              for i in range(args.n_images)] + [torch.rand(1, 3, 333, 500)]
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("QUALICLIP_CACHE", tmp)
        trunk = export_trunk(model, Path(tmp) / "trunk.onnx")
        ort = OnnxRuntimeEmbedder(model, progress=False)

        @torch.no_grad()
        def naive(x: torch.Tensor) -> torch.Tensor:
            return model(x)

        @torch.no_grad()
        def onnxruntime(x: torch.Tensor) -> torch.Tensor:
            return overall_score(model.pair_scores_from_features(ort(x)))

        methods = {"naive": naive, "onnxruntime": onnxruntime,
                   "opencv": opencv_scorer(model, trunk, False, threads),
                   "opencv-winograd": opencv_scorer(model, trunk, True, threads)}
        reference = [naive(x) for x in images]
        diffs = {name: max(float((f(x) - r).abs().max()) for x, r in zip(images, reference))
                 for name, f in methods.items()}  # also the warm-up
        best: dict[str, float] = {}
        for _ in range(args.repeats):
            for name, f in methods.items():
                start = time.perf_counter()
                for x in images:
                    f(x)
                best[name] = min(best.get(name, float("inf")), time.perf_counter() - start)

    cpu = cpu_description()
    print(f"CPU: {cpu['model']} (family {cpu.get('family')} model {cpu.get('cpu_model')}, "
          f"{cpu['flags']}); {threads} threads; torch {torch.__version__}, OpenCV "
          f"{cv2.__version__}; {len(images)} images (640x480 / 480x640 alternating, one "
          f"500x333), batch 1; best of {args.repeats} interleaved; random RN50\n")
    print("| method | images/s | speed-up vs naive | max abs score diff vs naive |")
    print("|---|---|---|---|")
    for name, seconds in best.items():
        print(f"| {name} | {len(images) / seconds:.2f} | {best['naive'] / seconds:.2f}x | "
              f"{diffs[name]:.1e} |")


if __name__ == "__main__":
    main()
