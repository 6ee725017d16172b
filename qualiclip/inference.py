"""The one inference primitive: decoded image in, pair scores (or an error) out.

Everything that scores images goes through here: :func:`qualiclip.score_images` (the streaming
engine in :mod:`qualiclip.scoring`), the FiftyOne model, MOS evaluation and, for its
embeddings, ``compute_embeddings``. Three pieces:

* :class:`DecodedImage` and :func:`read_image`: one source -> pixels, or the per-file error
  (never raises, so one bad file costs nothing else);
* :class:`Preprocessing`: what a score depends on besides the pixels (resize policy, precision,
  device, backend), as a typed record; its :meth:`~Preprocessing.describe` is the provenance;
* :class:`BatchScorer`: a batch of same-size images -> one :class:`ImageScore` each. It owns the
  precision (autocast), the memory format, the min-side upscale, the out-of-memory split and the
  non-finite rule; pair scores come from :meth:`QualiCLIP.pair_scores_from_features` (fp32) and
  the overall score from :func:`qualiclip.model.overall_score`, nowhere else.

The image tower itself is pluggable (:class:`FeatureBackend`): :class:`TorchFeatures` runs the
module, :mod:`qualiclip.backends` an exported graph; both see inputs already upscaled.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import torch

from qualiclip.backends.selection import resolve_backend, runtime_features
from qualiclip.constants import CLIP_MEAN, CLIP_STD, MIN_SIDE
from qualiclip.images import (
    NONFINITE_PIXELS,
    ImageSource,
    load_image,
    read_error_text,
    short_name,
    source_name,
    to_float,
)
from qualiclip.model import overall_score, upscale_to_min_side
from qualiclip.precision import autocast_context

if TYPE_CHECKING:
    from qualiclip.model import QualiCLIP

#: Why an image with finite pixels gets no score when the model's output for it is NaN / inf.
NONFINITE_SCORE = "the model returned a non-finite score (NaN/inf): the weights may be corrupt"


@dataclass
class DecodedImage:
    """One input after decoding (or after failing to decode).

    Attributes:
        index: position in the caller's input sequence.
        name: the file path, or ``<ndarray #i>`` style names for in-memory images.
        tensor: ``(3, H, W)`` uint8 in [0, 255] or float32 in [0, 1]; ``None`` when ``error``.
        width, height: the image's own size (after EXIF orientation, before ``max_side``).
        error: why it could not be read, leading with the file's base name; else ``None``.
    """

    index: int
    name: str
    tensor: torch.Tensor | None
    width: int | None = None
    height: int | None = None
    error: str | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        """The tensor's shape, the key same-size batches are grouped by."""
        return tuple(self.tensor.shape) if self.tensor is not None else ()


def read_image(source: ImageSource, index: int = 0, max_side: int | None = None) -> DecodedImage:
    """Decode ``source`` (path, PIL image, array, tensor) as uint8 where it is 8-bit (a quarter
    of the bytes to pass between processes). Never raises: whatever a decoder throws becomes the
    result's ``error``."""
    name = source_name(source, index)
    try:
        image = load_image(source, max_side=max_side, as_uint8=True)
    except Exception as exc:  # noqa: BLE001 - anything a decoder throws stays with this image
        return DecodedImage(index, name, None, error=read_error_text(name, exc))
    return DecodedImage(index, name, image.tensor, image.width, image.height)


@dataclass
class ImageScore:
    """One image's outputs.

    Attributes:
        image: the input (its tensor may be dropped by callers that keep results around).
        pair_scores: ``(P,)`` float32 in [0, 1] on the CPU, columns in ``model.PAIR_NAMES``
            order; ``None`` when ``error``.
        features: ``(D,)`` float32 unnormalised image embedding on the CPU, or ``None``.
        error: why there is no score (unreadable, non-finite output, out of memory alone).
    """

    image: DecodedImage
    pair_scores: torch.Tensor | None = None
    features: torch.Tensor | None = None
    error: str | None = None

    @property
    def score(self) -> float | None:
        """The overall quality in [0, 1] (mean of the pair scores), ``None`` on error."""
        return None if self.pair_scores is None else float(overall_score(self.pair_scores))


def nonfinite_error(name: str, values: torch.Tensor,
                    image: torch.Tensor | None = None) -> str | None:
    """``None`` when all of one image's outputs are finite, else the error text for that image.

    Args:
        name: the image's path or name; the text leads with its base name.
        values: that image's outputs, any shape (``(P,)`` pair scores, an ``(h, w)`` map).
        image: its input, ``(3, H, W)``; looked at only when ``values`` fail, to tell NaN
            pixels (a data problem; :func:`qualiclip.images.load_image` refuses those already)
            from a model that made the NaN itself (corrupt weights, fp16 overflow).
    """
    if bool(torch.isfinite(values).all()):
        return None
    bad_pixels = (image is not None and image.is_floating_point()
                  and not bool(torch.isfinite(image).all()))
    return f"{short_name(name)}: {NONFINITE_PIXELS if bad_pixels else NONFINITE_SCORE}"


def is_out_of_memory(exc: BaseException) -> bool:
    """True for CUDA / CPU allocation failures (which PyTorch raises in several types)."""
    if isinstance(exc, getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text
                                              or "can't allocate memory" in text)


@dataclass(frozen=True)
class Preprocessing:
    """Everything besides the pixels and weights that a score depends on (the role open_clip's
    ``PreprocessCfg`` plays there). Scores made with equal records and weights are comparable.

    Attributes:
        max_side: cap on the longer side (antialiased bilinear), ``None`` = native resolution.
        precision: the resolved precision, ``"fp32" | "fp16" | "bf16"``.
        device: where the image tower ran (``"cpu"``, ``"cuda:0"``).
        backend: what ran the image tower (``"torch"`` or an exported-graph runtime).
        jpeg_decoder: ``"PIL"``, or ``"nvJPEG (GPU)"`` (whose IDCT moves scores by ~1e-3).
    """

    max_side: int | None = None
    precision: str = "fp32"
    device: str = "cpu"
    backend: str = "torch"
    jpeg_decoder: str = "PIL"
    min_side: int = MIN_SIDE
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD

    def describe(self, weights_info: dict[str, Any] | None = None) -> dict[str, Any]:
        """The provenance record: weights, resize policy, precision, versions (JSON-ready)."""
        import platform

        from qualiclip import __version__

        weights_info = weights_info or {}
        return {
            "weights": weights_info.get("name"),
            "weights_sha256": weights_info.get("sha256"),
            "resize": "native resolution" if self.max_side is None
            else f"longer side capped at {self.max_side} px (antialiased bilinear)",
            "max_side": self.max_side,
            "min_side_upscale": (f"shorter side < {self.min_side} px upscaled to "
                                 f"{self.min_side} (bicubic)"),
            "color": "RGB; alpha over white; 16-bit / 65535; EXIF orientation applied",
            "normalization": "CLIP mean/std",
            "precision": self.precision,
            "device": self.device,
            "backend": self.backend,
            "jpeg_decoder": self.jpeg_decoder,
            "machine": platform.machine(),
            "qualiclip_version": __version__,
            "torch_version": torch.__version__,
        }


class FeatureBackend(Protocol):
    """Runs the image tower: ``(N, 3, H, W)`` float32 in [0, 1] with both sides >= ``MIN_SIDE``
    (already upscaled), on the backend's device -> ``(N, D)`` unnormalised embeddings."""

    name: str

    def __call__(self, batch: torch.Tensor) -> torch.Tensor: ...


class TorchFeatures:
    """The image tower as the PyTorch module runs it, under the chosen precision.

    channels_last lets oneDNN / cuDNN pick their fastest convolution kernels. Measured
    (benchmarks/RESULTS.md): with bf16 on CPU it is ~2x faster, with fp32 on CPU slower. The
    weights must share the input's layout for the fast kernels to be picked, so the model is
    converted once here.
    """

    name = "torch"

    def __init__(self, model: QualiCLIP, device: torch.device, precision: str) -> None:
        self.model = model
        self.device = device
        self.precision = precision
        use_channels_last = precision != "fp32" or device.type == "cuda"
        self.memory_format = (torch.channels_last if use_channels_last
                              else torch.contiguous_format)
        model.to(memory_format=self.memory_format)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        batch = batch.contiguous(memory_format=self.memory_format)
        with torch.inference_mode(), autocast_context(self.precision, self.device):
            return self.model.embed(batch)


class BatchScorer:
    """Scores batches of same-size decoded images with one model.

    Args:
        model: a loaded :class:`~qualiclip.model.QualiCLIP` (its prompts make the pair scores).
        device: where batches are assembled (the model's device).
        precision: a resolved precision (:func:`qualiclip.precision.resolve_precision`).
        features: the image tower to run (default :class:`TorchFeatures`).
        keep_features: also return each image's embedding (for ``compute_embeddings``).
    """

    def __init__(self, model: QualiCLIP, device: torch.device, precision: str,
                 features: FeatureBackend | None = None, keep_features: bool = False) -> None:
        self.model = model
        self.device = device
        self.precision = precision
        self.features = features if features is not None else TorchFeatures(model, device,
                                                                            precision)
        self.keep_features = keep_features
        self.pair_names = tuple(model.PAIR_NAMES)

    @property
    def backend(self) -> str:
        """What runs the image tower (``"torch"`` or ``"onnxruntime"``)."""
        return getattr(self.features, "name", "torch")

    def preprocessing(self, max_side: int | None, jpeg_decoder: str = "PIL") -> Preprocessing:
        """The record of how this scorer's scores are made, for ``max_side`` inputs."""
        return Preprocessing(max_side=max_side, precision=self.precision,
                             device=str(self.device), backend=self.backend,
                             jpeg_decoder=jpeg_decoder)

    def score(self, images: Sequence[DecodedImage]) -> list[ImageScore]:
        """``images`` of one shape -> one :class:`ImageScore` each, in order. An out-of-memory
        error splits the batch in halves down to single images; an image too large even alone,
        or whose outputs are not finite, gets an error while its batch mates keep their scores.
        """
        try:
            embeddings = self._embed([image.tensor for image in images])
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            if len(images) == 1:
                return [ImageScore(images[0], error=f"{short_name(images[0].name)}: out of "
                                                    "memory even alone; use max_side")]
            half = len(images) // 2
            return self.score(images[:half]) + self.score(images[half:])
        pair_scores = self.model.pair_scores_from_features(embeddings).cpu()
        # Embeddings leave the device only for callers that keep them (compute_embeddings).
        kept = embeddings.float().cpu() if self.keep_features else [None] * len(images)
        return [self._result(image, pair, embedding)
                for image, pair, embedding in zip(images, pair_scores, kept)]

    def _embed(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        with torch.inference_mode():
            batch = torch.stack([to_float(t.to(self.device, non_blocking=True))
                                 for t in tensors])
            batch = upscale_to_min_side(batch)
        return self.features(batch)

    def _result(self, image: DecodedImage, pair: torch.Tensor,
                embedding: torch.Tensor | None) -> ImageScore:
        error = nonfinite_error(image.name, pair, image.tensor)
        if error is not None:
            return ImageScore(image, error=error)
        return ImageScore(image, pair_scores=pair, features=embedding)


def make_scorer(model: QualiCLIP, precision: str = "auto", backend: str = "auto",
                keep_features: bool = False, progress: bool = True) -> BatchScorer:
    """A :class:`BatchScorer` on the model's device, with ``precision`` and ``backend`` resolved
    together (:func:`qualiclip.backends.selection.resolve_backend`: ``auto`` is the fastest
    exact option on the device). A runtime backend exports the model once per weights (cached).

    Raises:
        ValueError: an unknown or impossible precision / backend combination.
        qualiclip.backends.BackendUnavailableError: a requested runtime is not installed.
    """
    device = next(model.parameters()).device
    backend, precision = resolve_backend(backend, precision, device)
    features: FeatureBackend = (TorchFeatures(model, device, precision) if backend == "torch"
                                else runtime_features(backend, model, progress=progress))
    return BatchScorer(model, device, precision, features=features, keep_features=keep_features)


def group_by_shape(images: Sequence[DecodedImage]) -> list[list[DecodedImage]]:
    """Decoded images grouped by tensor shape, first-seen order (padding would change scores,
    so only same-size images share a batch). Images with an error are left out."""
    groups: dict[tuple[int, ...], list[DecodedImage]] = {}
    for image in images:
        if image.tensor is not None:
            groups.setdefault(image.shape, []).append(image)
    return list(groups.values())


def usable_cpus() -> int:
    """The CPU cores this process may run on (its affinity mask where the OS has one, as in a
    container or under ``taskset``; else the machine's count). Torch warns when a DataLoader
    asks for more workers than this, so every default worker count stays at or below it."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # macOS, Windows
        return os.cpu_count() or 1


def default_num_workers(n_images: int, device: torch.device | None = None) -> int:
    """Decoding processes: half the usable cores (:func:`usable_cpus`, at most 8); none for a
    handful of images, where starting worker processes costs more than it saves, and none when
    the model runs on a CPU of two cores or fewer: there a worker only takes cycles from the
    model (decoding a 640x480 JPEG is ~3 % of scoring it; measured in benchmarks/RESULTS.md:
    ONNX Runtime 1.33x the naive loop without a worker, 1.20x with one). Never more than the
    usable cores (one worker beside a GPU model on a single core)."""
    cores = usable_cpus()
    if n_images < 16 or (cores <= 2 and (device is None or device.type == "cpu")):
        return 0
    return max(1, min(8, cores // 2))
