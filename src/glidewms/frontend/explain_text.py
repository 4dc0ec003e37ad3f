"""Explanations as an operator reads them: a table per entry, or one line each.

Pure formatting of the records `Frontend.explain` returns (the same JSON the
status API serves), so `glidewms frontend explain` and its tests share one
rendering. Each table answers, in order: what was asked (request), for what
(demand), against what (supply), how much pressure that makes, which limits
and curbs cut it, where removal stands, and the reasons in words.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

Record = Mapping[str, Any]


def _num(value: Any) -> str:
    """Counts as integers, fractions with two decimals, missing as '-'."""
    if value is None:
        return "-"
    if isinstance(value, float) and not value.is_integer():
        return f"{value:.2f}"
    return str(int(value)) if isinstance(value, (int, float)) else str(value)


def _when(record: Record) -> str:
    stamp = record.get("time")
    if not isinstance(stamp, (int, float)):
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp))


def _table(rows: Sequence[tuple[str, str]]) -> list[str]:
    """Two columns, the first padded; a row whose label is empty continues the last."""
    width = max(len(label) for label, _ in rows)
    return [f"  {label:<{width}} | {text}" for label, text in rows]


def _pairs(values: Mapping[str, Any], names: Iterable[str]) -> str:
    return "  ".join(f"{name} {_num(values.get(name))}" for name in names)


def entry_table(record: Record) -> str:
    """One entry's explanation for one cycle."""
    head = f"{record.get('entry')}  group {record.get('group')}  cycle {record.get('cycle')}"
    when = _when(record)
    lines = [head + (f"  {when}" if when else ""), "  " + "-" * (len(head) + 2)]
    if "skipped" in record:
        return "\n".join([*lines, *_table([("skipped", str(record["skipped"]))])])
    request = record.get("request")
    asked = (
        "nothing sent"
        if not request
        else f"idle {request['idle']}  max_running {request['max_running']}  "
        f"remove {request['remove']} (margin {request.get('remove_margin', 0)})"
    )
    if "frozen" in record or "failed" in record:
        label, why = (
            ("frozen", record["frozen"]) if "frozen" in record else ("failed", record["failed"])
        )
        note = (
            "the last request stands, removal off"
            if label == "frozen"
            else "its last request is re-sent, removal off"
        )
        return "\n".join([*lines, *_table([(label, str(why)), ("request", asked), ("", note)])])
    d, s = record.get("demand") or {}, record.get("supply") or {}
    p, removal = record.get("pressure") or {}, record.get("removal") or {}
    size = record.get("size") or {}
    rows: list[tuple[str, str]] = [
        ("request", asked),
        (
            "demand",
            f"{_num(d.get('prop_units'))} pilots of {size.get('cpus', '?')} cpus / "
            f"{size.get('memory', '?')} MB / {size.get('gpus', 0)} GPUs",
        ),
        (
            "",
            f"idle jobs {_num(d.get('idle_jobs'))} (proportional {_num(d.get('prop_jobs'))},"
            f" only here {_num(d.get('unique_jobs'))}, old {_num(d.get('old_jobs'))}, "
            f"overflow {_num(d.get('overflow_jobs'))})  running jobs "
            f"{_num(d.get('running_jobs'))}",
        ),
        ("supply", _pairs(s, ("queued", "starting", "idle", "partial", "busy"))),
        (
            "",
            _pairs(s, ("unusable", "retiring", "removing"))
            + f"  -> idle supply {_num(s.get('idle_supply'))} pilots",
        ),
        (
            "pressure",
            f"missing {_num(p.get('effective_idle'))}  attenuated "
            f"{_num(p.get('attenuated'))}  reserve {_num(p.get('reserve'))}"
            if p
            else "-",
        ),
    ]
    rows += [("limits", x) for x in p.get("limits", [])] or [("limits", "none reached")]
    rows += [("curbs", x) for x in p.get("curbs", [])] or [("curbs", "none reached")]
    rows.append(
        (
            "removal",
            f"{removal.get('stage', '-')} after "
            f"{_num(removal.get('no_demand_cycles'))} cycle(s) without idle "
            f"demand",
        )
    )
    reasons = list(record.get("reasons") or [])
    rows += [("why" if i == 0 else "", x) for i, x in enumerate(reasons)]
    if record.get("error"):
        rows.append(("error", str(record["error"])))
    return "\n".join([*lines, *_table(rows)])


BRIEF_COLUMNS = ("entry", "group", "cycle", "demand", "supply", "idle", "max_run", "remove", "note")


def _brief_row(record: Record) -> list[str]:
    request = record.get("request") or {}
    note = ""
    for key in ("skipped", "frozen", "failed", "error"):
        if record.get(key):
            note = f"{key}: {record[key]}"
            break
    else:
        p = record.get("pressure") or {}
        cut = [*p.get("limits", []), *p.get("curbs", [])]
        note = "; ".join(cut)
    return [
        str(record.get("entry")),
        str(record.get("group")),
        _num(record.get("cycle")),
        _num((record.get("demand") or {}).get("prop_units")),
        _num((record.get("supply") or {}).get("idle_supply")),
        _num(request.get("idle")),
        _num(request.get("max_running")),
        str(request.get("remove", "-")),
        note,
    ]


def brief_table(records: Sequence[Record]) -> str:
    """One line per entry (and cycle): the overview of many entries."""
    rows = [list(BRIEF_COLUMNS)] + [_brief_row(r) for r in records]
    widths = [max(len(row[i]) for row in rows) for i in range(len(BRIEF_COLUMNS) - 1)]
    out = []
    for row in rows:
        cells = [
            cell.ljust(w) if i < 2 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=False))
        ]
        out.append("  ".join([*cells, row[-1]]).rstrip())
    return "\n".join(out)


def render(records: Sequence[Record], brief: bool = False) -> str:
    if not records:
        return "no explanation yet (has a cycle run?)"
    if brief:
        return brief_table(records)
    return "\n\n".join(entry_table(r) for r in records)
