"""The antonym prompt pairs QualiCLIP scores against.

Stored as a tuple of ``(positive, negative)`` pairs rather than a flat list: the official
release's flat list lost a comma and silently merged two prompts; pairs make that impossible.
"""

from __future__ import annotations

#: The 7 antonym pairs of the official model, positive first, in the official order.
PROMPT_PAIRS: tuple[tuple[str, str], ...] = (
    ("Good photo.", "Bad photo."),
    ("Sharp image.", "Blurry image."),
    ("Sharp edges.", "Blurry edges."),
    ("High-resolution image.", "Low-resolution image."),
    ("Noise-free image.", "Noisy image."),
    ("High-quality image.", "Low-quality image."),
    ("Good picture.", "Bad picture."),
)

#: Short attribute names, one per pair, used for result columns and FiftyOne fields.
PAIR_NAMES: tuple[str, ...] = (
    "good_photo",
    "sharp_image",
    "sharp_edges",
    "high_resolution",
    "noise_free",
    "high_quality",
    "good_picture",
)


def flat_prompts(pairs: tuple[tuple[str, str], ...] = PROMPT_PAIRS) -> list[str]:
    """Prompts in checkpoint order: ``pos0, neg0, pos1, neg1, ...`` (``2 * len(pairs)`` strings)."""
    return [text for pair in pairs for text in pair]
