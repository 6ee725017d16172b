"""Constants shared by the library, the CLI, the plugin's form and training, without torch.

Importing this module is cheap (no torch, no PIL), so the CLI's ``--help`` and the plugin's
request checks can use the library's own values instead of copies of them.
"""

from __future__ import annotations

#: The ResNet downsamples by 32; a side shorter than this would leave an empty feature map, so
#: smaller images are upscaled to it (:func:`qualiclip.model.upscale_to_min_side`) and ``max_side``
#: may not go below it.
MIN_SIDE = 32
#: Most images in one scoring batch (a pixel budget bounds it too).
DEFAULT_BATCH_SIZE = 32
#: ``precision=`` values: ``auto`` resolves per device (:mod:`qualiclip.precision`).
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
#: On CUDA, 2**23 px (e.g. 32 images of 512x512): peak activation memory of RN50 inference stays
#: around 2 GB in fp32, which fits small GPUs.
DEFAULT_MAX_BATCH_PIXELS_CUDA = 1 << 23
#: On CPU, 2**19 px (about ten 224x224 images, one 640x480): bigger batches were measured slower
#: (activations fall out of cache; benchmarks/RESULTS.md), smaller ones lose batching gains.
DEFAULT_MAX_BATCH_PIXELS_CPU = 1 << 19

#: CLIP's input normalisation (RGB in [0, 1]).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
#: Fixed logit scale of the official scoring (not the checkpoint's ``logit_scale``).
LOGIT_SCALE = 100.0

#: File extensions picked up when a folder is scanned (by ``qualiclip score`` and by training).
#: HEIC/HEIF/AVIF need ``pillow-heif`` (or a Pillow built with AVIF); JPEG 2000 needs a Pillow
#: built with OpenJPEG (the PyPI wheels are). Files PIL cannot read become per-file errors that
#: say so, rather than being skipped silently.
IMAGE_EXTENSIONS = frozenset({
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp",
    ".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".ico", ".dib",
    ".jp2", ".j2k", ".heic", ".heif", ".avif",
})

#: ``backend=`` values: what runs the image tower. ``auto`` picks the fastest exact option on
#: the device (:mod:`qualiclip.backends.selection`); ``onnxruntime`` runs the exported fp32 graph
#: on the CPU and needs the ``cpu-fast`` extra.
BACKENDS = ("auto", "torch", "onnxruntime")

#: Extensions of the video files ``qualiclip score`` scores frame by frame (the ``video`` extra,
#: PyAV, decodes them; :mod:`qualiclip.video`). A folder scan picks them up beside images.
VIDEO_EXTENSIONS = frozenset({
    ".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".mts", ".m2ts",
    ".wmv", ".flv", ".3gp", ".ogv",
})
