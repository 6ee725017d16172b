"""Video scoring: decoder choice, frames/s vs the same frames scored as images, memory.

    .venv/bin/python benchmarks/bench_video.py                 # all three parts
    .venv/bin/python benchmarks/bench_video.py --long-minutes 10 --skip decode,speed

1. **Decoders** (PyAV vs OpenCV): decode every frame of one H.264 MP4 to RGB arrays.
2. **Frames/s**: ``qualiclip.iter_video_scores`` (decoding included) vs ``score_images`` on the
   same frames already decoded in memory (the model alone, batched the same way); the difference
   is the decode overhead. Weights: a randomly initialised full-size RN50 QualiCLIP (speed does
   not depend on weight values; no weights can be downloaded here), or ``--weights``.
3. **Memory**: peak RSS of a child process scoring a long synthetic video at 1 fps vs a short
   one (flat memory = equal peaks), with the tiny test model so the run stays short.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def write_video(path: Path, seconds: float, rate: int, width: int, height: int) -> Path:
    """A moving gradient with noise, H.264 (ultrafast preset), so decoding does real work."""
    import av

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width]
    noise = rng.integers(0, 24, (height, width, 3), dtype=np.uint8)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=rate, options={"preset": "ultrafast",
                                                                    "crf": "23"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(int(seconds * rate)):
            base = ((xx + 4 * i) % 256)[..., None] * np.array([1.0, 0.6, 0.3])
            pixels = (base.astype(np.uint8) + np.roll(noise, i, axis=1))
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def decode_pyav(path: Path) -> int:
    import av

    count = 0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            frame.to_ndarray(format="rgb24")
            count += 1
    return count


def decode_opencv(path: Path) -> int:
    import cv2

    capture = cv2.VideoCapture(str(path))
    count = 0
    while True:
        ok, bgr = capture.read()
        if not ok:
            break
        cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        count += 1
    capture.release()
    return count


def best_of(fn, repeats: int = 3) -> tuple[float, int]:
    times, result = [], 0
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def bench_decode(folder: Path, args) -> dict:
    video = write_video(folder / "decode.mp4", args.decode_seconds, 30, 1280, 720)
    out = {}
    for name, fn in (("pyav", decode_pyav), ("opencv", decode_opencv)):
        try:
            seconds, frames = best_of(lambda fn=fn: fn(video))
        except ImportError as exc:
            out[name] = f"not installed ({exc})"
            continue
        out[name] = {"frames": frames, "seconds": round(seconds, 3),
                     "frames_per_s": round(frames / seconds, 1)}
    return out


def bench_speed(folder: Path, args) -> dict:
    from bench_scoring import random_rn50_checkpoint

    from qualiclip import load_model, score_images
    from qualiclip.video import iter_frames, iter_video_scores

    weights = args.weights or random_rn50_checkpoint(folder)
    model = load_model(weights, device="cpu")
    video = write_video(folder / "speed.mp4", args.speed_seconds, 30, args.width, args.height)
    frames = [f.pixels for f in iter_frames(video, args.fps)]
    score_images(frames[:2], model=model, progress=False)  # warm-up (kernels, thread pools)
    start = time.perf_counter()
    as_images = score_images(frames, model=model, progress=False)
    t_images = time.perf_counter() - start
    start = time.perf_counter()
    as_video = list(iter_video_scores(video, model=model, fps=args.fps))
    t_video = time.perf_counter() - start
    diff = max(abs(a.score - b.score) for a, b in zip(as_images, as_video))
    return {"frames": len(frames), "size": f"{args.width}x{args.height}", "fps": args.fps,
            "video_frames_per_s": round(len(frames) / t_video, 2),
            "images_frames_per_s": round(len(frames) / t_images, 2),
            "decode_overhead_pct": round(100 * (t_video - t_images) / t_images, 1),
            "max_abs_score_diff": diff, "precision": "auto"}


CHILD = """
import json, resource, sys, time
from qualiclip import load_model
from qualiclip.video import iter_video_scores, summaries
model = load_model(sys.argv[1], device="cpu")
start = time.perf_counter()
count = 0
for result, summary in summaries(iter_video_scores(sys.argv[2], model=model, fps=1)):
    count += 1
print(json.dumps({"frames": count, "seconds": time.perf_counter() - start,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def tiny_checkpoint(folder: Path) -> Path:
    from qualiclip.architecture import TINY_TEST_CONFIG, build_clip, compute_prompt_features
    from qualiclip.checkpoint import write_checkpoint
    from qualiclip.prompts import flat_prompts

    torch.manual_seed(0)
    clip = build_clip(TINY_TEST_CONFIG).eval()
    return write_checkpoint(folder / "tiny.pth", model_config=TINY_TEST_CONFIG,
                            state_dict=clip.state_dict(),
                            prompt_features=compute_prompt_features(clip, flat_prompts()))


def bench_memory(folder: Path, args) -> dict:
    weights = tiny_checkpoint(folder)
    out = {}
    for minutes in (1, args.long_minutes):
        start = time.perf_counter()
        video = write_video(folder / f"long_{minutes}.mp4", 60 * minutes, 30, args.width,
                            args.height)
        encode = time.perf_counter() - start
        run = subprocess.run([sys.executable, "-c", CHILD, str(weights), str(video)],
                             capture_output=True, text=True, check=True)
        result = json.loads(run.stdout.strip().splitlines()[-1])
        result.update(encode_seconds=round(encode, 1), file_mb=round(video.stat().st_size / 1e6,
                                                                      1))
        out[f"{minutes} min"] = result
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decode-seconds", type=float, default=10)
    parser.add_argument("--speed-seconds", type=float, default=10)
    parser.add_argument("--fps", type=float, default=3, help="sampling rate for the speed part")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=360)
    parser.add_argument("--long-minutes", type=int, default=10)
    parser.add_argument("--weights", default=None, help="default: random RN50 checkpoint")
    parser.add_argument("--skip", default="", help="comma list of decode,speed,memory")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    results = {"torch_threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name, fn in (("decode", bench_decode), ("speed", bench_speed),
                         ("memory", bench_memory)):
            if name not in skip:
                results[name] = fn(folder, args)
                print(json.dumps({name: results[name]}), flush=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
