"""Which pilots already serve an entry, and how much of the idle demand they can take.

Pure functions over the factory's counts (pilots queued or running at the
site) and the pool's pilot listing (registered pilots, their free resources,
whether they retire). The rules come from GlideinWMS operators' pains: an
idle pilot with too little memory or no GPU is not supply for the jobs that
need them, and a retiring pilot is not idle supply at all.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from glidewms.factory.states import EXITED, GlideinState
from glidewms.frontend.matching import JobRequest, Size, jobs_per_pilot

# The pool's state of a registered pilot that takes no new work (the pool keeps its
# pilot states as strings: active, draining, gone, lost).
POOL_DRAINING = "draining"


@dataclass(frozen=True)
class EntrySupply:
    """Pilots of one group at one entry, in exclusive categories.

    queued: waiting in the site's batch system; starting: running at the site
    but not registered in the pool yet (they will come with a whole entry-size
    slot); idle: registered, no job, free resources fit some idle job;
    partial: registered, running jobs, and still room for an idle job;
    busy: registered, running jobs, no room; unusable: registered, no job,
    but its free resources fit none of the idle jobs; retiring: registered,
    taking no new work (drain, lifetime); exited: running at the site but
    ended (its final report came: a black hole keeping its node, or one
    exiting), so never supply, yet still a batch slot that `running` counts.
    `idle_units` is the registered pilots' usable room in pilots of the
    entry's size.
    """

    queued: int = 0
    starting: int = 0
    idle: int = 0
    partial: int = 0
    busy: int = 0
    unusable: int = 0
    retiring: int = 0
    removing: int = 0
    idle_units: float = 0.0
    exited: int = 0

    @property
    def registered(self) -> int:
        return self.idle + self.partial + self.busy + self.unusable + self.retiring

    @property
    def running(self) -> int:
        """Pilots alive past the site queue (what max_running bounds)."""
        return self.starting + self.registered + self.exited

    @property
    def total(self) -> int:
        return self.queued + self.running + self.removing

    @property
    def idle_pilots(self) -> int:
        """Pilots doing nothing yet (for limits and curbs): starting or registered idle."""
        return self.starting + self.idle + self.unusable

    @property
    def idle_supply(self) -> float:
        """Pilots' worth of room that will take the idle jobs soon."""
        return self.starting + self.idle_units

    @property
    def working(self) -> int:
        return self.busy + self.partial

    def summary(self) -> dict[str, Any]:
        out = asdict(self)
        out["idle_units"] = round(self.idle_units, 3)
        out.update(
            running=self.running,
            total=self.total,
            idle_pilots=self.idle_pilots,
            idle_supply=round(self.idle_supply, 3),
        )
        return out


def usable_fraction(free: Size, size: Size, requests: Iterable[JobRequest]) -> float:
    """How much of one entry-size pilot the free resources are worth to the idle jobs.

    For the job shape that fits best: jobs fitting in `free` over jobs fitting
    in a whole pilot, at most 1. No idle jobs, or none fitting: 0.
    """
    best = 0.0
    for request in requests:
        whole = jobs_per_pilot(request, size)
        if whole <= 0:
            continue
        best = max(best, min(1.0, jobs_per_pilot(request, free) / whole))
    return best


def _number(value: Any, default: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return default
    return int(value)


def pilot_free(pilot: Mapping[str, Any]) -> Size:
    """The pilot's free resources; before the pool reports `free`, its whole slot."""
    slot = pilot.get("slot") or {}
    free = pilot.get("free") or {}
    return Size(
        cpus=_number(free.get("cpus"), _number(slot.get("Cpus"), 1)),
        memory=_number(free.get("memory"), _number(slot.get("Memory"), 0)),
        gpus=_number(free.get("gpus"), _number(slot.get("GPUs"), 0)),
    )


def is_retiring(pilot: Mapping[str, Any]) -> bool:
    return bool(pilot.get("retiring")) or pilot.get("state") == POOL_DRAINING


def entry_supply(
    counts: Mapping[str, int],
    pilots: Iterable[Mapping[str, Any]],
    size: Size,
    requests: Iterable[JobRequest],
) -> EntrySupply:
    """Supply at one entry from the factory's counts (by `GlideinState` value, as its
    glidein summary gives them) and the entry's registered pilots."""
    n = {"idle": 0, "partial": 0, "busy": 0, "unusable": 0, "retiring": 0}
    units = 0.0
    registered = 0
    for pilot in pilots:
        registered += 1
        if is_retiring(pilot):
            n["retiring"] += 1
            continue
        room = usable_fraction(pilot_free(pilot), size, requests)
        working = int(pilot.get("running_jobs") or 0) > 0
        units += room
        if room > 0:
            n["partial" if working else "idle"] += 1
        else:
            n["busy" if working else "unusable"] += 1
    at_site = int(counts.get(GlideinState.running.value, 0))
    # an ended pilot keeping its node (black-hole hold) will never register
    exited = min(at_site, max(0, int(counts.get(EXITED, 0))))
    return EntrySupply(
        queued=int(counts.get(GlideinState.queued.value, 0)),
        starting=max(0, at_site - exited - registered),
        exited=exited,
        removing=int(counts.get(GlideinState.removing.value, 0)),
        idle_units=units,
        **n,
    )


def pilots_by_entry(
    pilots: Iterable[Mapping[str, Any]],
    frontend: str | None,
    group: str,
    entry_key: Callable[[Mapping[str, Any]], str | None],
) -> dict[str, list[Mapping[str, Any]]]:
    """The pool's pilots of this frontend and group, by entry key (unknown entries dropped)."""
    out: dict[str, list[Mapping[str, Any]]] = {}
    for pilot in pilots:
        if pilot.get("group") != group:
            continue
        if frontend is not None and pilot.get("frontend") not in (None, frontend):
            continue
        key = entry_key(pilot.get("slot") or {})
        if key is not None:
            out.setdefault(key, []).append(pilot)
    return out
