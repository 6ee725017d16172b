"""FiftyOne plugin entry module (``py_entry`` in ``fiftyone.yml``).

FiftyOne executes this file under a synthetic module name when the App starts and again on
operator look-ups, so it stays tiny: it imports FiftyOne's operator API and the plugin's
torch-free modules (through the ``operator`` modules of :mod:`qualiclip_plugin.scoring`,
:mod:`qualiclip_plugin.panel` and :mod:`qualiclip_plugin.reports`) and registers the operator and
panel classes of the importable package, where any state lives.
"""

import sys
from pathlib import Path

try:
    import qualiclip_plugin  # noqa: F401  (pip-installed, or the repository on sys.path)
except ImportError:
    # Fetched with `fiftyone plugins download` into the plugins directory without a pip
    # install of this repository: the package is the folder holding this file.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from qualiclip_plugin.calibration.operator import CalibrateToRatings  # noqa: E402
from qualiclip_plugin.panel.operator import ImageQualityPanel  # noqa: E402
from qualiclip_plugin.reports.maps_operator import ComputeQualityMaps  # noqa: E402
from qualiclip_plugin.reports.operator import WriteQualityReport  # noqa: E402
from qualiclip_plugin.scoring.operator import ComputeImageQuality  # noqa: E402


def register(plugin) -> None:
    """Called by FiftyOne with the plugin context."""
    plugin.register(ComputeImageQuality)
    plugin.register(WriteQualityReport)
    plugin.register(ComputeQualityMaps)
    plugin.register(CalibrateToRatings)
    plugin.register(ImageQualityPanel)
