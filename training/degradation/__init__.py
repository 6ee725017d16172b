"""Synthetic degradations: the 24 distortion types (:mod:`.distortions`) and the ladders of
increasing strength built from them (:mod:`.ladders`). Used by training (crop pairs),
evaluation (single-type ladders) and the sensitivity analysis."""
