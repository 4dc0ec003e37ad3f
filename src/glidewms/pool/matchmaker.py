"""Match slots to autoclusters, once per distinct (autocluster, slot shape).

Jobs in one autocluster agree on every attribute that can change a match, so
a slot is matched against autoclusters, not jobs. Slots, in turn, are reduced
to their *shape*: the attributes some autocluster's expressions read (plus the
slot's own Start, Requirements and Rank and what those read). Pilots of one
entry differ in their ids and deadlines but usually not in their shape, so the
answer (and the slot's Rank of the autocluster) is cached per (autocluster,
shape): a new pilot, or one asking again with other free resources it has had
before, costs a dictionary lookup per autocluster, not a ClassAd evaluation.

The cache is only a cache: evaluation always uses the whole slot ad, and the
shape only decides when an earlier answer may be reused. Autocluster ads
seen later may read more slot attributes; shapes then grow, and older
answers stay valid for the autoclusters they were computed for.

An answer that depends on the clock (``time()``, ``CurrentTime``, ``random()``)
is never reused: an overflow Start such as ``time() - TARGET.QDate > 3600``
must say yes once the jobs have waited long enough, not keep its first no.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Any

from glidewms import classads
from glidewms.pool import concurrency
from glidewms.pool.checks import job_requests
from glidewms.pool.jobs import LIMITS_ATTR, stored_ad

CACHE_LIMIT = 500_000
SLOT_EXPRESSIONS = ("start", "requirements", "rank")
_NO = object()  # cached "does not match"
_VOLATILE = re.compile(r"\b(?:time|random)\s*\(|\bcurrenttime\b", re.IGNORECASE)


def volatile(text: str) -> bool:
    """Does this expression (or ad) text read the clock or a random number?"""
    return _VOLATILE.search(text) is not None


def slot_refs(ad: Any) -> set[str] | None:
    """Lower-case names of the slot (TARGET) attributes an autocluster ad
    reads; None when the library cannot tell."""
    names: set[str] = set()
    for name in ad:
        refs = classads.external_refs(ad, ad.lookup(name))
        if refs is None:
            return None
        for ref in refs:
            low = ref.lower()
            if low.startswith("target."):
                low = low[len("target.") :]
            if low:
                names.add(low.split(".")[0])
    return names


def request_of(ad: Any) -> dict[str, int]:
    """Resources one job of this autocluster asks for (never negative: a turn
    subtracts them from what the pilot has free)."""
    return job_requests(ad)


# What an autocluster whose ad cannot be read back is matched as: nothing.
_UNREADABLE = "[ Requirements = false ]"


class Matchmaker:
    def __init__(self) -> None:
        self.ads: dict[int, Any] = {}  # autocluster id -> its significant-attribute ad
        self.texts: dict[int, str] = {}
        self.requests: dict[int, dict[str, int]] = {}
        self._refs: set[str] = {"cpus", "memory", "disk", "gpus"}
        self.version = 0  # grows with the set of slot attributes read: shapes change
        self._cache: dict[tuple[int, str], Any] = {}
        self._volatile: set[int] = set()  # autoclusters whose answers are never cached
        # concurrency limits one job of the autocluster holds (those naming any)
        self.limits: dict[int, dict[str, float]] = {}
        self.invalid_limits: set[int] = set()  # unreadable ConcurrencyLimits: never started

    def remember(self, ac_id: int, text: str) -> Any:
        """Parse and keep an autocluster's ad; learn which slot attributes it reads."""
        ad = self.ads.get(ac_id)
        if ad is None:
            try:
                ad = stored_ad(text)
            except classads.ClassAdError:  # stored beyond the bounds by an older pool
                ad = classads.parse_ad(_UNREADABLE)
            self.ads[ac_id] = ad
            self.texts[ac_id] = text
            self.requests[ac_id] = request_of(ad)
            self._remember_limits(ac_id, ad)
            refs = slot_refs(ad)
            if refs is None or volatile(text):  # never cached: answered afresh each time
                self._volatile.add(ac_id)
                refs = set()
            if not refs <= self._refs:
                self._refs |= refs
                self.version += 1
        return ad

    def _remember_limits(self, ac_id: int, ad: Any) -> None:
        """The autocluster's concurrency limits (jobs.derive wrote them in
        canonical form; anything else found there is unreadable)."""
        value = classads.eval_attr(ad, LIMITS_ATTR)
        if value is None or value is classads.UNDEFINED:
            return
        try:
            if not isinstance(value, str):
                raise concurrency.BadLimits("not a string")
            wanted = concurrency.parse(value)
        except concurrency.BadLimits:
            self.invalid_limits.add(ac_id)
            return
        if wanted:
            self.limits[ac_id] = wanted

    @property
    def volatile_ids(self) -> set[int]:
        """The autoclusters whose answers read the clock (never cached)."""
        return self._volatile

    def shape(self, slot: Any) -> str:
        """A key that is equal for slots no known autocluster can tell apart.

        A slot whose own expressions read the clock gets a key starting with
        ``!``: nothing is cached for it.
        """
        keep = set(self._refs)
        unknown = False  # the library cannot tell what a slot expression reads
        for name in slot:
            if name.lower() in SLOT_EXPRESSIONS:
                keep.add(name.lower())
                refs = classads.internal_refs(slot, slot.lookup(name))
                unknown = unknown or refs is None
                keep.update(r.lower() for r in refs or ())
        parts = [f"{name}={slot.lookup(name)}" for name in sorted(slot) if name.lower() in keep]
        digest = hashlib.sha256(";".join(parts).encode()).hexdigest()
        clocked = unknown or any(
            volatile(str(slot.lookup(name))) for name in slot if name.lower() in SLOT_EXPRESSIONS
        )
        return "!" + digest if clocked else digest

    def fits(self, ac_id: int, slot: Any, shape: str) -> bool:
        """Can this slot (whose shape is `shape`) run a job of this autocluster?"""
        return self._lookup(ac_id, self.ads[ac_id], slot, shape, "Rank" in slot) is not _NO

    def _lookup(self, ac_id: int, ac_ad: Any, slot: Any, shape: str, has_rank: bool) -> Any:
        if shape.startswith("!") or ac_id in self._volatile:
            return self._evaluate(ac_ad, slot, has_rank)
        key = (ac_id, shape)
        hit = self._cache.get(key)
        if hit is None:
            if len(self._cache) > CACHE_LIMIT:
                self._cache.clear()
            hit = self._cache[key] = self._evaluate(ac_ad, slot, has_rank)
        return hit

    @staticmethod
    def _evaluate(ac_ad: Any, slot: Any, has_rank: bool) -> Any:
        if classads.job_fits_slot(ac_ad, slot):
            return classads.rank(slot, ac_ad) if has_rank else 0.0
        return _NO

    def matching(self, slot: Any, autocluster_ads: Mapping[int, Any]) -> list[int]:
        """Ids of the autoclusters whose jobs this slot can run, best slot Rank first."""
        return [ac for ac, _ in self.ranked(slot, autocluster_ads)]

    def ranked(
        self, slot: Any, autocluster_ads: Mapping[int, Any], shape: str | None = None
    ) -> list[tuple[int, float]]:
        """(id, slot Rank) of the autoclusters whose jobs this slot can run, best first.
        `shape` is the slot's, when the caller already has it."""
        if shape is None:
            shape = self.shape(slot)
        has_rank = "Rank" in slot
        found = []
        for ac_id, ac_ad in autocluster_ads.items():
            hit = self._lookup(ac_id, ac_ad, slot, shape, has_rank)
            if hit is not _NO:
                found.append((ac_id, hit))
        if has_rank:
            found.sort(key=lambda pair: -pair[1])
        return found
