"""The "Image quality" panel: the panel operator (:mod:`.operator`), its layout
(:mod:`.view`) and the dataset queries and saved state behind it (:mod:`.data`)."""
