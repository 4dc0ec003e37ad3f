"""Which idle jobs can run where: autoclusters against entries, counted in pilots.

Pure functions over the pool's autoclusters and the factories' entry ads; the
only library used is the real ClassAd one. Matching a million jobs against a
thousand entries must take seconds, so the work is shaped to scale with
*distinct* questions, not with jobs x entries:

- jobs come as autoclusters (the pool already grouped them);
- every expression (the job's Requirements, the group's match and start
  expressions) is split into its top-level `&&` conjuncts, and each conjunct
  is evaluated once per distinct pair (values of the job attributes it reads,
  values of the entry attributes it reads). A site test such as
  `stringListMember(TARGET.GLIDEIN_Site, DESIRED_Sites)` is thus evaluated once
  per site, not once per entry, and `TARGET.Cpus >= RequestCpus` once per
  distinct core count;
- the entries that pass a conjunct are kept as a set, and sets intersect in C;
- the common site test `stringListMember(TARGET.GLIDEIN_Site, DESIRED_Sites)`
  is decided without the library where its answer is certain (`listmember.py`):
  one set lookup per listed site instead of one evaluation per site;
- contributions are summed per distinct set of matching entries, then spread
  to its members, so the bookkeeping grows with distinct answers too.

A group expression (match, start, overflow) that evaluates to `Error` is
counted in `Matcher.errors`: the service does not trust such a group's demand.

A conjunct result counts only when it is the boolean true, so splitting never
turns a non-match into a match (ClassAd `A && B` is true only if both are).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from classad2 import Value

from glidewms import classads
from glidewms.frontend import listmember


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
        return {"idle_jobs": self.idle_jobs, "prop_jobs": round(self.prop_jobs, 3),
                "unique_jobs": self.unique_jobs, "old_jobs": self.old_jobs,
                "overflow_jobs": self.overflow_jobs, "running_jobs": self.running_jobs,
                "units": round(self.units, 3), "prop_units": round(self.prop_units, 3),
                "old_units": round(self.old_units, 3),
                "old_prop_units": round(self.old_prop_units, 3),
                "autoclusters": self.autoclusters}


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


# ------------------------------------------------------------------ conjuncts

def split_conjuncts(text: str) -> list[str]:
    """Top-level `&&` operands of an expression, outer parentheses removed."""
    text = text.strip()
    while _wrapped(text):
        text = text[1:-1].strip()
    parts, depth, start, i, quote = [], 0, 0, 0, ""
    while i < len(text):
        ch = text[i]
        if quote:
            if ch == "\\":
                i += 1
            elif ch == quote:
                quote = ""
        elif ch in "\"'":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif depth == 0 and text.startswith("&&", i):
            parts.append(text[start:i])
            start = i + 2
            i += 1
        i += 1
    parts.append(text[start:])
    if len(parts) == 1:
        return [text]
    return [c for p in parts for c in split_conjuncts(p)]


def _wrapped(text: str) -> bool:
    """True when the first '(' closes at the very end: `(a && b)` but not `(a) && (b)`."""
    if not (text.startswith("(") and text.endswith(")")):
        return False
    depth, quote, i = 0, "", 0
    while i < len(text):
        ch = text[i]
        if quote:
            if ch == "\\":
                i += 1
            elif ch == quote:
                quote = ""
        elif ch in "\"'":
            quote = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0 and i < len(text) - 1:
                return False
        i += 1
    return True


@dataclass(frozen=True)
class _Conjunct:
    text: str
    tree: Any
    job_first: bool  # True: MY = job, TARGET = entry; False: MY = entry (a Start)
    source: str = "requirements"  # or the group key it comes from (errors are counted)
    fast: listmember.ListMember | None = None


def _conjuncts(text: str | None, job_first: bool, source: str = "requirements",
               ) -> list[_Conjunct]:
    if text is None or text.strip().lower() == "true":
        return []
    return [_Conjunct(c, classads.parse_expr(c), job_first, source,
                      listmember.recognise(c) if job_first else None)
            for c in split_conjuncts(text)]


_EMPTY = classads.ClassAd()


class Matcher:
    """Entries passing each conjunct, computed once per distinct question.

    One Matcher serves one group for one cycle (it caches by autocluster
    values, which do not change within a cycle). `memo`, kept by the caller
    from cycle to cycle, remembers each library answer by (conjunct, job
    values, entry values), so a steady queue costs dictionary lookups, not
    evaluations; conjuncts that read the clock or random() are never kept.
    """

    def __init__(self, entries: Sequence[EntryInfo], fast: bool = True,
                 memo: dict[tuple[Any, ...], int] | None = None) -> None:
        self.entries = list(entries)
        self.fast = fast  # False: every conjunct through the library (tests compare)
        self.memo = memo  # answer: 1 true, 0 not true, -1 Error
        self.ads = [classads.ad_from_dict(dict(e.attrs)) for e in self.entries]
        self.values = [{k.lower(): _hashable(v) for k, v in e.attrs.items()}
                       for e in self.entries]
        self.all = frozenset(range(len(self.entries)))
        self._partitions: dict[tuple[str, ...],
                               list[tuple[frozenset[int], int, tuple[Any, ...]]]] = {}
        self._passing: dict[tuple[Any, ...], frozenset[int]] = {}
        self._by_value: dict[tuple[str, bool], dict[str, frozenset[int]]] = {}
        self.evaluations = 0
        self.errors: dict[str, int] = {}  # "source: conjunct" -> evaluations giving Error

    def _partition(self, names: tuple[str, ...],
                   ) -> list[tuple[frozenset[int], int, tuple[Any, ...]]]:
        """Entries grouped by their values of `names`: (members, a representative,
        the values)."""
        found = self._partitions.get(names)
        if found is None:
            groups: dict[tuple[Any, ...], list[int]] = {}
            for i, values in enumerate(self.values):
                groups.setdefault(tuple(values.get(n) for n in names), []).append(i)
            found = [(frozenset(m), m[0], v) for v, m in groups.items()]
            self._partitions[names] = found
        return found

    def _list_member(self, job: Any, test: listmember.ListMember) -> frozenset[int] | None:
        """Entries passing a recognised site test, or None when the library must say."""
        items = listmember.job_list(job, test)
        if items is None:
            return None
        index = self._by_value.get((test.entry_attr, test.ignore_case))
        if index is None:
            found: dict[str, set[int]] = {}
            for i, values in enumerate(self.values):
                key = listmember.entry_key(values.get(test.entry_attr), test)
                if key is not None:
                    found.setdefault(key, set()).add(i)
            index = {k: frozenset(v) for k, v in found.items()}
            self._by_value[(test.entry_attr, test.ignore_case)] = index
        hits = [index[item] for item in items if item in index]
        return frozenset().union(*hits) if hits else frozenset()

    def passing(self, job: Any, conjunct: _Conjunct) -> frozenset[int]:
        """The entries for which `conjunct` is true with this job."""
        if conjunct.fast is not None and self.fast:
            found = self._list_member(job, conjunct.fast)
            if found is not None:
                return found
        if conjunct.job_first:
            refs = job.externalRefs(conjunct.tree)
            job_names = job.internalRefs(conjunct.tree)
        else:
            refs = [r for r in _EMPTY.externalRefs(conjunct.tree)
                    if not r.lower().startswith("target.")]
            job_names = [r[7:] for r in _EMPTY.externalRefs(conjunct.tree)
                         if r.lower().startswith("target.")]
            job_names = sorted({n for name in job_names if name in job
                                for n in [name, *job.internalRefs(job.lookup(name))]})
        entry_names = tuple(sorted({_strip_scope(r).lower() for r in refs}))
        job_key = tuple((n, str(job.lookup(n))) for n in job_names if n in job)
        key = (conjunct.text, conjunct.job_first, job_key)
        found = self._passing.get(key)
        if found is not None:
            return found
        members: set[int] = set()
        memo = self.memo if self.memo is not None and _timeless(conjunct.text) else None
        for group, rep, values in self._partition(entry_names):
            answer = None if memo is None else memo.get((*key, entry_names, values))
            if answer is None:
                self.evaluations += 1
                if conjunct.job_first:
                    value = conjunct.tree.eval(scope=job, target=self.ads[rep])
                else:
                    value = conjunct.tree.eval(scope=self.ads[rep], target=job)
                answer = 1 if value is True else (-1 if value is Value.Error else 0)
                if memo is not None:
                    memo[(*key, entry_names, values)] = answer
            if answer == 1:
                members |= group
            elif answer == -1 and conjunct.source != "requirements":
                label = f"{conjunct.source}: {conjunct.text.strip()}"
                self.errors[label] = self.errors.get(label, 0) + 1
        found = frozenset(members)
        self._passing[key] = found
        return found

    def matching(self, job: Any, conjuncts: Iterable[_Conjunct],
                 among: frozenset[int] | None = None) -> frozenset[int]:
        candidates = self.all if among is None else among
        for conjunct in conjuncts:
            if not candidates:
                break
            candidates = candidates & self.passing(job, conjunct)
        return candidates


_CLOCK = re.compile(r"\b(time|random|currenttime)\b", re.IGNORECASE)


def _timeless(text: str) -> bool:
    """May this conjunct's answer be kept across cycles? Not if it reads the clock."""
    return _CLOCK.search(text) is None


def _strip_scope(name: str) -> str:
    low = name.lower()
    for prefix in ("target.", "my."):
        if low.startswith(prefix):
            return name[len(prefix):]
    return name


def _hashable(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    return value


# ------------------------------------------------------------------ demand

def job_request(autocluster: Mapping[str, Any]) -> JobRequest:
    req = autocluster.get("request") or {}
    return JobRequest(cpus=max(1, int(req.get("cpus") or 1)), memory=int(req.get("memory") or 0),
                      gpus=int(req.get("gpus") or 0), disk=int(req.get("disk") or 0))


def _idle_for_group(job: Any, autocluster: Mapping[str, Any],
                    constraint: Any | None) -> tuple[int, int]:
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


def match_demand(autoclusters: Sequence[Mapping[str, Any]], entries: Sequence[EntryInfo],
                 rules: GroupRules, now: float, matcher: Matcher | None = None,
                 ) -> dict[str, EntryDemand]:
    """Idle demand per entry key, in jobs and in pilots of each entry's size.

    A job counts at an entry when its Requirements accept the entry, the
    entry's pilots (their Start, the group's `start_expr`) accept the job, the
    group's match expression holds, and the job fits one pilot. A job idle
    longer than the overflow threshold also counts where the overflow match
    and start expressions allow it.
    """
    matcher = matcher or Matcher(entries)
    group_conj = (_conjuncts(rules.match_expr, True, "match_expr")
                  + _conjuncts(rules.start_expr, False, "start_expr"))
    overflow_conj = (_conjuncts(rules.overflow_match, True, "overflow.match_expr")
                     + _conjuncts(rules.overflow_start, False, "overflow.start_expr"))
    constraint = (None if rules.job_constraint.strip().lower() == "true"
                  else classads.parse_expr(rules.job_constraint))
    req_cache: dict[str, list[_Conjunct]] = {}
    size_list = sorted({e.size for e in matcher.entries}, key=repr)
    members_of = [frozenset(i for i, e in enumerate(matcher.entries) if e.size == size)
                  for size in size_list]
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
        fit = frozenset().union(*(m for m, per in zip(members_of, per_size, strict=True)
                                  if per > 0))
        req_text = str(job.lookup("Requirements")) if "Requirements" in job else "true"
        req_conj = req_cache.get(req_text)
        if req_conj is None:
            req_conj = req_cache[req_text] = _conjuncts(req_text, True)
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
            for j, value in enumerate((idle, running, idle / k, idle / per, idle / k / per,
                                       old, old / per, old / k / per,
                                       idle if k == 1 else 0, 1)):
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
            idle_jobs=int(t["idle"]), prop_jobs=t["prop"],
            unique_jobs=int(t["unique"]), old_jobs=int(t["old"]),
            overflow_jobs=overflow_jobs[i], running_jobs=int(t["running"]),
            units=t["units"], prop_units=t["prop_units"], old_units=t["old_units"],
            old_prop_units=t["old_prop_units"], autoclusters=int(t["rows"]),
            requests=shapes[i])
    return out


_COLUMNS = ("idle", "running", "prop", "units", "prop_units", "old", "old_units",
            "old_prop_units", "unique")


def ceil_units(value: float) -> int:
    """Pilots from fractional units, tolerant of float noise (2.0000000001 is 2)."""
    return math.ceil(value - 1e-9) if value > 0 else 0
