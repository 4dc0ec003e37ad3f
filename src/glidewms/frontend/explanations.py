"""Why each entry got its request: the records `frontend explain` and the status show.

One record per (group, entry) and cycle: what was decided and from what
(demand, supply, pressure, limits, curbs, removal stage, reasons), or why
the entry was skipped, frozen or failed. Groups share entries, so records
are kept per group and entry key.

They are evidence for an operator who looks after the fact (a site that
broke overnight), so they are kept for a time, `explain_history_hours`
(24 h by default), not a number of cycles, and bounded in records per entry
(`explain_history`). A cycle that decided exactly as the one before (same
record but for its cycle, its time and the count of cycles without demand)
is folded into it: the record's `cycle` and `time` become the latest, and
it gains `first_cycle`, `first_time` and `cycles` (and keeps the latest
count), so hours of a steady state cost one record. Records also go to a
journal (`state_dir/explain.jsonl`, one JSON line per new record or fold,
appended once per cycle and rewritten from memory when it has grown to
twice what is kept), so they survive a restart.
No token is ever part of a record.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import deque
from pathlib import Path
from typing import Any

from glidewms.frontend.observe import Observation
from glidewms.frontend.policy import Decision

log = logging.getLogger(__name__)

# Fields of a kept record that say when, not what: two records that differ only
# in them decided alike.
WHEN = frozenset({"cycle", "time", "first_cycle", "first_time", "cycles"})

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


def _what(record: Record) -> Record:
    """A record without when, nor the count of cycles without demand (which grows
    every cycle of an idle entry: the folded record keeps the latest count)."""
    out = {k: v for k, v in record.items() if k not in WHEN}
    removal = out.get("removal")
    if isinstance(removal, dict) and "no_demand_cycles" in removal:
        out["removal"] = {k: v for k, v in removal.items() if k != "no_demand_cycles"}
    return out


def same_decision(a: Record, b: Record) -> bool:
    """Do two records say the same but for when (and how long without demand)?"""
    return _what(a) == _what(b)


def last_time(record: Record) -> float:
    return float(record.get("time") or 0.0)


class Explanations:
    """The records of the last `keep_seconds` per (group, entry key), at most
    `history` each; journaled to `journal` when given."""

    def __init__(
        self, history: int, keep_seconds: float = math.inf, journal: Path | None = None
    ) -> None:
        self.history = history
        self.keep_seconds = keep_seconds
        self.journal = journal
        self._kept: dict[tuple[str, str], deque[Record]] = {}
        self._pending: list[str] = []  # journal lines not yet written
        self._journaled = 0  # lines in the journal file
        self._journal_failed = False

    def add(self, cycle: int, group: str, key: str, now: float, record: Record) -> None:
        """Keep `record` as the latest of (group, key) in this cycle."""
        stored = {"cycle": cycle, "entry": key, "time": now, "group": group, **record}
        kept = self._kept.get((group, key))
        if kept and same_decision(kept[-1], stored):
            removal = stored.get("removal")
            self._fold(kept[-1], cycle, now, removal)
            line: Record = {"fold": [group, key], "cycle": cycle, "time": now}
            if removal is not None:
                line["removal"] = removal
            self._pending.append(json.dumps(line))
        else:
            self._append(group, key, stored)
            self._pending.append(json.dumps({"add": stored}, default=str))
        self._prune(now)

    def _append(self, group: str, key: str, stored: Record) -> None:
        kept = self._kept.get((group, key))
        if kept is None:
            kept = self._kept[(group, key)] = deque(maxlen=self.history)
        kept.append(stored)

    @staticmethod
    def _fold(record: Record, cycle: int, now: float, removal: Any = None) -> None:
        """`record` now covers one more cycle: its cycle and time are the latest,
        `first_cycle` and `first_time` where the run began."""
        record.setdefault("first_cycle", record.get("cycle"))
        record.setdefault("first_time", record.get("time"))
        record["cycle"], record["time"] = cycle, now
        if isinstance(removal, dict):
            record["removal"] = removal  # the latest count of cycles without demand
        record["cycles"] = int(record.get("cycles", 1)) + 1

    def _prune(self, now: float) -> None:
        """Forget records whose last cycle is older than `keep_seconds`."""
        horizon = now - self.keep_seconds
        for where in [k for k, kept in self._kept.items() if kept and last_time(kept[0]) < horizon]:
            kept = self._kept[where]
            while kept and last_time(kept[0]) < horizon:
                kept.popleft()
            if not kept:
                del self._kept[where]

    def records(self) -> int:
        return sum(len(k) for k in self._kept.values())

    # ------------------------------------------------------------------ journal

    def load(self, now: float) -> int:
        """Read the journal back (at start); the records kept. A line that does not
        parse is skipped: the journal is evidence, never a reason not to start."""
        if self.journal is None:
            return 0
        try:
            with open(self.journal, encoding="utf-8") as f:
                for line in f:
                    self._journaled += 1
                    self._replay(line)
        except FileNotFoundError:
            return 0
        except OSError as exc:
            log.warning("%s: unreadable (%s); explanations start empty", self.journal, exc)
        self._prune(now)
        return self.records()

    def _replay(self, line: str) -> None:
        try:
            item = json.loads(line)
        except ValueError:
            return
        if not isinstance(item, dict):
            return
        added, fold = item.get("add"), item.get("fold")
        if isinstance(added, dict):
            group, key = added.get("group"), added.get("entry")
            if isinstance(group, str) and isinstance(key, str):
                self._append(group, key, added)
        elif isinstance(fold, list) and len(fold) == 2:
            kept = self._kept.get((str(fold[0]), str(fold[1])))
            cycle, when = item.get("cycle"), item.get("time")
            if kept and isinstance(cycle, int) and isinstance(when, (int, float)):
                self._fold(kept[-1], cycle, float(when), item.get("removal"))

    def flush(self) -> None:
        """Append this cycle's lines to the journal; rewrite it from memory once it
        holds twice what is kept (and at least 10,000 lines)."""
        if self.journal is None:
            self._pending.clear()
            return
        lines, self._pending = self._pending, []
        try:
            self.journal.parent.mkdir(parents=True, exist_ok=True)
            if self._journaled + len(lines) > max(10_000, 2 * self.records()):
                self._rewrite()
            elif lines:
                with open(self.journal, "a", encoding="utf-8") as f:
                    f.write("".join(f"{line}\n" for line in lines))
                self._journaled += len(lines)
            self._journal_failed = False
        except OSError as exc:
            if not self._journal_failed:  # once, until it works again
                log.warning("%s: cannot write explanations: %s", self.journal, exc)
            self._journal_failed = True

    def _rewrite(self) -> None:
        assert self.journal is not None
        tmp = self.journal.with_name(f".{self.journal.name}.{os.getpid()}.tmp")
        n = 0
        with open(tmp, "w", encoding="utf-8") as out:
            for kept in self._kept.values():
                for record in kept:
                    out.write(json.dumps({"add": record}, default=str) + "\n")
                    n += 1
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self.journal)
        self._journaled = n

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
