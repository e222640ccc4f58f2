"""Every worker's full copy of the item catalog, read from the compacted ``items`` topic.

Feedback is keyed by user, so any worker may need any item: the catalog is global. Rather
than a faust GlobalTable (whose recovery with several workers is documented as fragile),
each worker reads every partition of the compacted topic from the beginning
(:class:`streams.compacted.CompactedTopicReader`). Invalid item events are skipped here;
the ``items`` agent dead-letters them once.
"""

from __future__ import annotations

import threading

import numpy as np

from streams.admission import Admission
from streams.codecs import EventDecoder, Rejected
from streams.compacted import CompactedTopicReader

# How long a lookup that misses waits for the catalog to read what was published since: an
# item published a moment before its first feedback is not called unknown.
UNKNOWN_ITEM_WAIT_S = 2.0


class ItemCatalog:
    """item_id → float32 feature row; thread-safe for one writer and many readers."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        dim: int,
        max_bytes: int,
        admission: Admission | None = None,
    ) -> None:
        self.dim = dim
        self.topic = topic
        # Misrouted items and item times out of range are skipped, as the items agent
        # dead-letters them: a second copy on another partition could shadow the latest.
        self.admission = admission
        self._decode = EventDecoder("items", max_bytes)
        self._rows: dict[str, int] = {}
        self._features = np.zeros((1024, dim), dtype=np.float32)
        self._lock = threading.Lock()
        self.skipped = 0
        self.reader = CompactedTopicReader(bootstrap, topic, self._apply)
        self.start, self.stop = self.reader.start, self.reader.stop
        self.wait_caught_up = self.reader.wait_caught_up

    def catch_up_for_unknown(self) -> bool:
        """Wait (up to ``UNKNOWN_ITEM_WAIT_S``) until everything published so far is read."""
        return self.wait_caught_up(UNKNOWN_ITEM_WAIT_S)

    def __len__(self) -> int:
        return len(self._rows)

    def _apply(
        self, key: bytes | None, raw: bytes | None, partition: int = 0, ts_ms: int | None = None
    ) -> None:
        try:
            item = self._decode(raw)
            if self.admission is not None:
                self.admission.check(self.topic, partition, ts_ms, item)
        except Rejected:
            self.skipped += 1
            return
        features = item["features"]
        if len(features) != self.dim:
            self.skipped += 1
            return
        with self._lock:
            row = self._rows.get(item["item_id"])
            if row is None:
                row = len(self._rows)
                if row >= self._features.shape[0]:
                    grown = np.zeros((2 * self._features.shape[0], self.dim), dtype=np.float32)
                    grown[:row] = self._features[:row]
                    self._features = grown
                self._rows[item["item_id"]] = row
            self._features[row] = features

    def known(self, item_ids: list[str]) -> list[bool]:
        """Whether each id is in the catalog (no feature copy: the relay's check)."""
        with self._lock:
            rows = self._rows
            return [i in rows for i in item_ids]

    def lookup(self, item_ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(n, dim) float64 features and an (n,) bool mask of the ids that are known."""
        with self._lock:
            rows = np.array([self._rows.get(i, -1) for i in item_ids], dtype=np.int64)
            found = rows >= 0
            feats = self._features[np.where(found, rows, 0)].astype(np.float64)
        return feats, found
