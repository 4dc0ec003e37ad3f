"""Match slots to autoclusters, once per distinct pair.

Jobs in one autocluster agree on every attribute that can change a match, so
a slot is matched against autoclusters, not jobs, and the answer is cached per
(autocluster, slot signature): a pilot asking again with the same free
resources costs a dictionary lookup per autocluster.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from glidewms import classads

CACHE_LIMIT = 200_000


class Matchmaker:
    def __init__(self) -> None:
        self.ads: dict[int, Any] = {}  # autocluster id -> its significant-attribute ad
        self._cache: dict[tuple[int, str], bool] = {}

    def matching(self, slot: Any, autocluster_ads: Mapping[int, Any]) -> list[int]:
        """Ids of the autoclusters whose jobs this slot can run, best slot Rank first."""
        slot_key = hashlib.sha256(classads.to_text(slot).encode()).hexdigest()
        if len(self._cache) > CACHE_LIMIT:
            self._cache.clear()
        found = []
        for ac_id, ac_ad in autocluster_ads.items():
            key = (ac_id, slot_key)
            hit = self._cache.get(key)
            if hit is None:
                hit = self._cache[key] = classads.job_fits_slot(ac_ad, slot)
            if hit:
                found.append(ac_id)
        if "Rank" in slot:
            found.sort(key=lambda i: -classads.rank(slot, autocluster_ads[i]))
        return found
