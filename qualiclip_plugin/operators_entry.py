"""FiftyOne plugin entry module (``py_entry`` in ``fiftyone.yml``).

FiftyOne executes this file under a synthetic module name when the App starts and again on
operator look-ups, so it stays tiny: it imports only ``fiftyone.operators`` (through
:mod:`qualiclip_plugin.operators` and :mod:`qualiclip_plugin.panel`) and registers the operator
and panel classes of the importable package, where any state lives.
"""

import sys
from pathlib import Path

try:
    import qualiclip_plugin  # noqa: F401  (pip-installed, or the repository on sys.path)
except ImportError:
    # Fetched with `fiftyone plugins download` into the plugins directory without a pip
    # install of this repository: the package is the folder holding this file.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from qualiclip_plugin.operators import ComputeImageQuality  # noqa: E402
from qualiclip_plugin.panel import ImageQualityPanel  # noqa: E402
from qualiclip_plugin.quality_maps_operator import ComputeQualityMaps  # noqa: E402
from qualiclip_plugin.report_operator import WriteQualityReport  # noqa: E402


def register(plugin) -> None:
    """Called by FiftyOne with the plugin context."""
    plugin.register(ComputeImageQuality)
    plugin.register(WriteQualityReport)
    plugin.register(ComputeQualityMaps)
    plugin.register(ImageQualityPanel)
