"""`glidewms analyze JOB --entries`: which factory entries could run the job
at all, clause by clause, as the frontend would judge them.

The frontend matches idle jobs to entries before any pilot exists, on the
slot-like ad an entry's pilots would publish (frontend/observe.py) and with
its conjunct matcher (frontend/conjuncts.py): a clause reading what only a
running pilot detects (its OS version, container runtime, GPU model) passes
for an entry that does not declare it. This asks the factory for its entry
ads (a frontend or admin token: users do not see entries) and answers with
the same code, so "no entry passes clause X" here is why no pilot is asked
for the job.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from glidewms.config.frontend import GroupConfig
from glidewms.frontend.conjuncts import Matcher, conjuncts
from glidewms.frontend.matching import EntryInfo
from glidewms.frontend.observe import entry_attributes, entry_size

MAX_ENTRIES = 10_000  # entry ads one analysis reads


def entries_report(job: Any, entries: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """For each clause of the job's Requirements, the entries passing it;
    and the entries passing all of them (disabled entries are left out)."""
    group = GroupConfig(name="analyze")  # its auto_* sizes for `auto` entries
    infos = []
    for entry in list(entries)[:MAX_ENTRIES]:
        if not entry.get("enabled", True) or not isinstance(entry.get("name"), str):
            continue
        size = entry_size(entry, [], group)
        infos.append(EntryInfo(entry["name"], entry_attributes(entry, "factory", size), size))
    matcher = Matcher(infos)
    text = str(job.lookup("Requirements")) if "Requirements" in job else None
    clauses = conjuncts(text, True)
    rows = []
    candidates = matcher.all
    for clause in clauses:
        passing = matcher.passing(job, clause)
        candidates = candidates & passing
        rows.append({"clause": clause.text.strip(), "entries": len(passing)})
    return {
        "entries": len(infos),
        "clauses": rows,
        "matching": sorted(infos[i].key for i in candidates),
    }


def entries_lines(report: Mapping[str, Any]) -> list[str]:
    n = report["entries"]
    lines = [f"{n} enabled factory entr{'y' if n == 1 else 'ies'}; clause by clause:"]
    for row in report["clauses"]:
        lines.append(f"  {row['entries']:>5}  {row['clause']}")
    matching = report["matching"]
    if matching:
        shown = ", ".join(matching[:20]) + (" ..." if len(matching) > 20 else "")
        lines.append(f"  {len(matching):>5}  could run it: {shown}")
    else:
        none = [r["clause"] for r in report["clauses"] if r["entries"] == 0]
        lines.append(f"no entry could run it{': no entry satisfies ' + none[0] if none else ''}")
    return lines
