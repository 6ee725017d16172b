"""The operator's parameters: defaults, parsing and validation (no torch, no model).

One dataclass is the contract between the App form, Python callers and the runner; every check
that can be made without touching the model or the data happens in :func:`parse_request`, so a
bad request is refused before anything is written.
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
from dataclasses import asdict, dataclass, fields
from typing import Any

from qualiclip.constants import BACKENDS, DEFAULT_BATCH_SIZE, MIN_SIDE, PRECISIONS
from qualiclip.prompts import PAIR_NAMES  # the library's torch-free modules only
from qualiclip.weights import REGISTRY, is_url
from qualiclip_plugin.trust.errors import RequestError
from qualiclip_plugin.trust.policy import AppPolicy, check_weights, check_workers

#: Targets larger than this default to delegated (background) execution. An immediate run
#: blocks an App server thread and is cut off by FIFTYONE_OPERATOR_TIMEOUT (600 s) while the work
#: goes on; RN50 at native resolution scores ~2-10 images/s on a CPU, so 500 images finish
#: within the timeout even there, and anything larger belongs in a worker.
IMMEDIATE_MAX_SAMPLES = 500
#: Samples scored between two writes: an interrupted run loses at most this many scores.
DEFAULT_CHUNK_SIZE = 1000
DEFAULT_FIELD = "quality"
DEFAULT_WEIGHTS = "qualiclip"
DEFAULT_FLAG_TAG = "low_quality"
#: Video datasets: frames sampled per second by default (the library's default too).
DEFAULT_FPS = 1.0
#: Video datasets: the worst segment's length (``qualiclip.video.DEFAULT_SEGMENT_SECONDS``).
DEFAULT_SEGMENT_SECONDS = 3.0
#: Sample-level fields a video run writes beside ``<field>`` (the mean): ``<field>_<suffix>``.
VIDEO_SUMMARY_SUFFIXES = ("min", "p10", "segments")
FLAG_MODES = ("none", "percent", "threshold")
#: The library's own values (qualiclip.constants imports no torch, so the App starts fast).
MIN_MAX_SIDE = MIN_SIDE
#: Larger than any image a decoder opens; bounds what is stored in run records (MongoDB ints).
MAX_MAX_SIDE = 1_000_000

#: Used with ``fullmatch``: ``$`` alone also matches before a trailing newline.
_IDENTIFIER = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
#: Longest field name a form may give. The run writes ``<field>_<attribute>`` (up to 16 more
#: characters) and MongoDB index names and keys beside it; FiftyOne sets no limit of its own,
#: so a 5,000-character name was accepted, wrote its first chunk and failed at the index.
MAX_FIELD_NAME = 64
_RESERVED = {"id", "_id", "filepath", "tags", "metadata", "created_at", "last_modified_at",
             "media_type", "_media_type", "_rand", "_dataset_id"}


@dataclass(frozen=True)
class ScoreRequest:
    """A validated scoring request (docs/plugin.md, "In the App": what each parameter means)."""

    field: str = DEFAULT_FIELD
    weights: str = DEFAULT_WEIGHTS
    device: str | None = None
    batch_size: int = DEFAULT_BATCH_SIZE
    num_workers: int | None = None
    max_side: int | None = None
    precision: str = "auto"
    backend: str = "auto"
    pair_scores: bool = True
    overwrite: bool = False
    flag_percent: float | None = None
    flag_threshold: float | None = None
    flag_field: str | None = None
    flag_tag: str | None = DEFAULT_FLAG_TAG
    flag_view: str | None = None
    chunk_size: int = DEFAULT_CHUNK_SIZE
    num_shards: int = 1
    #: Video datasets only: frames sampled per second (``None``: every frame) and the length
    #: in seconds of the worst segment each video's summary reports.
    fps: float | None = DEFAULT_FPS
    segment_seconds: float = DEFAULT_SEGMENT_SECONDS
    shard_index: int | None = None
    shard_bounds: tuple[str, str | None] | None = None

    @property
    def flagging(self) -> bool:
        return self.flag_percent is not None or self.flag_threshold is not None

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> ScoreRequest:
        """Rebuild a request stored with :meth:`to_params` (already validated when stored)."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in params.items() if k in known}
        if values.get("shard_bounds"):
            values["shard_bounds"] = tuple(values["shard_bounds"])
        return cls(**values)

    def to_params(self) -> dict[str, Any]:
        params = asdict(self)
        params["shard_bounds"] = list(self.shard_bounds) if self.shard_bounds else None
        return params


#: Form values that only the plugin itself may set (shards come from stored run plans).
INTERNAL_PARAMS = ("shard_index", "shard_bounds")
MAX_BATCH_SIZE = 1024
MAX_CHUNK_SIZE = 100_000
MAX_SHARDS = 256
#: Bounds of the video options: more than 1000 frames/s is no video; a segment longer than a
#: day would only ever be the whole video.
MAX_FPS = 1000.0
MAX_SEGMENT_SECONDS = 86_400.0
_DEVICE = re.compile(r"cpu|mps|cuda(:[0-9]{1,2})?")  # fullmatch


@dataclass(frozen=True)
class ModelOptions:
    """How to load the model: weights (registered name or checkpoint path), device, max side."""

    weights: str
    device: str | None
    max_side: int | None


def parse_model_options(params: dict[str, Any], policy: AppPolicy | None) -> ModelOptions:
    """Weights, device and max side from params; raises :class:`RequestError`.

    ``policy`` is the server's policy for operator executions (see :mod:`.policy`); ``None``
    means a trusted Python caller: any local path or URL is accepted.
    """
    p = given(params)
    weights = str(p.get("weights") or DEFAULT_WEIGHTS).strip()
    if policy is not None:
        weights = check_weights(weights, policy)
    elif not _is_registered_or_url(weights):
        path = os.path.expanduser(weights)
        if not os.path.isfile(path):
            raise RequestError(
                f"weights {weights!r}: no such file. Give 'qualiclip' (official weights) or "
                "the path of a .pth checkpoint readable by the machine that runs the operator")
        weights = path
    device = p.get("device")
    device = None if device is None else str(device).strip().lower() or None
    if device is not None and not _DEVICE.fullmatch(device):
        raise RequestError(f"device must be cpu, cuda or cuda:N (or empty for CUDA when "
                           f"available), got {str(device)[:40]!r}")
    return ModelOptions(weights=weights, device=device, max_side=parse_max_side(p.get("max_side")))


def parse_max_side(value: Any) -> int | None:
    """``max_side`` from a form or a loader's arguments: ``None``/empty/0 = native resolution,
    else a whole number of pixels >= :data:`MIN_MAX_SIDE`; raises :class:`RequestError`."""
    max_side = parse_int(value, "max_side", None, minimum=0, maximum=MAX_MAX_SIDE) or None
    if max_side is not None and max_side < MIN_MAX_SIDE:
        raise RequestError(f"max_side must be at least {MIN_MAX_SIDE} px (or empty for native "
                           f"resolution), got {max_side}")
    return max_side


def parse_backend(value: Any, precision: str = "auto") -> str:
    """The ``backend`` parameter: one of :data:`~qualiclip.constants.BACKENDS` (empty =
    ``auto``); a CPU runtime must be installed on this server and runs fp32 only. Checked
    without importing torch or the runtime (the App form calls this)."""
    backend = value or "auto"
    if backend not in BACKENDS:
        raise RequestError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend in ("auto", "torch"):
        return backend
    if precision not in ("auto", "fp32"):
        raise RequestError(f"backend {backend!r} runs exact fp32: choose precision fp32 (or "
                           f"auto), or backend torch for {precision}")
    # The rule of qualiclip.backends.selection.runtime_available (the runtime and onnx, which
    # the export needs), checked here without importing torch.
    if any(importlib.util.find_spec(package) is None for package in (backend, "onnx")):
        raise RequestError(f"backend {backend!r} is not installed on this server (its admin "
                           "can add it: pip install \"qualiclip[cpu-fast]\"); choose auto or "
                           "torch")
    return backend


def parse_request(params: dict[str, Any], policy: AppPolicy | None = None) -> ScoreRequest:
    """App or Python params -> :class:`ScoreRequest`; raises :class:`RequestError`.

    Empty strings from App text boxes mean "not set". ``policy``: see
    :func:`parse_model_options`; with a policy, worker counts are bounded by it too.
    """
    internal = [k for k in INTERNAL_PARAMS if (params or {}).get(k) not in (None, "")]
    if internal:
        raise RequestError(f"{', '.join(internal)} cannot be given: shards are planned by the "
                           "plugin (set num_shards instead)")
    p = given(params)
    field = p.get("field") or DEFAULT_FIELD
    check_field_name(field, "field")
    model = parse_model_options(p, policy)

    batch_size = parse_int(p.get("batch_size"), "batch_size", DEFAULT_BATCH_SIZE, minimum=1,
                           maximum=MAX_BATCH_SIZE)
    num_workers = parse_int(p.get("num_workers"), "num_workers", None, minimum=0,
                            maximum=os.cpu_count() or 1)
    if policy is not None:
        check_workers(num_workers, policy)
    precision = p.get("precision") or "auto"
    if precision not in PRECISIONS:
        raise RequestError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    backend = parse_backend(p.get("backend"), precision)
    chunk_size = parse_int(p.get("chunk_size"), "chunk_size", DEFAULT_CHUNK_SIZE, minimum=1,
                           maximum=MAX_CHUNK_SIZE)
    num_shards = parse_int(p.get("num_shards"), "num_shards", 1, minimum=1, maximum=MAX_SHARDS)
    fps = parse_fps(p.get("fps"))
    segment = parse_float(p.get("segment_seconds"), "segment_seconds")
    segment = DEFAULT_SEGMENT_SECONDS if segment is None else segment
    if not 0 < segment <= MAX_SEGMENT_SECONDS:
        raise RequestError(f"segment_seconds must be in (0, {MAX_SEGMENT_SECONDS:g}] seconds, "
                           f"got {segment:g}")

    percent = parse_float(p.get("flag_percent"), "flag_percent")
    threshold = parse_float(p.get("flag_threshold"), "flag_threshold")
    mode = p.get("flag_mode")
    if mode is not None:  # the App form: the radio decides which number counts
        if mode not in FLAG_MODES:
            raise RequestError(f"flag_mode must be one of {', '.join(FLAG_MODES)}, got {mode!r}")
        percent = percent if mode == "percent" else None
        threshold = threshold if mode == "threshold" else None
        if mode != "none" and percent is None and threshold is None:
            raise RequestError(f"flag_mode is {mode!r} but flag_{mode} is not set")
    if percent is not None and threshold is not None:
        raise RequestError("give flag_percent or flag_threshold, not both")
    if percent is not None and not 0 < percent <= 100:
        raise RequestError(f"flag_percent must be in (0, 100], got {percent}")
    if threshold is not None and not 0 <= threshold <= 1:
        raise RequestError(f"flag_threshold must be in [0, 1] (scores are), got {threshold}")
    flagging = percent is not None or threshold is not None
    flag_field = p.get("flag_field") or (f"{field}_flagged" if flagging else None)
    if flag_field is not None:
        check_field_name(flag_field, "flag_field")
        if flag_field in _score_fields(field):
            raise RequestError(f"flag_field {flag_field!r} is one of the fields the scores go "
                               f"into ('{field}', '{field}_error', '{field}_<attribute>'); "
                               f"choose another name, e.g. '{field}_flagged'")
    tag = (params or {}).get("flag_tag", DEFAULT_FLAG_TAG)
    tag = None if tag in (None, False) else str(tag).strip() or None
    if tag is not None and (len(tag) > 100 or any(not c.isprintable() for c in tag)):
        raise RequestError("flag_tag must be at most 100 printable characters")
    view_name = p.get("flag_view")
    view_name = None if view_name is None else str(view_name).strip() or None
    if view_name is not None:
        _check_view_name(view_name)

    return ScoreRequest(
        field=field, weights=model.weights, device=model.device, batch_size=batch_size,
        num_workers=num_workers, max_side=model.max_side, precision=precision, backend=backend,
        pair_scores=bool(p.get("pair_scores", True)), overwrite=bool(p.get("overwrite", False)),
        flag_percent=percent, flag_threshold=threshold,
        flag_field=flag_field if flagging else None, flag_tag=tag if flagging else None,
        flag_view=(view_name or None) if flagging else None, chunk_size=chunk_size,
        num_shards=num_shards, fps=fps, segment_seconds=segment,
    )


def parse_fps(value: Any) -> float | None:
    """The video ``fps`` option: empty = :data:`DEFAULT_FPS`, ``"all"`` = every frame
    (``None``), else a number of frames per second in (0, :data:`MAX_FPS`]; raises
    :class:`RequestError`."""
    if value is None or value == "":
        return DEFAULT_FPS
    if isinstance(value, str) and value.strip().lower() == "all":
        return None
    fps = parse_float(value, "fps")
    if not 0 < fps <= MAX_FPS:
        raise RequestError(f"fps must be a number of frames per second in (0, {MAX_FPS:g}], "
                           f"or 'all' for every frame; got {_quote(value)}")
    return fps


def given(params: dict[str, Any] | None) -> dict[str, Any]:
    """Params with the App's empty values (``None``, ``""``) dropped, so defaults apply."""
    return {k: v for k, v in (params or {}).items() if v is not None and v != ""}


def check_field_name(name: str, what: str) -> None:
    """Refuse names that are not plain identifiers of at most :data:`MAX_FIELD_NAME`
    characters, or are FiftyOne's built-in fields."""
    if not isinstance(name, str):
        raise RequestError(f"{what} must be a field name, got {type(name).__name__}")
    if len(name) > MAX_FIELD_NAME:
        raise RequestError(f"{what} {name[:20]!r}... is {len(name)} characters long: use at "
                           f"most {MAX_FIELD_NAME}")
    if not _IDENTIFIER.fullmatch(name) or name in _RESERVED:
        raise RequestError(f"{what} {name!r} is not usable: use letters, digits and '_', "
                           "starting with a letter, and not a built-in field")


def _score_fields(field: str) -> set[str]:
    # The summary fields of video datasets too: a flag field may not take their names either.
    return {field, f"{field}_error", *(f"{field}_{name}" for name in PAIR_NAMES),
            *(f"{field}_{name}" for name in VIDEO_SUMMARY_SUFFIXES)}


#: A saved view's name from a form. FiftyOne accepts any name that has a slug ("../../etc" is
#: saved as a view named "../../etc", slug "etc"), so the plugin asks for plain words.
_VIEW_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 _-]{0,99}")  # fullmatch


def _check_view_name(name: str) -> None:
    if not _VIEW_NAME.fullmatch(name):
        raise RequestError(f"flag_view {name[:40]!r} cannot name a saved view: use at most 100 "
                           "letters, digits, spaces, '-' or '_', starting with a letter or digit")


def _is_registered_or_url(weights: str) -> bool:
    return weights in REGISTRY or is_url(weights)


def parse_int(value: Any, name: str, default: int | None, minimum: int,
              maximum: int | None = None) -> int | None:
    """A whole number in ``[minimum, maximum]`` from a form value; ``None`` gives ``default``."""
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        raise RequestError(f"{name} must be a whole number, got {value!r}")
    try:
        # Python ints are exact at any size (10**400 does not fit a float: OverflowError).
        number = value if isinstance(value, int) else float(value)
    except (TypeError, ValueError, OverflowError):
        raise RequestError(f"{name} must be a whole number, got {_quote(value)}") from None
    if isinstance(number, float):
        if not math.isfinite(number) or number != int(number):
            raise RequestError(f"{name} must be a whole number >= {minimum}, got "
                               f"{_quote(value)}")
        number = int(number)
    if number < minimum:
        raise RequestError(f"{name} must be a whole number >= {minimum}, got {_quote(value)}")
    if maximum is not None and number > maximum:
        raise RequestError(f"{name} must be at most {maximum}, got {_quote(value)}")
    return number


def parse_float(value: Any, name: str) -> float | None:
    """A finite number from a form value, or ``None`` when not given."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise RequestError(f"{name} must be a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: an int like 10**400
        raise RequestError(f"{name} must be a finite number in range, got {_quote(value)}"
                           ) from None
    if not math.isfinite(number):
        raise RequestError(f"{name} must be a finite number, got {_quote(value)}")
    return number


def _quote(value: Any, limit: int = 40) -> str:
    """``value`` for a message, cut short: a 400-digit number stays one readable line."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."
