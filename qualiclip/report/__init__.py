"""The HTML quality report: :mod:`.data` (rows in, summaries out), :mod:`.figures` (matplotlib
PNGs) and :mod:`.html` (the self-contained page)."""
