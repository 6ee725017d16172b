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


def pair_names_for(pairs: tuple[tuple[str, str], ...]) -> tuple[str, ...]:
    """Column names for ``pairs``: :data:`PAIR_NAMES` for the official pairs, else each positive
    prompt lower-cased as an identifier (``pair<i>`` where that leaves nothing)."""
    pairs = tuple(tuple(pair) for pair in pairs)
    if pairs == PROMPT_PAIRS:
        return PAIR_NAMES
    names = []
    for positive, _ in pairs:
        slug = "".join(c if c.isalnum() else "_" for c in positive.lower()).strip("_")
        names.append(slug or f"pair{len(names)}")
    return tuple(names)
