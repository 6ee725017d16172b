"""Outputs built from stored scores: the HTML report (operator :mod:`.operator`, rows from a
collection :mod:`.rows`, ``qualiclip report`` :mod:`.cli`) and quality maps (operator
:mod:`.maps_operator`, heatmap writing :mod:`.map_writing`)."""
