"""Why a job is idle, and what users may see of the pool's slots.

`condor_q -better-analyze` answers "why does my job not run?" clause by
clause: a job's Requirements is split into its top-level `&&` conjuncts (the
frontend's splitter, frontend/conjuncts.py) and each conjunct is evaluated
against every live slot, so the answer names the clause no slot satisfies
and how many slots each one leaves. Counts use each slot's whole resources
(could it ever run here) and, for the full match, its free resources now.
The reverse (`analyze_slot`) says which clauses one slot fails.

Slots are shown to every user: their site, entry, resources and how many
jobs run on them, never who runs them nor the pilot's secrets. A slot ad is
written by a pilot and the factory's entry attributes; attributes whose
names say they hold a credential are left out (`public_slot`).

Pure functions over ads and rows: the routes (routes/status.py) read the
store and bound what is evaluated (`MAX_ANALYZE_SLOTS`).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Mapping
from typing import Any

from glidewms import classads
from glidewms.frontend.conjuncts import split_conjuncts
from glidewms.pool.slots import free_from, slot_with, whole_slot

MAX_ANALYZE_SLOTS = 5_000  # slots one analysis evaluates (the first by registration)
MAX_CLAUSES = 64  # conjuncts reported; the rest are counted together
_SECRET = re.compile(r"token|secret|passw|credential|proxy|private|_key$|^key", re.IGNORECASE)


def public_slot(slot: Mapping[str, Any]) -> dict[str, Any]:
    """The slot ad without attributes named like credentials."""
    return {k: v for k, v in slot.items() if not _SECRET.search(str(k))}


def slot_view(row: Any, running: int, now: float | None = None) -> dict[str, Any]:
    """One pilot as `glidewms status` shows it to any user."""
    slot = row.slot or {}
    total = free_from(slot, None)
    free = free_from(slot, row.free) if row.free else dict(total)
    now = time.time() if now is None else now
    return {
        "pilot_id": row.pilot_id,
        "site": slot.get("GLIDEIN_Site"),
        "entry": slot.get("GLIDEIN_Entry_Name"),
        "frontend": row.frontend,
        "group": row.group_name,
        "state": "retiring" if row.retiring and row.state == "active" else row.state,
        "total": total,
        "free": free,
        "jobs": running,
        "age": max(0.0, now - row.registered_at),
        "registered_at": row.registered_at,
        "ad": public_slot(slot),
    }


def clauses_of(job: Any) -> list[str]:
    """The job's Requirements as its top-level conjuncts (text)."""
    if "Requirements" not in job:
        return []
    return [c.strip() for c in split_conjuncts(str(job.lookup("Requirements"))) if c.strip()]


def _true(clause: Any, job: Any, slot: Any) -> bool:
    return classads.is_true(classads.evaluate(clause, job, slot))


def _accepts(slot: Any, job: Any) -> bool:
    """The slot's own Start (or Requirements) against the job."""
    for name in ("Start", "Requirements"):
        if name in slot:
            return classads.is_true(classads.evaluate(slot.lookup(name), slot, job))
    return True


def _parsed(clauses: list[str]) -> list[Any]:
    out = []
    for text in clauses:
        try:
            out.append(classads.parse_expr(text, "Requirements"))
        except classads.ClassAdError:
            out.append(None)  # cannot be evaluated: it matches nothing
    return out


def analyze_job(job: Any, pilots: Iterable[tuple[str, Mapping[str, Any], Any]]) -> dict[str, Any]:
    """For each clause of the job's Requirements, how many slots satisfy it;
    and how many satisfy all of them, accept the job (their Start), and
    match it with the resources they have free now. `pilots` are
    (pilot id, slot dict, reported free resources)."""
    texts = clauses_of(job)
    shown, rest = texts[:MAX_CLAUSES], texts[MAX_CLAUSES:]
    trees = _parsed(shown)
    counts = [0] * len(shown)
    total = all_clauses = accepting = now = 0
    for _, slot, free in pilots:
        total += 1
        whole = whole_slot(slot)
        results = [t is not None and _true(t, job, whole) for t in trees]
        for i, ok in enumerate(results):
            counts[i] += ok
        reqs_ok = "Requirements" not in job or _true(job.lookup("Requirements"), job, whole)
        all_clauses += reqs_ok
        start_ok = _accepts(whole, job)
        accepting += start_ok
        if reqs_ok and start_ok:
            now += classads.job_fits_slot(job, slot_with(slot, free_from(slot, free)))
    return {
        "slots": total,
        "clauses": [{"clause": t, "matching": n} for t, n in zip(shown, counts, strict=True)],
        "more_clauses": len(rest),
        "matching_requirements": all_clauses,
        "accepting_job": accepting,
        "matching_now": now,
    }


def analyze_slot(job: Any, slot: Mapping[str, Any]) -> dict[str, Any]:
    """Which of the job's clauses this slot fails, and whether its Start
    accepts the job."""
    whole = whole_slot(slot)
    texts = clauses_of(job)[:MAX_CLAUSES]
    rows = [
        {"clause": t, "matches": tree is not None and _true(tree, job, whole)}
        for t, tree in zip(texts, _parsed(texts), strict=True)
    ]
    return {
        "clauses": rows,
        "failing": [r["clause"] for r in rows if not r["matches"]],
        "slot_accepts_job": _accepts(whole, job),
    }
