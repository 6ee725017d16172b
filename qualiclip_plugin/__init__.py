"""FiftyOne adapter for QualiCLIP: an App operator and a ``TorchImageModel`` for ``apply_model``.

Every score comes from :mod:`qualiclip`; this package only translates FiftyOne input into
library calls and writes the results into datasets. Importing it is cheap (no torch, no
fiftyone): heavy modules load on first use.

Python usage::

    import qualiclip_plugin
    model = qualiclip_plugin.load_model(weights="qualiclip", device="cuda")
    dataset.apply_model(model, label_field="quality", batch_size=16)

    qualiclip_plugin.compute_image_quality(dataset, field="quality", flag_percent=5)
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, Any

#: The FiftyOne the plugin is tested with: the ``fiftyone`` extra of ``qualiclip``.
FIFTYONE_REQUIREMENT = "fiftyone>=1.22.1,<2"
#: The one line a missing FiftyOne is reported with.
FIFTYONE_MISSING = (f'qualiclip_plugin needs FiftyOne, which is not installed: pip install '
                    f'"qualiclip[fiftyone]" (or pip install "{FIFTYONE_REQUIREMENT}")')

# FiftyOne is an extra, not a dependency of the library and CLI. Without it every module here
# would fail later with a bare "No module named 'fiftyone'"; say what to install instead, at the
# first import (find_spec looks the package up without importing it: this import stays cheap).
if importlib.util.find_spec("fiftyone") is None:
    raise ModuleNotFoundError(FIFTYONE_MISSING, name="fiftyone")

#: The plugin's name in ``fiftyone.yml``.
PLUGIN_NAME = "@qualiclip/qualiclip"
#: Name of the scoring operator; its URI is :data:`OPERATOR_URI`.
OPERATOR_NAME = "compute_image_quality"
OPERATOR_URI = f"{PLUGIN_NAME}/{OPERATOR_NAME}"

__all__ = ["PLUGIN_NAME", "OPERATOR_NAME", "OPERATOR_URI", "load_model", "QualiCLIPModel",
           "QualiCLIPModelConfig", "compute_image_quality"]

if TYPE_CHECKING:
    from qualiclip_plugin.api import compute_image_quality
    from qualiclip_plugin.fo_model import QualiCLIPModel, QualiCLIPModelConfig, load_model

_LAZY = {
    "load_model": "qualiclip_plugin.fo_model",
    "QualiCLIPModel": "qualiclip_plugin.fo_model",
    "QualiCLIPModelConfig": "qualiclip_plugin.fo_model",
    "compute_image_quality": "qualiclip_plugin.api",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'qualiclip_plugin' has no attribute {name!r}")
