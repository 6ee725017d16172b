"""Grouping decoded images of identical size into batches (padding would change scores)."""

from __future__ import annotations

from qualiclip.inference import DecodedImage


class SizeBuckets:
    """Groups decoded images of identical shape into batches.

    A bucket is released as a batch when it holds ``batch_size`` images or one more would exceed
    ``max_batch_pixels``; when it holds an image ``max_lag`` inputs older than the newest (so
    in-order results keep flowing to callers that write them as they come); and, oldest first,
    whenever all waiting images together exceed ``max_pending_pixels`` (default 4 batches'
    worth), which bounds memory for folders where every image has its own size.
    """

    def __init__(self, batch_size: int, max_batch_pixels: int, max_lag: int | None = None,
                 max_pending_pixels: int | None = None) -> None:
        self.batch_size = batch_size
        self.max_batch_pixels = max_batch_pixels
        self.max_lag = 4 * batch_size if max_lag is None else max_lag
        self.max_pending_pixels = (4 * max_batch_pixels if max_pending_pixels is None
                                   else max_pending_pixels)
        self._buckets: dict[tuple, list[DecodedImage]] = {}
        #: Pixels of all images waiting in buckets.
        self.pending_pixels = 0

    def add(self, image: DecodedImage) -> list[list[DecodedImage]]:
        """Queue one decoded image; returns the batches that became ready (possibly none)."""
        key = image.shape
        bucket = self._buckets.setdefault(key, [])
        bucket.append(image)
        pixels = key[-2] * key[-1]
        self.pending_pixels += pixels
        ready = []
        if len(bucket) >= self.batch_size or (len(bucket) + 1) * pixels > self.max_batch_pixels:
            ready.append(self._pop(key))
        while self.pending_pixels > self.max_pending_pixels and self._buckets:
            ready.append(self._pop(min(self._buckets, key=lambda k: self._buckets[k][0].index)))
        return ready

    def overdue(self, newest_index: int) -> list[list[DecodedImage]]:
        """Batches of the buckets whose oldest image is ``max_lag`` inputs behind."""
        late = [k for k, b in self._buckets.items() if newest_index - b[0].index >= self.max_lag]
        return [self._pop(k) for k in late]

    def drain(self) -> list[list[DecodedImage]]:
        """Everything still waiting, as batches."""
        return [self._pop(k) for k in list(self._buckets)]

    def _pop(self, key: tuple) -> list[DecodedImage]:
        batch = self._buckets.pop(key)
        self.pending_pixels -= len(batch) * key[-2] * key[-1]
        return batch
