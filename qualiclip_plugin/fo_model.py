"""QualiCLIP as a FiftyOne model, for ``dataset.apply_model`` and ``compute_embeddings``.

Built like FiftyOne's own open_clip wrapper (config + ``_load_model`` / ``_build_transforms`` /
``_predict_all``), with three departures that the scoring contract forces:

* **Native resolution**: images are not resized, so a batch holds differently sized tensors. The
  model declares ``ragged_batches=False`` (else FiftyOne silently drops to batch size 1) and a
  collate function that keeps the list; ``_predict_all`` runs each same-size group as one batch.
* **Per-image failures**: FiftyOne's loader drops a whole batch when one file fails to load, so
  images are read by our own ``GetItem`` (in the DataLoader workers, so ``num_workers`` works)
  that turns a read error into a :class:`ReadFailure` value. The failed sample gets no score (with
  ``pair_scores=True`` an ``<label_field>_error`` string); its batch mates are scored normally.
* **Reruns**: like every FiftyOne model, ``apply_model`` writes only the values a prediction
  has (FiftyOne does not persist ``None`` through the field-selected views it writes with), so
  rerunning into the same ``label_field`` keeps an old score for an image that now fails, and an
  old error for one fixed since. :meth:`QualiCLIPModel.clear_outputs` empties those fields on a
  collection first, for a clean rerun; the operator does this itself.
* Scores come from the QualiCLIP module's own methods (``image_features`` then
  ``pair_scores_from_features``) under :func:`qualiclip.precision.autocast_context`, the same
  path :mod:`qualiclip.scoring` runs, so ``apply_model`` and the operator agree.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import fiftyone.utils.torch as fout
import numpy as np
import torch

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReadFailure:
    """An image that could not be read; stands in for its tensor in a batch."""

    path: str
    message: str


class QualityGetItem(fout.GetItem):
    """Loads ``filepath`` with :func:`qualiclip.images.load_image`; never raises."""

    def __init__(self, max_side: int | None = None, field_mapping: dict | None = None) -> None:
        self.max_side = max_side
        super().__init__(field_mapping=field_mapping)

    @property
    def required_keys(self) -> list[str]:
        return ["filepath"]

    def __call__(self, d: dict) -> torch.Tensor | ReadFailure:
        return _load(d["filepath"], self.max_side)


def _load(source: Any, max_side: int | None) -> torch.Tensor | ReadFailure:
    from qualiclip.images import ImageReadError, load_image, source_name

    try:
        # uint8 where possible: a quarter of the bytes to pass between processes.
        return load_image(source, max_side=max_side, as_uint8=True).tensor
    except ImageReadError as exc:
        return ReadFailure(source_name(source), str(exc))
    except Exception as exc:  # whatever a decoder throws stays with this image
        name = source_name(source)
        return ReadFailure(name, f"{name}: {exc.__class__.__name__}: {exc}")


def _keep_list(batch: list) -> list:
    return list(batch)


class QualiCLIPModelConfig(fout.TorchImageModelConfig):
    """Configuration of :class:`QualiCLIPModel`.

    Args (keys of ``d``, besides :class:`fiftyone.utils.torch.TorchImageModelConfig`'s):
        weights ("qualiclip"): official weights, a local checkpoint path or a URL.
        pair_scores (False): predict a dict instead of a float: ``score`` and the 7 attribute
            scores, or ``error`` for an unreadable image; written as ``<label_field>_score``,
            ``<label_field>_<attribute>`` and ``<label_field>_error``.
        max_side (None): cap the longer side in pixels; ``None`` = native resolution.
        precision ("auto"): ``auto``, ``fp32``, ``fp16`` (CUDA) or ``bf16``.
    """

    def __init__(self, d: dict) -> None:
        d = dict(d)
        d.setdefault("ragged_batches", False)
        super().__init__(d)
        self.weights = str(self.parse_raw(d, "weights", default="qualiclip"))
        self.pair_scores = self.parse_bool(d, "pair_scores", default=False)
        self.max_side = self.parse_raw(d, "max_side", default=None)
        self.precision = self.parse_string(d, "precision", default="auto")


class QualiCLIPModel(fout.TorchImageModel):
    """A FiftyOne model predicting QualiCLIP quality scores; embeddings are the image features.

    After ``apply_model``, :attr:`read_errors` maps the paths that could not be read to why.
    """

    def __init__(self, config: QualiCLIPModelConfig) -> None:
        from qualiclip.precision import resolve_precision

        super().__init__(config)
        self._precision = resolve_precision(config.precision, self._device)
        # Same rule as qualiclip.scoring: channels_last where it picks faster kernels.
        self._memory_format = (torch.channels_last
                               if self._precision != "fp32" or self._device.type == "cuda"
                               else torch.contiguous_format)
        self.read_errors: dict[str, str] = {}
        self._last_embeddings: np.ndarray | None = None

    # --- TorchImageModel overrides ----------------------------------------------------------
    def output_fields(self, label_field: str) -> dict[str, type]:
        """The fields ``apply_model(model, label_field=...)`` writes, with their types."""
        import fiftyone as fo

        if not self.config.pair_scores:
            return {label_field: fo.FloatField}
        fields = {f"{label_field}_{k}": fo.FloatField for k in ("score", *self.pair_names)}
        return {**fields, f"{label_field}_error": fo.StringField}

    def clear_outputs(self, samples, label_field: str) -> list[str]:
        """Set the fields this model writes into ``label_field`` to None on ``samples``, so that
        a following ``samples.apply_model(model, label_field=...)`` leaves no stale values.

        Only fields that exist with the type this model writes are touched (a field of another
        type is left for ``apply_model`` to refuse). Returns the fields cleared.
        """
        if samples.media_type != "image":  # frames of videos: FiftyOne's own rules apply
            return []
        schema = samples._dataset.get_field_schema()
        fields = [name for name, ftype in self.output_fields(label_field).items()
                  if type(schema.get(name)) is ftype]
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
        inputs = self._prepare(imgs)
        features = self._features(inputs)
        outputs: list = []
        for item, feature in zip(inputs, features):
            if isinstance(item, ReadFailure):
                outputs.append(self._failed(item))
                continue
            pair = self._model.pair_scores_from_features(feature[None])[0].cpu().tolist()
            score = float(sum(pair) / len(pair))
            if self.config.pair_scores:
                outputs.append({"score": score, **dict(zip(self.pair_names, pair))})
            else:
                outputs.append(score)
        return outputs

    # --- embeddings -------------------------------------------------------------------------
    @property
    def has_embeddings(self) -> bool:
        return True

    def embed(self, arg) -> np.ndarray:
        return self.embed_all([arg])[0]

    def embed_all(self, args) -> np.ndarray:
        """``(N, D)`` unnormalised image embeddings; a row of NaN for an unreadable image."""
        inputs = self._prepare(args)
        features = self._features(inputs)
        dim = self._model.prompt_features.shape[-1]
        rows = []
        for item, feature in zip(inputs, features):
            if isinstance(item, ReadFailure):
                self._failed(item)
                rows.append(np.full(dim, np.nan))
            else:
                rows.append(feature.float().cpu().numpy().astype(float))
        self._last_embeddings = np.stack(rows)
        return self._last_embeddings

    def get_embeddings(self) -> np.ndarray:
        if self._last_embeddings is None:
            raise ValueError("no embeddings computed yet")
        return self._last_embeddings

    # --- helpers ----------------------------------------------------------------------------
    def _prepare(self, imgs) -> list:
        """Batch items (tensors, PIL, arrays, :class:`ReadFailure`) -> tensors or failures."""
        prepared = []
        for img in imgs:
            if isinstance(img, (ReadFailure, torch.Tensor)) and not (
                    isinstance(img, torch.Tensor) and self.config.max_side is not None):
                prepared.append(img)
            else:
                prepared.append(_load(img, self.config.max_side))
        return prepared

    def _features(self, inputs: list) -> list:
        """Image features per input (``None`` for failures), one forward per same-size group."""
        from qualiclip.images import to_float
        from qualiclip.precision import autocast_context

        groups: dict[tuple, list[int]] = defaultdict(list)
        for index, item in enumerate(inputs):
            if isinstance(item, torch.Tensor):
                groups[tuple(item.shape)].append(index)
        features: list = [None] * len(inputs)
        with torch.inference_mode():
            for indices in groups.values():
                batch = torch.stack([to_float(inputs[i].to(self._device)) for i in indices])
                batch = batch.contiguous(memory_format=self._memory_format)
                with autocast_context(self._precision, self._device):
                    out = self._model.image_features(batch)
                for i, row in zip(indices, out.float()):
                    features[i] = row
        return features

    def _failed(self, failure: ReadFailure):
        self.read_errors[failure.path] = failure.message
        logger.warning("QualiCLIP: not scored: %s", failure.message)
        if self.config.pair_scores:
            # Only non-None values: FiftyOne cannot infer a new field's type from None.
            return {"error": failure.message}
        return None


def load_model(weights: str = "qualiclip", device: str | None = None, pair_scores: bool = False,
               max_side: int | None = None, precision: str = "auto",
               **options: Any) -> QualiCLIPModel:
    """A FiftyOne model for ``apply_model`` / ``compute_embeddings``.

    Args:
        weights: ``"qualiclip"`` (official, CC BY-NC 4.0), a local ``.pth`` or a URL.
        device: ``"cuda"``, ``"cpu"``... (default: CUDA if available).
        pair_scores: predict the 7 attribute scores too (see :class:`QualiCLIPModelConfig`).
        max_side: cap the longer side; ``None`` keeps the native resolution (official).
        precision: ``"auto"`` (fp16 on CUDA, bf16 on CPUs with fast bf16, else fp32) or explicit.
        **options: other :class:`fiftyone.utils.torch.TorchImageModelConfig` keys.
    """
    config = QualiCLIPModelConfig(dict(weights=str(weights), device=device,
                                       pair_scores=pair_scores, max_side=max_side,
                                       precision=precision, **options))
    return QualiCLIPModel(config)
