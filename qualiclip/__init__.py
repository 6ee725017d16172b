"""QualiCLIP: opinion-unaware image quality assessment with CLIP (arXiv 2403.11176).

Public API (imported lazily so ``import qualiclip`` stays cheap and never pulls in fiftyone or
the training code)::

    model = qualiclip.load_model()            # official weights, CC BY-NC 4.0
    results = qualiclip.score_images(["a.jpg", "b.png"], model=model)
    video = qualiclip.score_video("clip.mp4", model=model, fps=1)  # the "video" extra
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "load_model": "qualiclip.loading",
    "QualiCLIP": "qualiclip.model",
    "score_images": "qualiclip.scoring",
    "iter_scores": "qualiclip.scoring",
    "ScoreResult": "qualiclip.scoring",
    "score_video": "qualiclip.video",
    "iter_video_scores": "qualiclip.video",
    "load_image": "qualiclip.images",
    "ImageReadError": "qualiclip.images",
    "PROMPT_PAIRS": "qualiclip.prompts",
    "PAIR_NAMES": "qualiclip.prompts",
    "REGISTRY": "qualiclip.weights",
}

__all__ = [
    "__version__", "load_model", "QualiCLIP", "score_images", "iter_scores", "ScoreResult",
    "score_video", "iter_video_scores",
    "load_image", "ImageReadError", "PROMPT_PAIRS", "PAIR_NAMES", "REGISTRY",
]

if TYPE_CHECKING:
    from qualiclip.images import ImageReadError, load_image
    from qualiclip.loading import load_model
    from qualiclip.model import QualiCLIP
    from qualiclip.prompts import PAIR_NAMES, PROMPT_PAIRS
    from qualiclip.scoring import ScoreResult, iter_scores, score_images
    from qualiclip.video import iter_video_scores, score_video
    from qualiclip.weights import REGISTRY


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'qualiclip' has no attribute {name!r}")
