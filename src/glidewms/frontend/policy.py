"""How many pilots to ask for, and where: pure functions, no I/O.

The loop in `service.py` gathers demand (the pool's autoclusters), supply (the
factory's pilots and the pool's registered pilots) and entries, then calls
`decide` per entry. Keeping the arithmetic here means every branch has a
table-driven test and nothing in it can block or raise on the network.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from glidewms import classads


@dataclass(frozen=True)
class EntryDemand:
    """Idle and running jobs that can run at one entry."""

    idle_jobs: int = 0
    running_jobs: int = 0
    idle_cpus: int = 0
    autoclusters: tuple[int, ...] = ()


@dataclass(frozen=True)
class EntrySupply:
    """Pilots of this group at one entry, as the factory and the pool see them."""

    queued: int = 0  # waiting in the site's batch system
    starting: int = 0  # running at the site but not yet registered in the pool
    idle: int = 0  # registered, running no job
    busy: int = 0  # registered, running jobs


@dataclass(frozen=True)
class Limits:
    max_idle: int = 100
    max_running: int = 1000
    running_factor: float = 1.15


@dataclass(frozen=True)
class Decision:
    idle: int
    max_running: int
    remove: str = "NO"
    reasons: tuple[str, ...] = field(default_factory=tuple)

    def as_request(self) -> dict[str, Any]:
        return {"idle": self.idle, "max_running": self.max_running, "remove": self.remove}


def entry_ad(entry: Mapping[str, Any]) -> Any:
    """The entry as a slot-like ClassAd: what one of its pilots would offer."""
    attrs = dict(entry.get("attributes") or {})
    attrs.update({
        "GLIDEIN_Site": entry.get("site"),
        "GLIDEIN_Entry_Name": entry.get("name"),
        "Cpus": resource(entry.get("cpus"), 1),
        "Memory": resource(entry.get("memory"), 2048),
        "Disk": resource(entry.get("disk"), 100 * 1024) * 1024,  # entries say MB; ads KiB
        "Arch": attrs.get("Arch", "X86_64"),
        "OpSys": attrs.get("OpSys", "LINUX"),
    })
    return classads.ad_from_dict({k: v for k, v in attrs.items() if v is not None})


def resource(value: Any, default: int) -> int:
    """`auto` resources are unknown until the pilot runs: assume a typical node."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return default
    return int(value)


def match_demand(autoclusters: Sequence[Mapping[str, Any]], entries: Sequence[Mapping[str, Any]],
                 match_expr: str = "true") -> dict[str, EntryDemand]:
    """Which autoclusters can run at which entry: the job's Requirements against
    the entry ad, and the group's match expression (MY = job, TARGET = entry)."""
    group_match = classads.parse_expr(match_expr)
    ads = {e["name"]: entry_ad(e) for e in entries}
    out: dict[str, EntryDemand] = {}
    for name, eads in ads.items():
        idle = running = cpus = 0
        matched: list[int] = []
        for ac in autoclusters:
            job = classads.parse_ad(ac["ad"])
            if not classads.job_fits_slot(job, eads):
                continue
            if not classads.is_true(group_match.eval(scope=job, target=eads)):
                continue
            matched.append(ac["id"])
            idle += ac.get("idle", 0)
            running += ac.get("running", 0)
            cpus += ac.get("idle", 0) * max(1, ac.get("request", {}).get("cpus", 1))
        out[name] = EntryDemand(idle, running, cpus, tuple(matched))
    return out


def pilots_for(cpus: int, pilot_cpus: int) -> int:
    return math.ceil(cpus / max(1, pilot_cpus))


def decide(demand: EntryDemand, supply: EntrySupply, pilot_cpus: int, limits: Limits) -> Decision:
    """Idle pilots to keep queued at the entry, and the most that may run.

    Pilots needed for the idle jobs, minus pilots that will soon take them
    (registered idle, or started but not yet registered), is what should wait
    at the site. No idle demand means no request at all.
    """
    reasons: list[str] = []
    if demand.idle_jobs == 0:
        reasons.append("no idle jobs match this entry")
        running_cap = min(limits.max_running, supply.busy)
        return Decision(0, running_cap, "NO", tuple(reasons))
    needed = pilots_for(demand.idle_cpus, pilot_cpus)
    ready = supply.idle + supply.starting
    idle = max(0, needed - ready)
    reasons.append(f"{demand.idle_jobs} idle jobs need {needed} pilots; {ready} about to serve")
    if idle > limits.max_idle:
        reasons.append(f"capped by max_idle_per_entry={limits.max_idle}")
        idle = limits.max_idle
    wanted_running = math.ceil(
        (pilots_for(demand.idle_cpus, pilot_cpus) + supply.busy) * limits.running_factor)
    max_running = min(limits.max_running, wanted_running)
    if wanted_running > limits.max_running:
        reasons.append(f"capped by max_running_per_entry={limits.max_running}")
    return Decision(idle, max_running, "NO", tuple(reasons))
