"""Calibration from the App: ratings given in the "Image quality" panel (:mod:`.ratings`,
:mod:`.panel`) and the "Calibrate to my ratings" operator (:mod:`.operator`), which runs
:func:`qualiclip.calibrate.calibrate` on them under the plugin's trust rules (:mod:`.request`)."""
