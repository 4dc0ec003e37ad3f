"""Why each entry got its request: the records `frontend explain` and the status show.

One record per (group, entry) and cycle, the last `explain_history` kept:
what was decided and from what (demand, supply, pressure, limits, curbs,
removal stage, reasons), or why the entry was skipped, frozen or failed.
Groups share entries, so records are kept per group and entry key.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from glidewms.frontend.observe import Observation
from glidewms.frontend.policy import Decision

Record = dict[str, Any]


def decision_record(o: Observation, d: Decision, error: str | None) -> Record:
    """An entry's decision with everything it was made from."""
    p = d.pressure
    return {
        "factory": o.factory,
        "entry_name": o.entry,
        "size": vars(o.info.size),
        "demand": o.demand.summary(),
        "supply": o.supply.summary(),
        "pressure": None
        if p is None
        else {
            "demand_units": round(p.demand_units, 3),
            "effective_idle": round(p.effective_idle, 3),
            "attenuated": round(p.attenuated, 3),
            "reserve": p.reserve,
            "limits": list(p.limits),
            "curbs": list(p.curbs),
        },
        "removal": {
            "stage": d.remove.value,
            "no_demand_cycles": d.memory.no_demand_cycles,
            "margin": d.remove_margin,
        },
        "request": d.as_request(),
        "reasons": list(d.reasons) + ([o.paused] if o.paused else []),
        "error": error,
    }


class Explanations:
    """The last cycles' records per (group, entry key)."""

    def __init__(self, history: int) -> None:
        self.history = history
        self._kept: dict[tuple[str, str], deque[Record]] = {}

    def add(self, cycle: int, group: str, key: str, now: float, record: Record) -> None:
        """Keep `record` as the latest of (group, key) in this cycle."""
        kept = self._kept.get((group, key))
        if kept is None:
            kept = self._kept[(group, key)] = deque(maxlen=self.history)
        kept.append({"cycle": cycle, "entry": key, "time": now, "group": group, **record})

    def known(self) -> list[str]:
        """Every entry key that has a record, with its group (for a 404's hint)."""
        return sorted({f"{key} (group {group})" for group, key in self._kept})

    def select(
        self, entry: str | None = None, history: bool = False, group: str | None = None
    ) -> list[Record]:
        """Latest (or all kept) records, for every entry or those named `entry` (a key
        `factory/entry` or a bare entry name), of every group or `group`; ordered by
        entry, then group."""
        out: list[Record] = []
        for (name, key), records in sorted(
            self._kept.items(), key=lambda item: (item[0][1], item[0][0])
        ):
            if entry is not None and entry not in (key, key.split("/", 1)[-1]):
                continue
            if group is not None and name != group:
                continue
            out.extend(records if history else list(records)[-1:])
        return out
