"""What the factory does for one (frontend group, entry) pair: pure functions, no I/O.

`plan()` turns a frontend's desired state and the pilots counted now into
either a number of pilots to submit (clamped by every limit, each clamp named)
or a number of pilots to remove (never more than the excess, and only as far
as the request's removal stage allows). `choose_victims()` picks which pilots
go, in the order that wastes the least: held, then queued at the site (newest
first: the last in the site's queue), then running (newest first: the least
work lost), the running ones only in stage ALL.

Removal stages (`glidewms.protocol.RemovalStage`; protocol.md, "Factory requests"),
as GlideinWMS frontends know them:

- NO: never remove; submit up to the request.
- WAIT: never remove; submit up to the request. The excess drains by itself
  as pilots run out of work. Identical to NO on the factory side: the factory
  never submits beyond a request in either stage; the two names let a frontend
  say why it is not removing.
- IDLE: remove pilots not yet running (held or queued) beyond `idle + margin`.
- ALL: as IDLE, and also pilots alive beyond `max_running + margin`: queued
  ones first, then running ones.

Pilots already being removed are never counted as excess again, so a removal
in flight is never doubled.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from glidewms.classads import ClassAdError, parse_expr
from glidewms.config.factory import EntryConfig
from glidewms.config.values import one_line
from glidewms.factory.backends.base import PilotState
from glidewms.factory.states import GlideinState
from glidewms.factory.store import Glidein
from glidewms.protocol import RemovalStage


class EntryRequest(BaseModel):
    """What one frontend group wants at one entry."""

    model_config = ConfigDict(extra="forbid")

    idle: int = Field(ge=0, description="pilots to keep queued at the site")
    max_running: int = Field(ge=0, description="most pilots of this group alive at the entry")
    remove: RemovalStage = Field(default=RemovalStage.NO, description="NO, WAIT, IDLE or ALL")
    remove_margin: int = Field(
        default=0, ge=0, description="pilots tolerated beyond the request before removing"
    )
    start_expr: str | None = Field(
        default=None,
        max_length=4096,
        description="ClassAd expression the pilot publishes as GLIDEIN_Start (its slots' Start)",
    )
    container_image: str | None = Field(
        default=None,
        max_length=1024,
        description="container image jobs on these pilots run in (GLIDEIN_Container_Image)",
    )
    pilot_token: str | None = Field(
        default=None,
        min_length=1,
        max_length=16384,
        repr=False,
        description="this entry's own pilot token (overrides the request's); kept in a 0600 "
        "file, never in the stored request",
    )

    @field_validator("remove", mode="before")
    @classmethod
    def _remove(cls, value: Any) -> Any:
        if isinstance(value, str):
            return value.strip().upper()
        return value

    @field_validator("start_expr")
    @classmethod
    def _start_expr(cls, value: str | None) -> str | None:
        """Refused here rather than by every pilot: one clear 422 to the frontend."""
        if value is None:
            return None
        value = value.strip()
        if not value:
            raise ValueError("expected a one-line ClassAd expression")
        one_line(value, "start_expr")  # a glidein_config line on every pilot
        try:
            parse_expr(value)
        except ClassAdError as exc:
            raise ValueError(str(exc)) from None
        return value

    @field_validator("container_image")
    @classmethod
    def _container_image(cls, value: str | None) -> str | None:
        if value is not None and (not value.strip() or any(c.isspace() for c in value)):
            raise ValueError("expected an image reference or path without whitespace")
        return None if value is None else one_line(value, "container_image")


@dataclass(frozen=True)
class Counts:
    """Pilots alive now: the request's own at this entry, and the entry's total.

    `held` pilots are stuck at the site (a batch system's hold): they count
    against max_running and max_pilots but not as idle supply, and the entry's
    `max_held` stops submission while too many are held (no flood into a
    broken site).
    """

    queued: int = 0
    running: int = 0
    removing: int = 0
    held: int = 0
    entry_queued: int = 0
    entry_active: int = 0
    entry_held: int = 0
    frontend_queued: int = 0  # all groups of this frontend at the entry
    frontend_active: int = 0

    @property
    def active(self) -> int:
        return self.queued + self.running + self.removing + self.held

    @property
    def pending(self) -> int:
        """Not yet running and not being removed: the cheapest to remove."""
        return self.held + self.queued


@dataclass(frozen=True)
class SubmitPlan:
    """Submit `count` pilots; `limited_by` names the clamp that decided it."""

    count: int
    limited_by: str


@dataclass(frozen=True)
class RemovePlan:
    """Remove `pending` not-yet-running pilots and `running` running ones."""

    pending: int
    running: int
    reason: str

    @property
    def count(self) -> int:
        return self.pending + self.running


def removal(request: EntryRequest, counts: Counts) -> RemovePlan | None:
    """The removal the request's stage allows, or None when nothing is in excess."""
    if request.remove in (RemovalStage.NO, RemovalStage.WAIT):
        return None
    margin = request.remove_margin
    idle_excess = max(0, counts.pending - (request.idle + margin))
    running_excess = 0
    if request.remove is RemovalStage.ALL:
        alive = counts.pending + counts.running  # removing ones already on their way out
        running_excess = max(0, alive - (request.max_running + margin))
    pending = min(counts.pending, max(idle_excess, running_excess))
    running = min(counts.running, max(0, running_excess - pending))
    if pending + running == 0:
        return None
    reason = "idle above request" if idle_excess >= running_excess else "above max_running"
    return RemovePlan(pending, running, reason)


def plan(
    entry: EntryConfig,
    request: EntryRequest,
    counts: Counts,
    downtime: str | None = None,
    frontend: str | None = None,
) -> SubmitPlan | RemovePlan:
    """How many pilots to submit to, or remove from, `entry` now.

    Removal first (it is allowed even in a downtime or on a disabled entry).
    Otherwise submit the least of: idle wanted minus queued; the group's
    max_running minus its pilots alive; the entry's max_pilots minus all its
    pilots alive; the entry's max_idle minus all its queued pilots;
    max_per_cycle; and the entry's `frontend_limits` of `frontend` (all its
    groups together). Never negative; nothing while the entry is disabled, in
    a downtime (`downtime` is its reason) or holding `max_held` pilots.
    """
    removing = removal(request, counts)
    if removing is not None:
        return removing
    if not entry.enabled:
        return SubmitPlan(0, "entry disabled")
    if downtime is not None:
        return SubmitPlan(0, f"downtime: {downtime}")
    if counts.entry_held >= entry.max_held:
        return SubmitPlan(0, "entry max_held")
    bounds = {
        "idle": request.idle - counts.queued,
        "max_running": request.max_running - counts.active,
        "entry max_pilots": entry.max_pilots - counts.entry_active,
        "entry max_idle": entry.max_idle - counts.entry_queued,
        "entry max_per_cycle": entry.max_per_cycle,
    }
    limits = entry.frontend_limits.get(frontend) if frontend is not None else None
    if limits is not None and limits.max_pilots is not None:
        bounds["frontend max_pilots"] = limits.max_pilots - counts.frontend_active
    if limits is not None and limits.max_idle is not None:
        bounds["frontend max_idle"] = limits.max_idle - counts.frontend_queued
    limited_by, count = min(bounds.items(), key=lambda item: item[1])
    return SubmitPlan(max(0, count), limited_by)


def choose_victims(pilots: Sequence[Glidein], decision: RemovePlan) -> list[Glidein]:
    """Which of a request's pilots at one entry to remove.

    Held first, then queued, newest first within each; then running, newest
    first. Pilots without a backend id (a submission still in flight) cannot
    be removed yet and are skipped; the next cycle sees them.
    """

    def newest_first(state: GlideinState) -> list[Glidein]:
        chosen = [g for g in pilots if g.state is state and g.backend_id]
        return sorted(chosen, key=lambda g: (g.submitted_at, g.glidein_id), reverse=True)

    pending = newest_first(GlideinState.held) + newest_first(GlideinState.queued)
    victims = pending[: decision.pending]
    victims += newest_first(GlideinState.running)[: decision.running]
    return victims


def active_downtime(
    downtimes: Sequence[Mapping[str, Any]], entry: str, frontend: str, now: float
) -> Mapping[str, Any] | None:
    """The downtime in force for (entry, frontend) at `now`, if any.

    A downtime names an entry or `*` (all) and a frontend or `*` (all); it is
    in force from `start` until `end` (None: until removed). When several
    apply, the one ending last is returned: that is when submission resumes.
    """
    current = [
        d
        for d in downtimes
        if d["entry"] in ("*", entry)
        and d["frontend"] in ("*", frontend)
        and d["start"] <= now
        and (d["end"] is None or now < d["end"])
    ]
    if not current:
        return None
    return max(current, key=lambda d: math.inf if d["end"] is None else d["end"])


def next_state(current: GlideinState, seen: PilotState) -> GlideinState:
    """A glidein's new state given what its backend reports."""
    if seen is PilotState.unknown:
        return current  # keep counting it as it was
    if current is GlideinState.removing:
        ended = seen in (PilotState.finished, PilotState.failed, PilotState.removed)
        return GlideinState.removed if ended else current
    return GlideinState(seen.value)


class Tally:
    """Active pilots per (entry, frontend, group, state), kept current within a cycle."""

    def __init__(self, active: list[Glidein]) -> None:
        self._n: Counter[tuple[str, str, str, GlideinState]] = Counter(
            (g.entry, g.frontend, g.group, g.state) for g in active
        )

    def add(self, entry: str, frontend: str, group: str, state: GlideinState, n: int) -> None:
        self._n[(entry, frontend, group, state)] += n

    def entry_counts(self, entry: str) -> dict[str, int]:
        """All frontends' active pilots at `entry`, by state."""
        out: Counter[str] = Counter()
        for (name, _, _, state), n in self._n.items():
            if name == entry:
                out[state.value] += n
        return dict(out)

    def counts(self, entry: str, frontend: str, group: str) -> Counts:
        whole = self.entry_counts(entry)
        mine: Counter[GlideinState] = Counter()
        for (name, fe, _, state), n in self._n.items():
            if name == entry and fe == frontend:
                mine[state] += n
        return Counts(
            queued=self._n[(entry, frontend, group, GlideinState.queued)],
            running=self._n[(entry, frontend, group, GlideinState.running)],
            removing=self._n[(entry, frontend, group, GlideinState.removing)],
            held=self._n[(entry, frontend, group, GlideinState.held)],
            entry_queued=whole.get(GlideinState.queued.value, 0),
            entry_active=sum(whole.values()),
            entry_held=whole.get(GlideinState.held.value, 0),
            frontend_queued=mine[GlideinState.queued],
            frontend_active=sum(mine.values()),
        )


def attribute_text(value: str | int | float | bool) -> str:
    """An attribute value as the pilot receives it (ClassAd spelling of booleans)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
