"""One calibration request's checks, in the plugin's order: parse -> policy -> ownership ->
ratings. Every way "Calibrate to my ratings" reaches a run (the App form, ``foo.execute_operator``,
a delegated worker, which checks again where it runs) goes through :func:`check`, which only
calls the trust layer's rules (:mod:`~qualiclip_plugin.trust.request`,
:mod:`~qualiclip_plugin.trust.policy`, :mod:`~qualiclip_plugin.trust.protection`) and the
library's own refusal of too few or constant ratings.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from qualiclip_plugin.calibration.ratings import DEFAULT_RATINGS_FIELD, ratings_of
from qualiclip_plugin.trust import protection, provenance
from qualiclip_plugin.trust.policy import AppPolicy, check_weights, weights_unavailable
from qualiclip_plugin.trust.request import (
    DEFAULT_WEIGHTS,
    RequestError,
    check_field_name,
    given,
    parse_int,
)

#: More ratings than this default to a delegated (background) run: embedding each rated image
#: at native resolution takes 0.15-0.5 s on a CPU with RN50 (docs/calibration.md), on top of
#: the fits, and an immediate run is cut off by FIFTYONE_OPERATOR_TIMEOUT (600 s).
IMMEDIATE_MAX_RATINGS = 100
#: Without a GPU, more optimisation steps than this (steps per fit x (folds + 1) fits) default
#: to a delegated run too: each step is a forward and backward pass of the RN50 text tower,
#: 0.35-0.55 s on a 2-core CPU (benchmarks/RESULTS.md), so the default 200 x 6 steps take
#: 7-11 minutes there, longer than the App waits for an immediate run.
IMMEDIATE_MAX_CPU_STEPS = 600
DEFAULT_STEPS = 200
MAX_STEPS = 2000
DEFAULT_FOLDS = 5
MAX_FOLDS = 10


@dataclass(frozen=True)
class CalibrateRequest:
    """A validated calibration request: the ratings field, the base weights (a registered name
    or the real path of an offered checkpoint), the checkpoint's name, the fit's settings."""

    ratings_field: str = DEFAULT_RATINGS_FIELD
    weights: str = DEFAULT_WEIGHTS
    name: str = ""
    overwrite: bool = False
    steps: int = DEFAULT_STEPS
    folds: int = DEFAULT_FOLDS

    def to_params(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Checked:
    """A request that passed every check: where the checkpoint goes, and the ratings."""

    request: CalibrateRequest
    output: Path
    ratings: list[tuple[str, float]]


def _fit_settings(p: dict[str, Any]) -> tuple[int, int]:
    """``(steps per fit, folds)`` of given form params; raises :class:`RequestError`."""
    return (parse_int(p.get("steps"), "steps", DEFAULT_STEPS, minimum=1, maximum=MAX_STEPS),
            parse_int(p.get("folds"), "folds", DEFAULT_FOLDS, minimum=2, maximum=MAX_FOLDS))


def default_name(dataset_name: str, ratings_field: str) -> str:
    """The checkpoint name the form proposes: ``<dataset>-<ratings field>`` as a plain name."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", dataset_name).strip(".-")[:60] or "dataset"
    return f"{slug}-{ratings_field}"


def parse(params: dict[str, Any], dataset_name: str) -> CalibrateRequest:
    """Form params -> :class:`CalibrateRequest` (no policy, no data); raises
    :class:`RequestError`."""
    p = given(params)
    field = str(p.get("ratings_field") or DEFAULT_RATINGS_FIELD).strip()
    check_field_name(field, "ratings field")
    steps, folds = _fit_settings(p)
    return CalibrateRequest(
        ratings_field=field, weights=str(p.get("weights") or DEFAULT_WEIGHTS).strip(),
        name=str(p.get("name") or default_name(dataset_name, field)),
        overwrite=bool(p.get("overwrite", False)), steps=steps, folds=folds)


def check(dataset, params: dict[str, Any], policy: AppPolicy) -> Checked:
    """All checks of one calibration request, in order; raises :class:`RequestError` (one
    sentence: what to change)."""
    # 1. parse
    request = parse(params, dataset.name)
    # 2. policy: offered base weights, loadable now; a name in the admin's weights folder
    weights = check_weights(request.weights, policy)
    why = weights_unavailable(weights, policy)
    if why:
        raise RequestError(why)
    # 3. ownership: the ratings must be the plugin's; never over a file the plugin did not write
    field = request.ratings_field
    if provenance.ratings_recorded(dataset, field) is None or dataset.get_field(field) is None:
        protection.check_ratings_field(dataset, field)  # a user's own field: its one reason
        raise RequestError(f"no ratings in '{field}' on this dataset yet: rate samples in the "
                           "Image quality panel first (good / bad or 1-5)")
    output = protection.calibrated_file(policy, request.name, request.overwrite)
    # 4. ratings: the library's refusals (too few, all equal), before any image is read
    ratings = ratings_of(dataset, field)
    _check_ratings(ratings, request.folds)
    return Checked(request=CalibrateRequest(**{**request.to_params(), "weights": weights}),
                   output=output, ratings=ratings)


def _check_ratings(ratings: list[tuple[str, float]], folds: int) -> None:
    from qualiclip.calibrate import CalibrationError, check_ratings, mean_rating_per_image

    _, values = mean_rating_per_image(ratings)
    try:
        check_ratings(values, folds)
    except CalibrationError as exc:
        raise RequestError(str(exc)) from None


def rating_count(dataset, params: dict[str, Any]) -> int:
    """How many ratings the request's field holds (0 when unknown): the delegation default."""
    try:
        field = str(given(params).get("ratings_field") or DEFAULT_RATINGS_FIELD)
        if dataset.get_field(field) is None:
            return 0
        return dataset.exists(field).count()
    except Exception:  # a form must render even when the field cannot be read
        return 0


def delegate_by_default(ratings: int, params: dict[str, Any]) -> bool:
    """The form's "delegate" default for ``ratings`` ratings (:func:`rating_count`): above
    :data:`IMMEDIATE_MAX_RATINGS`, or on a server without a GPU above
    :data:`IMMEDIATE_MAX_CPU_STEPS` optimisation steps in all."""
    if ratings > IMMEDIATE_MAX_RATINGS:
        return True
    try:
        steps, folds = _fit_settings(given(params))
    except RequestError:  # the form shows the refusal; the default does not matter then
        return False
    return steps * (folds + 1) > IMMEDIATE_MAX_CPU_STEPS and not _has_gpu()


def _has_gpu() -> bool:
    import torch  # only here: the form of an App server that has not scored yet stays light

    return torch.cuda.is_available()
