"""ClassAd expressions split into conjuncts, each answered once per distinct question.

Every expression (a job's Requirements, a group's match and start
expressions) is split into its top-level `&&` conjuncts (`split_conjuncts`),
and each conjunct is evaluated once per distinct pair (values of the job
attributes it reads, values of the entry attributes it reads). A site test
such as `stringListMember(TARGET.GLIDEIN_Site, DESIRED_Sites)` is thus
evaluated once per site, not once per entry, and `TARGET.Cpus >= RequestCpus`
once per distinct core count. The common site test is decided without the
library where its answer is certain (`listmember.py`). The entries that pass a
conjunct are kept as a set, and sets intersect in C (`Matcher`).

A conjunct result counts only when it is the boolean true, so splitting never
turns a non-match into a match (ClassAd `A && B` is true only if both are).

An entry does not know everything its pilots will publish: the node's name,
its OS version, its container runtime, its GPUs' properties are detected on
the node (`PILOT_DETECTED`). A conjunct that reads one of those which the
entry does not declare cannot be answered here, so it passes: the pool's
matchmaking, against the real slot, decides (a job asking `Machine != "x"`
or a container runtime gets pilots; an entry that declares the attribute,
say `HasSIF = false`, is answered by its value and not asked for such jobs).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from classad2 import Value

from glidewms import classads
from glidewms.frontend import listmember

if TYPE_CHECKING:
    from glidewms.frontend.matching import EntryInfo


def _outside_strings(text: str) -> Iterator[tuple[int, str, int]]:
    """(index, character, bracket depth before it) of every character of `text` that
    is not inside a string literal: the one place that knows ClassAd quoting."""
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
        else:
            yield i, ch, depth
            if ch in "([{":
                depth += 1
            elif ch in ")]}":
                depth -= 1
        i += 1


def split_conjuncts(text: str) -> list[str]:
    """Top-level `&&` operands of an expression, outer parentheses removed."""
    text = text.strip()
    while _wrapped(text):
        text = text[1:-1].strip()
    parts, start = [], 0
    for i, _, depth in _outside_strings(text):
        if depth == 0 and i >= start and text.startswith("&&", i):
            parts.append(text[start:i])
            start = i + 2
    parts.append(text[start:])
    if len(parts) == 1:
        return [text]
    return [c for p in parts for c in split_conjuncts(p)]


def _wrapped(text: str) -> bool:
    """True when the first '(' closes at the very end: `(a && b)` but not `(a) && (b)`."""
    if not (text.startswith("(") and text.endswith(")")):
        return False
    last = len(text) - 1
    return not any(ch == ")" and depth == 1 and i < last for i, ch, depth in _outside_strings(text))


@dataclass(frozen=True)
class Conjunct:
    text: str
    tree: Any
    job_first: bool  # True: MY = job, TARGET = entry; False: MY = entry (a Start)
    source: str = "requirements"  # or the group key it comes from (errors are counted)
    fast: listmember.ListMember | None = None


def conjuncts(
    text: str | None,
    job_first: bool,
    source: str = "requirements",
) -> list[Conjunct]:
    if text is None or text.strip().lower() == "true":
        return []
    return [
        Conjunct(
            c,
            classads.parse_expr(c),
            job_first,
            source,
            listmember.recognise(c) if job_first else None,
        )
        for c in split_conjuncts(text)
    ]


_EMPTY = classads.ClassAd()

# Slot attributes the pilot detects on its node (glidein/agent/resources.py and
# the standard validation scripts), lower case: unanswerable where an entry does
# not declare them. Not HasDocker: no pilot has a docker universe runtime.
PILOT_DETECTED = frozenset(
    name.lower()
    for name in (
        "Machine",
        "FileSystemDomain",
        "UidDomain",
        "OpSysName",
        "OpSysAndVer",
        "OpSysMajorVer",
        "GLIDEIN_OS",
        "GLIDEIN_Kernel",
        "HasContainer",
        "HAS_CONTAINER",
        "HasSingularity",
        "HAS_SINGULARITY",
        "HasSIF",
        "HasSandboxImage",
        "HasDockerURL",
        "GLIDEIN_Container_Runtime",
        "AvailableGPUs",
        "CUDAMaxSupportedVersion",
        "GPUs_DeviceName",
        "GPUs_Capability",
        "GPUs_GlobalMemoryMb",
        "HasFileTransferPluginMethods",
        "GLIDEIN_ToDie",
        "GLIDEIN_ToRetire",
    )
)


class Matcher:
    """Entries passing each conjunct, computed once per distinct question.

    One Matcher serves one group for one cycle (it caches by autocluster
    values, which do not change within a cycle). `memo`, kept by the caller
    from cycle to cycle, remembers each library answer by (conjunct, job
    values, entry values), so a steady queue costs dictionary lookups, not
    evaluations; conjuncts that read the clock or random() are never kept.
    """

    def __init__(
        self,
        entries: Sequence[EntryInfo],
        fast: bool = True,
        memo: dict[tuple[Any, ...], int] | None = None,
    ) -> None:
        self.entries = list(entries)
        self.fast = fast  # False: every conjunct through the library (tests compare)
        self.memo = memo  # answer: 1 true, 0 not true, -1 Error
        self.ads = [classads.ad_from_dict(dict(e.attrs)) for e in self.entries]
        self.values = [{k.lower(): _hashable(v) for k, v in e.attrs.items()} for e in self.entries]
        self.all = frozenset(range(len(self.entries)))
        self._partitions: dict[
            tuple[str, ...], list[tuple[frozenset[int], int, tuple[Any, ...]]]
        ] = {}
        self._passing: dict[tuple[Any, ...], frozenset[int]] = {}
        self._by_value: dict[tuple[str, bool], dict[str, frozenset[int]]] = {}
        self.evaluations = 0
        self.errors: dict[str, int] = {}  # "source: conjunct" -> evaluations giving Error

    def _partition(
        self,
        names: tuple[str, ...],
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

    def passing(self, job: Any, conjunct: Conjunct) -> frozenset[int]:
        """The entries for which `conjunct` is true with this job."""
        if conjunct.fast is not None and self.fast:
            found = self._list_member(job, conjunct.fast)
            if found is not None:
                return found
        if conjunct.job_first:
            refs = job.externalRefs(conjunct.tree)
            job_names = job.internalRefs(conjunct.tree)
        else:
            refs = [
                r for r in _EMPTY.externalRefs(conjunct.tree) if not r.lower().startswith("target.")
            ]
            job_names = [
                r[7:] for r in _EMPTY.externalRefs(conjunct.tree) if r.lower().startswith("target.")
            ]
            job_names = sorted(
                {
                    n
                    for name in job_names
                    if name in job
                    for n in [name, *job.internalRefs(job.lookup(name))]
                }
            )
        entry_names = tuple(sorted({_strip_scope(r).lower() for r in refs}))
        detected = [i for i, n in enumerate(entry_names) if n in PILOT_DETECTED]
        job_key = tuple((n, str(job.lookup(n))) for n in job_names if n in job)
        key = (conjunct.text, conjunct.job_first, job_key)
        found = self._passing.get(key)
        if found is not None:
            return found
        members: set[int] = set()
        memo = self.memo if self.memo is not None and _timeless(conjunct.text) else None
        for group, rep, values in self._partition(entry_names):
            if any(values[i] is None for i in detected):
                members |= group  # the pilots will say: the pool's matchmaking decides
                continue
            memo_key = (*key, entry_names, values)
            answer = None if memo is None else memo.get(memo_key)
            if answer is None:
                self.evaluations += 1
                if conjunct.job_first:
                    value = conjunct.tree.eval(scope=job, target=self.ads[rep])
                else:
                    value = conjunct.tree.eval(scope=self.ads[rep], target=job)
                answer = 1 if value is True else (-1 if value is Value.Error else 0)
                if memo is not None:
                    memo[memo_key] = answer
            if answer == 1:
                members |= group
            elif answer == -1 and conjunct.source != "requirements":
                label = f"{conjunct.source}: {conjunct.text.strip()}"
                self.errors[label] = self.errors.get(label, 0) + 1
        found = frozenset(members)
        self._passing[key] = found
        return found

    def matching(
        self, job: Any, conjuncts: Iterable[Conjunct], among: frozenset[int] | None = None
    ) -> frozenset[int]:
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
            return name[len(prefix) :]
    return name


def _hashable(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    return value
