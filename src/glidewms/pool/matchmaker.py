"""Match slots to autoclusters, once per distinct pair.

Jobs in one autocluster agree on every attribute that can change a match, so
a slot is matched against autoclusters, not jobs, and the answer (and the
slot's Rank of the autocluster) is cached per (autocluster, slot signature):
a pilot asking again with the same free resources costs a dictionary lookup
per autocluster.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from glidewms import classads

CACHE_LIMIT = 200_000
_NO = object()  # cached "does not match"


class Matchmaker:
    def __init__(self) -> None:
        self.ads: dict[int, Any] = {}  # autocluster id -> its significant-attribute ad
        self._cache: dict[tuple[int, str], Any] = {}

    def matching(self, slot: Any, autocluster_ads: Mapping[int, Any]) -> list[int]:
        """Ids of the autoclusters whose jobs this slot can run, best slot Rank first."""
        return [ac for ac, _ in self.ranked(slot, autocluster_ads)]

    def ranked(self, slot: Any, autocluster_ads: Mapping[int, Any]) -> list[tuple[int, float]]:
        """(id, slot Rank) of the autoclusters whose jobs this slot can run, best first."""
        slot_key = hashlib.sha256(classads.to_text(slot).encode()).hexdigest()
        if len(self._cache) > CACHE_LIMIT:
            self._cache.clear()
        has_rank = "Rank" in slot
        found = []
        for ac_id, ac_ad in autocluster_ads.items():
            key = (ac_id, slot_key)
            hit = self._cache.get(key)
            if hit is None:
                if classads.job_fits_slot(ac_ad, slot):
                    hit = classads.rank(slot, ac_ad) if has_rank else 0.0
                else:
                    hit = _NO
                self._cache[key] = hit
            if hit is not _NO:
                found.append((ac_id, hit))
        if has_rank:
            found.sort(key=lambda pair: -pair[1])
        return found
