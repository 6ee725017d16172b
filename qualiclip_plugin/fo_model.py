"""QualiCLIP as a FiftyOne model, for ``dataset.apply_model`` and ``compute_embeddings``.

Built like FiftyOne's own open_clip wrapper (config + ``_load_model`` / ``_build_transforms`` /
``_predict_all``), with three departures that the scoring contract forces:

* **Native resolution**: images are not resized, so a batch holds differently sized tensors. The
  model declares ``ragged_batches=False`` (else FiftyOne silently drops to batch size 1) and a
  collate function that keeps the list; ``_predict_all`` runs each same-size group as one batch.
* **Per-image failures**: FiftyOne's loader drops a whole batch when one file fails to load, so
  images are read by our own ``GetItem`` (in the DataLoader workers, so ``num_workers`` works)
  that turns a read error into a :class:`~qualiclip.inference.DecodedImage` with ``error`` set.
  The failed sample gets no score (with
  ``pair_scores=True`` an ``<label_field>_error`` string); its batch mates are scored normally.
  A prediction holding NaN / inf is such a failure too, never a score (the library's rule,
  :func:`qualiclip.inference.nonfinite_error`).
* **Field types**: FiftyOne casts a float into an existing ``IntField`` without a word (every
  score becomes 0), and never tells a model which field it writes. The target fields are checked
  (:meth:`QualiCLIPModel.check_label_field`, ``ValueError`` before anything is written) by
  :func:`apply_model` (this module) and :meth:`QualiCLIPModel.clear_outputs`, and, for a plain
  ``dataset.apply_model``, when FiftyOne enters the model (``__enter__`` reads the collection
  and label field from FiftyOne's ``apply_model`` frame: no public hook carries them).
* **Reruns**: like every FiftyOne model, ``apply_model`` writes only the values a prediction
  has (FiftyOne does not persist ``None`` through the field-selected views it writes with), so
  rerunning into the same ``label_field`` keeps an old score for an image that now fails, and an
  old error for one fixed since. :meth:`QualiCLIPModel.clear_outputs` empties those fields on a
  collection first, for a clean rerun; the operator does this itself.
* Scores come from the library's one inference primitive,
  :class:`qualiclip.inference.BatchScorer` (precision, memory format, min-side upscale,
  out-of-memory split, non-finite rule), the same path ``score_images`` runs, so
  ``apply_model`` and the operator agree.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

import fiftyone.utils.torch as fout
import numpy as np
import torch

from qualiclip.weights import which_weights

logger = logging.getLogger(__name__)


class QualityGetItem(fout.GetItem):
    """Decodes ``filepath`` with :func:`qualiclip.inference.read_image`; never raises."""

    def __init__(self, max_side: int | None = None, field_mapping: dict | None = None) -> None:
        self.max_side = max_side
        super().__init__(field_mapping=field_mapping)

    @property
    def required_keys(self) -> list[str]:
        return ["filepath"]

    def __call__(self, d: dict):
        from qualiclip.inference import read_image

        return read_image(d["filepath"], max_side=self.max_side)


def _keep_list(batch: list) -> list:
    return list(batch)


class QualiCLIPModelConfig(fout.TorchImageModelConfig):
    """Configuration of :class:`QualiCLIPModel`.

    Args (keys of ``d``, besides :class:`fiftyone.utils.torch.TorchImageModelConfig`'s):
        weights (None): ``"qualiclip"`` (official weights), a local checkpoint path or a URL;
            ``None``: ``$QUALICLIP_WEIGHTS`` if set, else ``"qualiclip"``.
        pair_scores (False): predict a dict instead of a float: ``score`` and the 7 attribute
            scores, or ``error`` for an unreadable image; written as ``<label_field>_score``,
            ``<label_field>_<attribute>`` and ``<label_field>_error``.
        max_side (None): cap the longer side in pixels; ``None`` = native resolution.
        precision ("auto"): ``auto``, ``fp32``, ``fp16`` (CUDA) or ``bf16``.
        backend ("auto"): what runs the image tower: ``auto`` (an installed CPU runtime for
            fp32 on the CPU, else torch), ``torch`` or ``onnxruntime``.
    """

    def __init__(self, d: dict) -> None:
        d = dict(d)
        d.setdefault("ragged_batches", False)
        super().__init__(d)
        self.weights = which_weights(self.parse_raw(d, "weights", default=None))
        self.pair_scores = self.parse_bool(d, "pair_scores", default=False)
        self.max_side = self.parse_raw(d, "max_side", default=None)
        self.precision = self.parse_string(d, "precision", default="auto")
        self.backend = self.parse_string(d, "backend", default="auto")


class QualiCLIPModel(fout.TorchImageModel):
    """A FiftyOne model predicting QualiCLIP quality scores; embeddings are the image features.

    After ``apply_model``, :attr:`read_errors` maps the paths that could not be read or scored
    to why.
    """

    def __init__(self, config: QualiCLIPModelConfig) -> None:
        from qualiclip.inference import make_scorer

        super().__init__(config)
        self._scorer = make_scorer(self._model, precision=config.precision,
                                   backend=config.backend, keep_features=True, progress=False)
        self.read_errors: dict[str, str] = {}
        self._last_embeddings: np.ndarray | None = None

    def __enter__(self):
        # FiftyOne's apply_model enters the model (outside its skip_failures handling) before
        # the first prediction: the one moment a model can refuse a field it would corrupt.
        target = _apply_model_call()
        if target is not None:
            if target[0].media_type == "video":
                # FiftyOne would read every frame with the ffmpeg program and write one score
                # per frame, no summary; the plugin's video path samples, summarises and
                # records the run.
                raise ValueError(VIDEO_APPLY_MODEL)
            self.check_label_field(*target)
        return super().__enter__()

    # --- TorchImageModel overrides ----------------------------------------------------------
    def output_fields(self, label_field: str) -> dict[str, type]:
        """The fields ``apply_model(model, label_field=...)`` writes, with their types."""
        import fiftyone as fo

        if not self.config.pair_scores:
            return {label_field: fo.FloatField}
        fields = {f"{label_field}_{k}": fo.FloatField for k in ("score", *self.pair_names)}
        return {**fields, f"{label_field}_error": fo.StringField}

    def check_label_field(self, samples, label_field: str) -> None:
        """Refuse a ``label_field`` whose existing fields have another type than this model
        writes (e.g. an ``IntField`` named like the score: FiftyOne would truncate every score
        to 0 without a word).

        FiftyOne's ``apply_model`` never shows a model the field it writes, so this is called by
        :func:`apply_model`, :meth:`clear_outputs` and ``__enter__`` (from FiftyOne's frame),
        before anything is written.

        Raises:
            ValueError: naming each field, its type and the type this model writes.
        """
        if samples.media_type != "image":  # frames of videos: FiftyOne's own rules apply
            return
        schema = samples._dataset.get_field_schema()
        clashes = [f"{name!r} exists as {type(schema[name]).__name__}, not {ftype.__name__}"
                   for name, ftype in self.output_fields(label_field).items()
                   if name in schema and not isinstance(schema[name], ftype)]
        if clashes:
            raise ValueError(
                f"cannot write QualiCLIP scores into label_field {label_field!r}: "
                f"{'; '.join(clashes)}. Choose another label_field, or delete those fields "
                "first (dataset.delete_sample_fields)")

    def clear_outputs(self, samples, label_field: str) -> list[str]:
        """Set the fields this model writes into ``label_field`` to None on ``samples``, so that
        a following ``samples.apply_model(model, label_field=...)`` leaves no stale values.

        Refuses (``ValueError``, nothing cleared) a ``label_field`` whose fields exist with
        another type (:meth:`check_label_field`). Returns the fields cleared.
        """
        self.check_label_field(samples, label_field)
        if samples.media_type != "image":
            return []
        schema = samples._dataset.get_field_schema()
        fields = [name for name in self.output_fields(label_field) if name in schema]
        if fields:
            samples.clear_sample_fields(fields)
        return fields

    def _load_model(self, config: QualiCLIPModelConfig):
        from qualiclip import load_model

        return load_model(config.weights, device=self._device, progress=False)

    def _build_transforms(self, config: QualiCLIPModelConfig):
        return None, False  # decoding happens in QualityGetItem; no resize by design

    def build_get_item(self, field_mapping: dict | None = None) -> QualityGetItem:
        return QualityGetItem(max_side=self.config.max_side, field_mapping=field_mapping)

    @property
    def has_collate_fn(self) -> bool:
        return True

    @staticmethod
    def collate_fn(batch: list) -> list:
        return _keep_list(batch)

    @property
    def pair_names(self) -> tuple[str, ...]:
        return tuple(self._model.PAIR_NAMES)

    @property
    def weights_info(self) -> dict[str, str]:
        return dict(self._model.weights_info)

    def _predict_all(self, imgs) -> list:
        return [self._prediction(scored) for scored in self._score(imgs)]

    def _prediction(self, scored):
        """One image's output: a float (or dict with the pair scores), or its failure."""
        if scored.error is not None:
            return self._failed(scored.image.name, scored.error)
        if self.config.pair_scores:
            return {"score": scored.score,
                    **dict(zip(self.pair_names, scored.pair_scores.tolist()))}
        return scored.score

    # --- embeddings -------------------------------------------------------------------------
    @property
    def has_embeddings(self) -> bool:
        return True

    def embed(self, arg) -> np.ndarray:
        return self.embed_all([arg])[0]

    def embed_all(self, args) -> np.ndarray:
        """``(N, D)`` unnormalised image embeddings; a row of NaN for an unreadable image."""
        dim = self._model.prompt_features.shape[-1]
        rows = []
        for scored in self._score(args):
            if scored.features is None:
                self._failed(scored.image.name, scored.error)
                rows.append(np.full(dim, np.nan))
            else:
                rows.append(scored.features.numpy().astype(float))
        self._last_embeddings = np.stack(rows)
        return self._last_embeddings

    def get_embeddings(self) -> np.ndarray:
        if self._last_embeddings is None:
            raise ValueError("no embeddings computed yet")
        return self._last_embeddings

    # --- helpers ----------------------------------------------------------------------------
    def _score(self, imgs) -> list:
        """Batch items (our GetItem's decoded images, tensors, PIL, arrays) -> one
        :class:`~qualiclip.inference.ImageScore` each, in order; one forward per size."""
        from qualiclip.images import source_name
        from qualiclip.inference import DecodedImage, ImageScore, group_by_shape, read_image

        images = []
        for index, img in enumerate(imgs):
            if isinstance(img, DecodedImage):
                images.append(img)
            elif isinstance(img, torch.Tensor) and self.config.max_side is None:
                images.append(DecodedImage(index, source_name(img, index), img))  # decoded
            else:
                images.append(read_image(img, index, self.config.max_side))
        scored = {id(image): ImageScore(image, error=image.error) for image in images
                  if image.tensor is None}
        for group in group_by_shape(images):
            scored.update((id(out.image), out) for out in self._scorer.score(group))
        return [scored[id(image)] for image in images]

    def _failed(self, name: str, message: str):
        self.read_errors[name] = message
        logger.warning("QualiCLIP: not scored: %s", message)
        if self.config.pair_scores:
            # Only non-None values: FiftyOne cannot infer a new field's type from None.
            return {"error": message}
        return None


def load_model(weights: str | None = None, device: str | None = None, pair_scores: bool = False,
               max_side: int | None = None, precision: str = "auto", backend: str = "auto",
               **options: Any) -> QualiCLIPModel:
    """A FiftyOne model for ``apply_model`` / ``compute_embeddings``.

    Args:
        weights: ``"qualiclip"`` (official, CC BY-NC 4.0), a local ``.pth`` or a URL;
            ``None`` (default): ``$QUALICLIP_WEIGHTS`` if set, else ``"qualiclip"``.
        device: ``"cuda"``, ``"cpu"``... (default: CUDA if available).
        pair_scores: predict the 7 attribute scores too (see :class:`QualiCLIPModelConfig`).
        max_side: cap the longer side; ``None`` keeps the native resolution (official).
        precision: ``"auto"`` (fp16 on CUDA, bf16 on CPUs with fast bf16, else fp32) or explicit.
        backend: ``"auto"`` (an installed CPU runtime for fp32 on the CPU, else torch),
            ``"torch"`` or ``"onnxruntime"``.
        **options: other :class:`fiftyone.utils.torch.TorchImageModelConfig` keys.
    """
    config = QualiCLIPModelConfig(dict(weights=weights, device=device,  # None: the config's rule
                                       pair_scores=pair_scores, max_side=max_side,
                                       precision=precision, backend=backend, **options))
    return QualiCLIPModel(config)


def _apply_model_call() -> tuple[Any, str] | None:
    """``(samples, label_field)`` of the ``fiftyone.core.models.apply_model`` call entering
    the model, or ``None`` when the model is entered some other way.

    FiftyOne passes a model neither the collection nor the label field; its ``apply_model``
    frame holds both (checked against fiftyone 1.22; tests/qualiclip_plugin/test_security.py
    fails if a release renames them, and then :func:`apply_model` below still checks).
    """
    frame = inspect.currentframe()
    try:
        while frame is not None:
            if (frame.f_code.co_name == "apply_model"
                    and frame.f_globals.get("__name__") == "fiftyone.core.models"):
                local = frame.f_locals
                if isinstance(local.get("label_field"), str) and "samples" in local:
                    return local["samples"], local["label_field"]
                return None
            frame = frame.f_back
        return None
    finally:
        del frame


#: Why a plain ``dataset.apply_model`` on a video collection is refused, and what to call.
VIDEO_APPLY_MODEL = (
    "QualiCLIP scores video datasets with its own decoder (sampled frames, a per-video "
    "summary, a recorded run): call qualiclip_plugin.fo_model.apply_model(dataset, model, "
    "label_field=...) or qualiclip_plugin.compute_image_quality(dataset, field=...) instead "
    "of dataset.apply_model")


def apply_model(samples, model: QualiCLIPModel, label_field: str, clear: bool = True,
                fps: float | str | None = None, segment_seconds: float | None = None,
                **kwargs: Any) -> dict[str, Any] | None:
    """``samples.apply_model(model, label_field=label_field, **kwargs)`` plus the checks that
    FiftyOne's own ``apply_model`` gives a model no chance to make.

    On a video collection the plugin's scoring run does the work instead (the operator's:
    docs/plugin.md, "Video datasets"), with the model's weights, device, ``max_side``,
    precision, backend and ``pair_scores``: frames sampled at ``fps`` (default 1; ``"all"``:
    every frame) into ``frames.<label_field>`` (``frames.<label_field>_<attribute>`` with
    ``pair_scores``), the per-video mean into ``<label_field>`` with ``<label_field>_min``,
    ``_p10`` and ``_segments``; ``clear`` rescores every video, else videos already scored
    are skipped. Returns the run's summary then (``None`` for images).

    Args:
        samples: a FiftyOne image or video collection (dataset or view).
        model: from :func:`load_model`.
        label_field: the field (``pair_scores=False``) or field prefix to write.
        clear: first empty this model's fields on ``samples`` (:meth:`QualiCLIPModel.clear_outputs`)
            so a rerun leaves no stale score or error.
        **kwargs: passed on (``batch_size``, ``num_workers``, ``progress``, ...).

    Raises:
        ValueError: a field this would write exists with another type (e.g. an ``IntField``,
            into which FiftyOne would truncate every score to 0); raised before anything is
            written.
    """
    if samples.media_type == "video":
        from qualiclip_plugin.api import compute_image_quality

        config = model.config
        return compute_image_quality(
            samples, field=label_field, weights=config.weights, device=str(model._device),
            max_side=config.max_side, precision=config.precision, backend=config.backend,
            pair_scores=config.pair_scores, overwrite=clear, fps=fps,
            segment_seconds=segment_seconds, flag_tag=None,
            **{k: v for k, v in kwargs.items() if k in ("batch_size", "chunk_size")})
    if clear:
        model.clear_outputs(samples, label_field)  # checks the fields first
    else:
        model.check_label_field(samples, label_field)
    samples.apply_model(model, label_field=label_field, **kwargs)
    return None
