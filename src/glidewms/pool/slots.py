"""A pilot's slot: the ad it offers for matching, and its free resources.

A pilot registers its slot ad once (a dict: JSON); each claim carries what
is free now, which replaces the slot's Cpus, Memory, Disk and GPUs. Matching
reads ClassAds built from those, and `SlotAds` keeps them per pilot so a
turn builds each one once.

Nested values survive: a list of ads such as `AvailableGPUs` (one property
ad per GPU, which `require_gpus` jobs match with `countMatches`) becomes a
ClassAd list of ads, held to the ad bounds when the pilot registered. Like a
partitionable slot in HTCondor, a slot offers only the GPUs still free:
`AvailableGPUs` is cut to the free count (the pilot does not say which GPUs
its jobs hold, so the first ones stay: exact for the usual node of one GPU
model).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from glidewms import classads
from glidewms.pool.matchmaker import Matchmaker

RESOURCES = (("cpus", "Cpus"), ("memory", "Memory"), ("disk", "Disk"), ("gpus", "GPUs"))


def slot_with(slot: Mapping[str, Any], resources: Mapping[str, int]) -> Any:
    """The pilot's slot ad offering `resources` (its free ones, or all).

    The slot was held to the pool's bounds when the pilot registered
    (checks.check_slot); one that cannot be read back (stored by an older
    pool) offers nothing: its Start is false."""
    available = slot.get("AvailableGPUs")
    if isinstance(available, list) and len(available) > resources["gpus"]:
        slot = {**slot, "AvailableGPUs": available[: max(0, resources["gpus"])]}
    try:
        ad = classads.ad_from_dict(slot, classads.CEILING)
    except classads.ClassAdError:
        ad = classads.ClassAd()
        ad["Start"] = False
        slot = {}
    for key, attr in RESOURCES:
        ad[attr] = resources[key]
    start = slot.get("GLIDEIN_Start")
    if isinstance(start, str) and start.strip():
        # The frontend's start expression travels as a string attribute (slot
        # ads are JSON); here it becomes the slot's real Start expression.
        try:
            ad["Start"] = classads.parse_expr(start, "GLIDEIN_Start", classads.CEILING)
        except classads.ClassAdError:
            ad["Start"] = False  # a pilot with a broken policy must not take jobs
    return ad


class SlotAds:
    """The slot ads a pilot's turns match, with their shapes, each built once.

    A turn that hands out 9 jobs matches ~17 slot ads (the free resources
    left after each choice, and the whole slot), and building a ClassAd from
    the slot's dict and hashing its shape cost more than the rest of a
    choice. A pilot offers the same few combinations of resources turn after
    turn, so (ad, shape) are kept per pilot and resources, and dropped when
    the pilot's slot is not equal to the one they were built from, or when
    autoclusters read more slot attributes (the matchmaker's `version`: the
    shape changes). The ad does not depend on the clock; a slot whose
    expressions do keeps its ``!`` shape, which the matchmaker never caches
    answers for. Bounded: cleared when full."""

    def __init__(self, matchmaker: Matchmaker, pilots: int = 10_000, per_pilot: int = 64) -> None:
        self.matchmaker = matchmaker
        self._pilots, self._per_pilot = pilots, per_pilot
        # pilot id -> (its slot, matchmaker version, {resources: (ad, shape)})
        self._known: dict[
            str, tuple[Mapping[str, Any], int, dict[tuple[int, ...], tuple[Any, str]]]
        ] = {}

    def get(
        self, pilot_id: str, slot: Mapping[str, Any], resources: Mapping[str, int]
    ) -> tuple[Any, str]:
        """(slot ad offering `resources`, its shape), as slot_with and shape give."""
        version = self.matchmaker.version
        known = self._known.get(pilot_id)
        if known is None or known[1] != version or known[0] != slot:
            if len(self._known) >= self._pilots:
                self._known.clear()
            known = self._known[pilot_id] = (slot, version, {})
        key = (resources["cpus"], resources["memory"], resources["disk"], resources["gpus"])
        found = known[2].get(key)
        if found is None:
            if len(known[2]) >= self._per_pilot:
                known[2].clear()
            ad = slot_with(slot, resources)
            found = known[2][key] = (ad, self.matchmaker.shape(ad))
        return found

    def forget(self, pilot_id: str) -> None:
        self._known.pop(pilot_id, None)


def whole_slot(slot: Mapping[str, Any]) -> Any:
    """The slot ad with all its resources, as if none were in use."""
    return slot_with(slot, free_from(slot, None))


def free_from(slot: Mapping[str, Any], reported: Mapping[str, float] | None) -> dict[str, int]:
    """The pilot's free resources: what it reported, else its slot's totals
    (never negative; what is not a finite number counts as none)."""
    out = {}
    for key, attr in RESOURCES:
        value = (reported or {}).get(key)
        if value is None:
            value = slot.get(attr, 1 if key == "cpus" else 0)
        try:
            out[key] = max(0, int(value))
        except (TypeError, ValueError, OverflowError):
            out[key] = 0
    return out
