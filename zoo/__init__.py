"""FiftyOne remote zoo model source for QualiCLIP (``manifest.json`` beside this file).

    import fiftyone.zoo as foz
    foz.register_zoo_model_source("https://github.com/qualiclip/qualiclip")
    model = foz.load_zoo_model("qualiclip")                       # official weights
    model = foz.load_zoo_model("qualiclip", weights="ft.pth")     # a fine-tuned checkpoint
    dataset.apply_model(model, label_field="quality")

FiftyOne copies this folder into its model zoo directory and executes this file under a module
name taken from the manifest's ``name`` (``qualiclip-zoo``): never ``qualiclip``, which would
replace the library package in ``sys.modules``. It needs the ``qualiclip`` package installed
(the manifest's requirements) and only translates zoo calls into
:func:`qualiclip_plugin.load_model`, so the zoo model is the plugin's FiftyOne model.

Which weights: the ``weights`` parameter, else ``$QUALICLIP_WEIGHTS``, else the official release
(CC BY-NC 4.0: non-commercial use only), downloaded into the qualiclip weights cache: the
library's rule (:func:`qualiclip.weights.which_weights`), not a copy of it.
"""

import json
import logging
import os

logger = logging.getLogger(__name__)


def download_model(model_name, model_path):
    """Fetch the default weights into qualiclip's cache and record them at ``model_path``.

    A failed download (e.g. an offline machine) is not fatal: weights given when loading, or
    placed in the cache later, still work; loading says what is missing.
    """
    from qualiclip.weights import resolve_weights, which_weights

    weights = which_weights()
    record = {"weights": weights}
    try:
        path, name = resolve_weights(weights, progress=True)
        record.update(weights=name, path=str(path))
    except Exception as exc:  # offline, or a path that is not there yet
        logger.warning("QualiCLIP weights %r not fetched now (%s); give weights=<checkpoint> "
                       "when loading, or place the file in the qualiclip cache", weights, exc)
    os.makedirs(os.path.dirname(model_path), exist_ok=True)
    with open(model_path, "w", encoding="utf-8") as handle:
        json.dump(record, handle)


def load_model(model_name, model_path, weights=None, **kwargs):
    """The plugin's FiftyOne model (:func:`qualiclip_plugin.load_model`).

    Args:
        weights: registered name, checkpoint path or URL (default: ``$QUALICLIP_WEIGHTS``,
            else the official weights).
        **kwargs: ``device``, ``pair_scores``, ``max_side``, ``precision`` and FiftyOne's
            ``TorchImageModelConfig`` options.
    """
    import qualiclip_plugin
    from qualiclip_plugin.trust.request import RequestError, parse_max_side

    if "max_side" in kwargs:
        # Checked here, once: a bad value would otherwise load the model and fail every image.
        try:
            kwargs["max_side"] = parse_max_side(kwargs["max_side"])
        except RequestError as exc:
            raise ValueError(f"QualiCLIP zoo model: {exc}") from None
    return qualiclip_plugin.load_model(weights=weights, **kwargs)  # None: the default rule


def resolve_input(model_name, ctx):
    """Form of the '@voxel51/zoo' plugin's "apply zoo model" operator: no paths or URLs from
    the App; the server's admin picks the weights with ``QUALICLIP_WEIGHTS``."""
    import fiftyone.operators.types as types

    inputs = types.Object()
    inputs.bool("pair_scores", default=False, label="Store the 7 attribute scores")
    inputs.int("max_side", label="Max side (px)",
               description="Downscale larger images; empty = native resolution")
    return types.Property(inputs)


def parse_parameters(model_name, ctx, params):
    """Keep only the form's values a model may take from the App (see :func:`resolve_input`)."""
    for key in list(params):
        if key not in ("pair_scores", "max_side"):
            params.pop(key)
