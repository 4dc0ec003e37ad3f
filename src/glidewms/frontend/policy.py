"""How many pilots to ask for at an entry, and when to let them go: pure functions.

The loop in `service.py` gathers demand (`matching.py`), supply (`supply.py`)
and the group's memory of past cycles, then calls `decide` per entry. All the
arithmetic is here so every branch has a table-driven test and nothing in it
can block or fail on the network. docs/frontend.md walks through it.

Pressure (after GlideinWMS): the idle pilots wanted at an entry are the idle
demand, in pilots of the entry's size, minus the idle supply, divided by the
ramp-up attenuation (the factory may still be acting on the last request),
plus a reserve for jobs idle long, capped per entry, halved once for every
curb reached, and zero when a hard limit is reached. The most pilots that may
run is (net idle demand + running pilots) x the running factor.

Removal escalates only on confirmed absence of demand: a drop to zero must
last `confirm_cycles` before anything but "no new pilots"; then WAIT (submit
nothing, let the excess drain), then IDLE (remove queued excess), then ALL
(also running excess) only when the group allows it.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from glidewms.frontend.matching import EntryDemand
from glidewms.frontend.supply import EntrySupply
from glidewms.protocol import RemovalStage


@dataclass(frozen=True, kw_only=True)
class Knobs:
    """Per-entry pressure knobs of a group (defaults as GlideinWMS's)."""

    attenuation: float = 3.0
    reserve_idle: int = 5
    max_idle_per_entry: int = 100
    running_factor: float = 1.15
    max_running_per_entry: int = 10000
    proportional: bool = True


@dataclass(frozen=True, kw_only=True)
class Level:
    """Pilots counted at one level (entry, group, global) and its limits and curbs.

    At or above a max no new pilots are asked; at or above a curb the request
    is halved. `None` means no such limit at this level.
    """

    name: str
    pilots: int
    idle_pilots: int
    max_pilots: int | None = None
    max_idle_pilots: int | None = None
    curb_pilots: int | None = None
    curb_idle_pilots: int | None = None

    def limits_hit(self) -> list[str]:
        out = []
        if self.max_pilots is not None and self.pilots >= self.max_pilots:
            out.append(f"{self.name} pilots {self.pilots} >= max {self.max_pilots}")
        if self.max_idle_pilots is not None and self.idle_pilots >= self.max_idle_pilots:
            out.append(f"{self.name} idle pilots {self.idle_pilots} >= max {self.max_idle_pilots}")
        return out

    def room(self) -> float:
        rooms = [
            lim - have
            for lim, have in (
                (self.max_pilots, self.pilots),
                (self.max_idle_pilots, self.idle_pilots),
            )
            if lim is not None
        ]
        return min(rooms) if rooms else math.inf

    def curbs_hit(self) -> list[str]:
        out = []
        if self.curb_pilots is not None and self.pilots >= self.curb_pilots:
            out.append(f"{self.name} pilots {self.pilots} >= curb {self.curb_pilots}")
        if self.curb_idle_pilots is not None and self.idle_pilots >= self.curb_idle_pilots:
            out.append(
                f"{self.name} idle pilots {self.idle_pilots} >= curb {self.curb_idle_pilots}"
            )
        return out


@dataclass(frozen=True, kw_only=True)
class Pressure:
    """Idle pilots to ask at one entry and the most to let run there, with the numbers
    and the reasons behind them (what `frontend explain` shows as pressure)."""

    idle: int
    max_running: int
    demand_units: float
    effective_idle: float
    attenuated: float = 0.0
    reserve: int = 0
    limits: tuple[str, ...] = ()
    curbs: tuple[str, ...] = ()
    reasons: tuple[str, ...] = ()


def pressure(
    demand: EntryDemand, supply: EntrySupply, levels: Sequence[Level], knobs: Knobs
) -> Pressure:
    """Idle pilots to keep queued at the entry, and the most that may run there."""
    units = demand.prop_units if knobs.proportional else demand.units
    old = demand.old_prop_units if knobs.proportional else demand.old_units
    effective = max(0.0, units - supply.idle_supply)
    effective_old = max(0.0, old - supply.idle_supply)
    if units > 0:
        wanted_running = math.ceil((effective + supply.running) * knobs.running_factor - 1e-9)
    else:
        wanted_running = supply.running  # no reason for headroom without idle jobs
    max_running = min(knobs.max_running_per_entry, wanted_running)
    reasons = [f"idle demand {units:.2f} pilots, idle supply {supply.idle_supply:.2f}"]
    if wanted_running > knobs.max_running_per_entry:
        reasons.append(f"max running capped by max_running_per_entry={knobs.max_running_per_entry}")
    result = functools.partial(
        Pressure, max_running=max_running, demand_units=units, effective_idle=effective
    )
    if units <= 0:
        return result(idle=0, reasons=(*reasons, "no idle job can run here"))
    limits = tuple(hit for level in levels for hit in level.limits_hit())
    if limits:
        return result(
            idle=0, limits=limits, reasons=(*reasons, "a limit is reached: no new pilots")
        )
    if effective <= 0:
        return result(idle=0, reasons=(*reasons, "idle supply covers the demand"))
    room = min([effective, *(level.room() for level in levels)])
    attenuated = room / knobs.attenuation
    reserve = min(math.ceil(effective_old / knobs.attenuation - 1e-9), knobs.reserve_idle)
    wanted = attenuated + reserve
    reasons.append(
        f"{effective:.2f} missing, room {room:.2f}, /{knobs.attenuation:g} = "
        f"{attenuated:.2f}, + reserve {reserve}"
    )
    if wanted > knobs.max_idle_per_entry:
        wanted = knobs.max_idle_per_entry
        reasons.append(f"capped by max_idle_per_entry={knobs.max_idle_per_entry}")
    curbs = tuple(hit for level in levels for hit in level.curbs_hit())
    for _ in curbs:
        wanted /= 2
    if curbs:
        reasons.append(f"halved {len(curbs)} time(s) by curbs")
    idle = min(max(1, math.floor(wanted)), knobs.max_idle_per_entry)
    return result(
        idle=idle,
        attenuated=attenuated,
        reserve=reserve,
        curbs=curbs,
        reasons=tuple(reasons),
    )


# ------------------------------------------------------------------ removal


@dataclass(frozen=True, kw_only=True)
class RemovalRules:
    """A group's removal settings: how far, with what margin, after how many cycles."""

    max_stage: RemovalStage = RemovalStage.IDLE
    margin: int = 0
    confirm_cycles: int = 3
    escalate_cycles: int = 3


@dataclass(frozen=True, kw_only=True)
class Memory:
    """What the frontend remembers of an entry between cycles (and restarts)."""

    no_demand_cycles: int = 0
    last_idle: int = 0
    last_max_running: int = 0
    last_remove: RemovalStage = RemovalStage.NO

    def without_removal(self) -> Memory:
        """The same memory, but the last request sent with removal off (a blind cycle)."""
        return replace(self, last_remove=RemovalStage.NO)

    def to_json(self) -> dict[str, Any]:
        return {
            "no_demand_cycles": self.no_demand_cycles,
            "last_idle": self.last_idle,
            "last_max_running": self.last_max_running,
            "last_remove": self.last_remove.value,
        }

    @classmethod
    def from_json(cls, data: Any) -> Memory:
        """Read back `to_json`; anything unreadable starts afresh (no removal known)."""
        if not isinstance(data, dict):
            return cls()
        try:
            stage = RemovalStage(data.get("last_remove", RemovalStage.NO.value))
        except ValueError:
            stage = RemovalStage.NO
        return cls(
            no_demand_cycles=int(data.get("no_demand_cycles", 0)),
            last_idle=int(data.get("last_idle", 0)),
            last_max_running=int(data.get("last_max_running", 0)),
            last_remove=stage,
        )


def removal_stage(
    has_demand: bool, memory: Memory, rules: RemovalRules
) -> tuple[RemovalStage, int, str]:
    """(stage, cycles without demand so far, why) for this cycle.

    Only successful queries reach here: a failed or unreliable one never
    advances the count.
    """
    if has_demand:
        return RemovalStage.NO, 0, "idle jobs can run here"
    n = memory.no_demand_cycles + 1
    if n < rules.confirm_cycles:
        return (
            RemovalStage.NO,
            n,
            f"no idle demand for {n} cycle(s): not confirmed yet "
            f"(needs {rules.confirm_cycles}), nothing removed",
        )
    since = n - rules.confirm_cycles
    stage = (
        RemovalStage.WAIT
        if since < rules.escalate_cycles
        else (RemovalStage.IDLE if since < 2 * rules.escalate_cycles else RemovalStage.ALL)
    )
    allowed = min(stage, rules.max_stage, key=lambda s: s.rank)
    why = f"no idle demand for {n} cycles: stage {stage.value}"
    if allowed is not stage:
        why += f", limited to {allowed.value} by max_removal"
    return allowed, n, why


@dataclass(frozen=True, kw_only=True)
class Decision:
    """One entry's request this cycle (`as_request` is its wire form), what to remember
    of it, and why."""

    idle: int
    max_running: int
    remove: RemovalStage = RemovalStage.NO
    remove_margin: int = 0
    pressure: Pressure | None = None
    memory: Memory = field(default_factory=Memory)
    reasons: tuple[str, ...] = ()

    def as_request(self) -> dict[str, Any]:
        return {
            "idle": self.idle,
            "max_running": self.max_running,
            "remove": self.remove.value,
            "remove_margin": self.remove_margin,
        }


def decide(
    demand: EntryDemand,
    supply: EntrySupply,
    levels: Sequence[Level],
    knobs: Knobs,
    rules: RemovalRules,
    memory: Memory,
) -> Decision:
    """This cycle's request for one entry, and what to remember of it."""
    p = pressure(demand, supply, levels, knobs)
    stage, cycles, why = removal_stage(p.demand_units > 0, memory, rules)
    reasons = [*p.reasons, why]
    max_running = p.max_running
    if p.demand_units <= 0 and cycles < rules.confirm_cycles:
        held = max(max_running, min(memory.last_max_running, knobs.max_running_per_entry))
        if held > max_running:
            reasons.append(f"max running held at {held} until the drop is confirmed")
        max_running = held
    if stage is RemovalStage.ALL:
        max_running = supply.working
        reasons.append(f"ALL: pilots beyond the {supply.working} running jobs may be removed")
    margin = rules.margin if stage.rank >= RemovalStage.IDLE.rank else 0
    new_memory = Memory(
        no_demand_cycles=cycles, last_idle=p.idle, last_max_running=max_running, last_remove=stage
    )
    return Decision(
        idle=p.idle,
        max_running=max_running,
        remove=stage,
        remove_margin=margin,
        pressure=p,
        memory=new_memory,
        reasons=tuple(reasons),
    )
