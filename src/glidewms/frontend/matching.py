"""Which idle jobs can run where: autoclusters against entries, counted in pilots.

Pure functions over the pool's autoclusters and the factories' entry ads; the
only library used is the real ClassAd one. Matching a million jobs against a
thousand entries must take seconds, so the work is shaped to scale with
*distinct* questions, not with jobs x entries:

- jobs come as autoclusters (the pool already grouped them);
- every expression is split into its conjuncts, each answered once per
  distinct question, the entries passing it kept as a set (`conjuncts.py`);
- contributions are summed per distinct set of matching entries, then spread
  to its members, so the bookkeeping grows with distinct answers too.

A group expression (match, start, overflow) that evaluates to `Error` is
counted in `Matcher.errors`: the service does not trust such a group's demand.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from glidewms import classads
from glidewms.frontend.conjuncts import Conjunct, Matcher, conjuncts


@dataclass(frozen=True)
class Size:
    """Resources of one pilot (an entry's size) or free in one pilot; disk in MB, None = any."""

    cpus: int = 1
    memory: int = 2048
    gpus: int = 0
    disk: int | None = None


@dataclass(frozen=True)
class JobRequest:
    """What one job of an autocluster asks for; disk in KiB as HTCondor's RequestDisk."""

    cpus: int = 1
    memory: int = 0
    gpus: int = 0
    disk: int = 0


def jobs_per_pilot(request: JobRequest, size: Size) -> int:
    """How many such jobs one pilot of this size runs at once; 0 when one does not fit.

    A job bigger than an entry's pilots never counts at that entry.
    """
    fits = [size.cpus // max(1, request.cpus)]
    if request.memory > 0:
        fits.append(size.memory // request.memory)
    if request.gpus > 0:
        fits.append(size.gpus // request.gpus)
    if request.disk > 0 and size.disk is not None:
        fits.append(size.disk * 1024 // request.disk)
    return max(0, min(fits))


@dataclass
class EntryDemand:
    """Idle jobs that can run at one entry, counted three ways and in pilots.

    `idle_jobs` counts straight (every job matching here counts 1), `prop_jobs`
    proportionally (a job matching k entries counts 1/k), `unique_jobs` only
    the jobs that can run nowhere else. `*_units` are the same in pilots of
    this entry's size. `requests` keeps the proportional idle count per job
    shape, so that supply can be judged against what the jobs need.
    """

    idle_jobs: int = 0
    prop_jobs: float = 0.0
    unique_jobs: int = 0
    old_jobs: int = 0
    overflow_jobs: int = 0
    running_jobs: int = 0
    units: float = 0.0
    prop_units: float = 0.0
    old_units: float = 0.0
    old_prop_units: float = 0.0
    autoclusters: int = 0
    requests: set[JobRequest] = field(default_factory=set)

    def summary(self) -> dict[str, Any]:
        return {
            "idle_jobs": self.idle_jobs,
            "prop_jobs": round(self.prop_jobs, 3),
            "unique_jobs": self.unique_jobs,
            "old_jobs": self.old_jobs,
            "overflow_jobs": self.overflow_jobs,
            "running_jobs": self.running_jobs,
            "units": round(self.units, 3),
            "prop_units": round(self.prop_units, 3),
            "old_units": round(self.old_units, 3),
            "old_prop_units": round(self.old_prop_units, 3),
            "autoclusters": self.autoclusters,
        }


@dataclass(frozen=True)
class EntryInfo:
    """One entry as matching sees it: a key unique across factories, the slot-like
    attributes its pilots will publish, and the size of one pilot."""

    key: str
    attrs: Mapping[str, Any]
    size: Size


@dataclass(frozen=True)
class GroupRules:
    """The group's expressions (validated text) and its age thresholds."""

    match_expr: str = "true"
    start_expr: str | None = None
    job_constraint: str = "true"
    old_idle_seconds: float = 600.0
    overflow_after: float | None = None
    overflow_match: str = "true"
    overflow_start: str = "true"


# ------------------------------------------------------------------ demand


def job_request(autocluster: Mapping[str, Any]) -> JobRequest:
    req = autocluster.get("request") or {}
    return JobRequest(
        cpus=max(1, int(req.get("cpus") or 1)),
        memory=int(req.get("memory") or 0),
        gpus=int(req.get("gpus") or 0),
        disk=int(req.get("disk") or 0),
    )


def _idle_for_group(
    job: Any, autocluster: Mapping[str, Any], constraint: Any | None
) -> tuple[int, int]:
    """(idle, running) jobs of this autocluster that the group serves.

    The constraint sees the autocluster's significant attributes plus `Owner`,
    set in turn to each owner of idle jobs.
    """
    idle, running = int(autocluster.get("idle") or 0), int(autocluster.get("running") or 0)
    if constraint is None:
        return idle, running
    owners: Mapping[str, int] = autocluster.get("owners") or {}
    if not owners:
        ok = classads.is_true(constraint.eval(scope=job))
        return (idle, running) if ok else (0, 0)
    served = 0
    had_owner = "Owner" in job
    for owner, count in owners.items():
        job["Owner"] = owner
        if classads.is_true(constraint.eval(scope=job)):
            served += int(count)
    if not had_owner:
        del job["Owner"]  # later matching must not see one owner's name
    return min(idle, served), running if served else 0


def match_demand(
    autoclusters: Sequence[Mapping[str, Any]],
    entries: Sequence[EntryInfo],
    rules: GroupRules,
    now: float,
    matcher: Matcher | None = None,
) -> dict[str, EntryDemand]:
    """Idle demand per entry key, in jobs and in pilots of each entry's size.

    A job counts at an entry when its Requirements accept the entry, the
    entry's pilots (their Start, the group's `start_expr`) accept the job, the
    group's match expression holds, and the job fits one pilot. A job idle
    longer than the overflow threshold also counts where the overflow match
    and start expressions allow it.
    """
    matcher = matcher or Matcher(entries)
    group_conj = conjuncts(rules.match_expr, True, "match_expr") + conjuncts(
        rules.start_expr, False, "start_expr"
    )
    overflow_conj = conjuncts(rules.overflow_match, True, "overflow.match_expr") + conjuncts(
        rules.overflow_start, False, "overflow.start_expr"
    )
    constraint = (
        None
        if rules.job_constraint.strip().lower() == "true"
        else classads.parse_expr(rules.job_constraint)
    )
    req_cache: dict[str, list[Conjunct]] = {}
    size_list = sorted({e.size for e in matcher.entries}, key=repr)
    members_of = [
        frozenset(i for i, e in enumerate(matcher.entries) if e.size == size) for size in size_list
    ]
    # Contributions are summed per distinct set of matching entries (a bucket: the
    # column sums, the rows it got, the job shapes with idle jobs) and spread to the
    # members once at the end: many autoclusters share a set, so the per (autocluster,
    # entry) work disappears.
    buckets: dict[frozenset[int], tuple[list[float], set[JobRequest]]] = {}
    overflow_jobs = [0] * len(matcher.entries)
    for ac in autoclusters:
        job = classads.parse_ad(ac["ad"])
        idle, running = _idle_for_group(job, ac, constraint)
        if idle <= 0 and running <= 0:
            continue
        request = job_request(ac)
        per_size = [jobs_per_pilot(request, size) for size in size_list]
        fit = frozenset().union(
            *(m for m, per in zip(members_of, per_size, strict=True) if per > 0)
        )
        req_text = str(job.lookup("Requirements")) if "Requirements" in job else "true"
        req_conj = req_cache.get(req_text)
        if req_conj is None:
            req_conj = req_cache[req_text] = conjuncts(req_text, True)
        base = matcher.matching(job, req_conj, fit)
        normal = matcher.matching(job, group_conj, base)
        overflow: frozenset[int] = frozenset()
        oldest = ac.get("oldest_idle")
        age = now - float(oldest) if oldest is not None else 0.0
        if rules.overflow_after is not None and idle > 0 and age >= rules.overflow_after:
            overflow = matcher.matching(job, overflow_conj, base - normal)
            for i in overflow:
                overflow_jobs[i] += idle
        matched = normal | overflow
        if not matched:
            continue
        k = len(matched)
        old = idle if age >= rules.old_idle_seconds else 0
        for members, per in zip(members_of, per_size, strict=True):
            here = matched & members
            if not here:
                continue
            bucket = buckets.get(here)
            if bucket is None:
                bucket = buckets[here] = ([0.0] * (len(_COLUMNS) + 1), set())
            sums = bucket[0]
            for j, value in enumerate(
                (
                    idle,
                    running,
                    idle / k,
                    idle / per,
                    idle / k / per,
                    old,
                    old / per,
                    old / k / per,
                    idle if k == 1 else 0,
                    1,
                )
            ):
                sums[j] += value
            if idle > 0:
                bucket[1].add(request)
    totals = [[0.0] * (len(_COLUMNS) + 1) for _ in matcher.entries]
    shapes: list[set[JobRequest]] = [set() for _ in matcher.entries]
    for here, (sums, requests) in buckets.items():
        for i in here:
            mine = totals[i]
            for j, value in enumerate(sums):
                mine[j] += value
            shapes[i] |= requests
    out = {}
    for i, entry in enumerate(matcher.entries):
        t = dict(zip((*_COLUMNS, "rows"), totals[i], strict=True))
        out[entry.key] = EntryDemand(
            idle_jobs=int(t["idle"]),
            prop_jobs=t["prop"],
            unique_jobs=int(t["unique"]),
            old_jobs=int(t["old"]),
            overflow_jobs=overflow_jobs[i],
            running_jobs=int(t["running"]),
            units=t["units"],
            prop_units=t["prop_units"],
            old_units=t["old_units"],
            old_prop_units=t["old_prop_units"],
            autoclusters=int(t["rows"]),
            requests=shapes[i],
        )
    return out


_COLUMNS = (
    "idle",
    "running",
    "prop",
    "units",
    "prop_units",
    "old",
    "old_units",
    "old_prop_units",
    "unique",
)


def ceil_units(value: float) -> int:
    """Pilots from fractional units, tolerant of float noise (2.0000000001 is 2)."""
    return math.ceil(value - 1e-9) if value > 0 else 0
