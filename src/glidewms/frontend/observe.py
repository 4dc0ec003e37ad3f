"""From what the pools and factories said to per-entry demand and supply: pure.

The service gathers the raw answers; this module turns one group's share of
them into `Observation`s (entry, demand, supply) that the policy decides on.
It is CPU work (ClassAd matching) that the service runs in a worker thread.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from glidewms import classads
from glidewms.config.frontend import GroupConfig
from glidewms.frontend.conjuncts import Matcher
from glidewms.frontend.matching import EntryDemand, EntryInfo, GroupRules, Size, match_demand
from glidewms.frontend.supply import EntrySupply, entry_supply, pilots_by_entry


@dataclass(kw_only=True)
class FactoryView:
    """One factory's answers for one group: its entries and the group's pilot counts."""

    name: str
    url: str
    entries: list[dict[str, Any]]
    counts: dict[str, dict[str, int]]  # entry -> state -> pilots of this group


@dataclass(kw_only=True)
class Observation:
    """One entry of one factory as a group sees it this cycle: demand and supply."""

    factory: str
    entry: str
    info: EntryInfo
    demand: EntryDemand
    supply: EntrySupply
    paused: str | None = None  # the factory paused the entry (its ad's `paused`): why


@dataclass
class GroupView:
    observations: dict[str, Observation] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # entry key -> why not considered
    failed: dict[str, str] = field(default_factory=dict)  # entry key -> error (isolated)
    expression_errors: dict[str, int] = field(default_factory=dict)  # group expr -> count
    evaluations: int = 0


def entry_key(factory: str, entry: str) -> str:
    return f"{factory}/{entry}"


def _number(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return int(value)


def entry_size(
    entry: Mapping[str, Any], pilots: Sequence[Mapping[str, Any]], group: GroupConfig
) -> Size:
    """One pilot's resources: the entry's numbers; for `auto`, what its registered
    pilots reported, else the group's assumption."""
    slot = next((p.get("slot") or {} for p in pilots), {})
    attrs = entry.get("attributes") or {}
    cpus = _number(entry.get("cpus")) or _number(slot.get("Cpus")) or group.auto_cpus
    memory = _number(entry.get("memory")) or _number(slot.get("Memory")) or group.auto_memory
    gpus = (
        _number(entry.get("gpus")) or _number(attrs.get("GPUs")) or _number(slot.get("GPUs")) or 0
    )
    learned = _number(slot.get("Disk"))
    disk = _number(entry.get("disk")) or (learned // 1024 if learned else None)
    return Size(cpus=cpus, memory=memory, gpus=gpus, disk=disk or group.auto_disk)


def entry_attributes(entry: Mapping[str, Any], factory: str, size: Size) -> dict[str, Any]:
    """The slot-like ad one of the entry's pilots would publish."""
    attrs = dict(entry.get("attributes") or {})
    attrs.setdefault("Arch", "X86_64")
    attrs.setdefault("OpSys", "LINUX")
    attrs.setdefault("HasFileTransferPluginMethods", "http,https")  # built into every pilot
    attrs.update(
        {
            "GLIDEIN_Site": entry.get("site"),
            "GLIDEIN_Entry_Name": entry.get("name"),
            "GLIDEIN_Factory_Name": factory,
            "Cpus": size.cpus,
            "Memory": size.memory,
            "GPUs": size.gpus,
        }
    )
    if size.disk is not None:
        attrs["Disk"] = size.disk * 1024  # entries say MB; ads KiB
    return {k: v for k, v in attrs.items() if v is not None}


def paused_text(paused: Any) -> str | None:
    """Why the factory paused an entry (by whom), from its ad; None when it did not.

    A paused entry is still asked for pilots: the factory sends a probe now and
    then while it is asked, and resumes the entry when one works.
    """
    if not isinstance(paused, Mapping):
        return None
    return f"entry paused at the factory (by {paused.get('by', '?')}): {paused.get('reason', '')}"


def downtime_text(downtime: Any) -> str:
    """Why an entry in downtime is not counted on, from the factory's downtime record."""
    if not isinstance(downtime, Mapping):
        return "entry in downtime at the factory"
    end = downtime.get("end")
    until = (
        time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(end))
        if isinstance(end, (int, float))
        else "further notice"
    )
    return f"entry in downtime at the factory until {until}: {downtime.get('reason', '')}"


def rules_for(group: GroupConfig) -> GroupRules:
    o = group.overflow
    return GroupRules(
        match_expr=group.match_expr,
        start_expr=group.start_expr,
        job_constraint=group.job_constraint,
        old_idle_seconds=group.old_idle_seconds,
        overflow_after=o.after_seconds if o else None,
        overflow_match=o.match_expr if o else "true",
        overflow_start=o.start_expr if o else "true",
    )


def pilot_start_expr(group: GroupConfig) -> str | None:
    """The Start expression the group's pilots publish, overflow included."""
    if group.start_expr is None:
        return None
    if group.overflow is None:
        return group.start_expr
    o = group.overflow
    return (
        f"({group.start_expr}) || ((time() - TARGET.QDate) >= {o.after_seconds:g} "
        f"&& ({o.start_expr}))"
    )


def observe_group(
    group: GroupConfig,
    frontend: str | None,
    autoclusters: Sequence[Mapping[str, Any]],
    pool_pilots: Sequence[Mapping[str, Any]],
    factories: Sequence[FactoryView],
    now: float,
    fast: bool = True,
    memo: dict[tuple[Any, ...], int] | None = None,
) -> GroupView:
    """Demand and supply of one group at every entry it may use.

    An entry whose ad cannot be read (a factory's bad answer) is set aside in
    `failed` with the reason, and the others go on; a nameless one cannot even
    be named, so it is reported under its position. `memo` keeps ClassAd
    answers from one cycle to the next (see `Matcher`).
    """
    view = GroupView()
    constraint = (
        None
        if group.entry_constraint.strip().lower() == "true"
        else classads.parse_expr(group.entry_constraint)
    )
    candidates: list[tuple[FactoryView, dict[str, Any]]] = []
    for f in factories:
        for position, entry in enumerate(f.entries):
            name = entry.get("name") if isinstance(entry, Mapping) else None
            if not isinstance(name, str) or not name:
                view.failed[entry_key(f.name, f"#{position}")] = (
                    f"entry ad #{position} of factory {f.name} has no name: {entry!r:.200}"
                )
                continue
            key = entry_key(f.name, name)
            if not entry.get("enabled", True):
                view.skipped[key] = "entry disabled at the factory"
            elif entry.get("in_downtime"):
                # no new pilots there: its jobs count at the other entries meanwhile
                view.skipped[key] = downtime_text(entry.get("downtime"))
            else:
                candidates.append((f, entry))
    owners: dict[str, list[FactoryView]] = {}
    for f, entry in candidates:
        owners.setdefault(entry["name"], []).append(f)

    def key_of(slot: Mapping[str, Any]) -> str | None:
        name = slot.get("GLIDEIN_Entry_Name")
        if not isinstance(name, str):
            return None
        found = owners.get(name)
        if not found:
            return None
        if len(found) > 1:
            url = str(slot.get("GLIDEIN_Factory", "")).rstrip("/")
            found = [f for f in found if f.url.rstrip("/") == url]
            if len(found) != 1:
                return None
        return entry_key(found[0].name, name)

    pilots = pilots_by_entry(pool_pilots, frontend, group.name, key_of)
    infos: list[EntryInfo] = []
    meta: dict[str, tuple[FactoryView, dict[str, Any]]] = {}
    for f, entry in candidates:
        key = entry_key(f.name, entry["name"])
        try:
            size = entry_size(entry, pilots.get(key, []), group)
            info = EntryInfo(key, entry_attributes(entry, f.name, size), size)
            ad = classads.ad_from_dict(dict(info.attrs))
            if constraint is not None and not classads.is_true(constraint.eval(scope=ad)):
                view.skipped[key] = "entry_constraint is not true for this entry"
                continue
        except Exception as exc:  # one unreadable entry ad must not hide the others
            view.failed[key] = f"entry ad unreadable: {exc!r}"
            continue
        infos.append(info)
        meta[key] = (f, entry)
    matcher = Matcher(infos, fast=fast, memo=memo)
    demand = match_demand(autoclusters, infos, rules_for(group), now, matcher)
    view.evaluations = matcher.evaluations
    view.expression_errors = dict(matcher.errors)
    for info in infos:
        f, entry = meta[info.key]
        d = demand[info.key]
        try:
            s = entry_supply(
                f.counts.get(entry["name"], {}), pilots.get(info.key, []), info.size, d.requests
            )
        except Exception as exc:
            view.failed[info.key] = f"pilot counts unreadable: {exc!r}"
            continue
        view.observations[info.key] = Observation(
            factory=f.name,
            entry=entry["name"],
            info=info,
            demand=d,
            supply=s,
            paused=paused_text(entry.get("paused")),
        )
    return view
