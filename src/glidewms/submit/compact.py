"""A cluster in the compact form the pool takes for late materialisation
(pool/materialize.py): its first job whole (the "proto") and, for every
proc, only what differs from it besides ProcId, in chunks of bounded size.

The jobs of a cluster mostly differ in a few `$(Process)`- or item-dependent
strings (arguments, output names), so a million of them travel as a few
tens of megabytes, a chunk at a time, and neither side ever holds them all.
Pure: the caller uploads the files and posts the chunks.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from glidewms.submit.model import JobDescription

CHUNK_BYTES = 2 * 1024 * 1024  # well within the pool's default body size (4 MiB)
CHUNK_PROCS = 10_000
LATE_ATTRS = ("JobMaterializeLimit", "JobMaterializeMaxIdle")

Wire = dict[str, Any]  # {"attrs", "sandbox", "args", "env"}: one job as the pool takes it


def wire_job(job: JobDescription, sandbox: list[dict[str, Any]]) -> Wire:
    """A job as the compact form carries it: its attributes without ProcId."""
    attrs = {k: v for k, v in job.attrs.items() if k != "ProcId"}
    return {"attrs": attrs, "sandbox": sandbox, "args": job.args, "env": job.env}


def delta(proto: Wire, job: Wire) -> dict[str, Any]:
    """What `job` has that `proto` has not: changed or new attributes (`ad`),
    attributes it lacks (`unset`), and its sandbox, arguments or environment
    when they differ. Empty: the job is the proto but for its ProcId."""
    out: dict[str, Any] = {}
    base = proto["attrs"]
    changed = {k: v for k, v in job["attrs"].items() if base.get(k) != v}
    if changed:
        out["ad"] = changed
    if len(job["attrs"]) - len(changed) != len(base):  # some proto attribute is missing
        missing = [k for k in base if k not in job["attrs"]]
        if missing:
            out["unset"] = missing
    for key in ("sandbox", "args", "env"):
        if job[key] != proto[key]:
            out[key] = job[key]
    return out


def materialise(proto: Wire, d: dict[str, Any]) -> Wire:
    """The job a delta stands for (the pool's materialize.proc_job, for tests)."""
    attrs = dict(proto["attrs"])
    for name in d.get("unset", ()):
        attrs.pop(name, None)
    attrs.update(d.get("ad", {}))
    return {
        "attrs": attrs,
        "sandbox": d.get("sandbox", proto["sandbox"]),
        "args": d.get("args", proto["args"]),
        "env": d.get("env", proto["env"]),
    }


def limits_of(job: JobDescription) -> tuple[int | None, int | None]:
    """(max_materialize, max_idle) of the cluster, from its first job (None: not set)."""
    values = [job.attrs.get(name) for name in LATE_ATTRS]
    return (
        int(values[0]) if values[0] is not None else None,
        int(values[1]) if values[1] is not None else None,
    )


@dataclass
class Chunker:
    """Deltas gathered into chunks of at most `max_procs` procs and about
    `max_bytes` of JSON (one delta larger than that travels alone)."""

    max_bytes: int = CHUNK_BYTES
    max_procs: int = CHUNK_PROCS
    first: int = 0
    procs: list[dict[str, Any]] = field(default_factory=list)
    size: int = 0

    def add(self, d: dict[str, Any]) -> Iterator[tuple[int, list[dict[str, Any]]]]:
        """Add a delta; yields (first ProcId, deltas) of a chunk that is full."""
        size = len(json.dumps(d, separators=(",", ":"))) + 1
        if self.procs and (self.size + size > self.max_bytes or len(self.procs) >= self.max_procs):
            yield from self.flush()
        self.procs.append(d)
        self.size += size

    def flush(self) -> Iterator[tuple[int, list[dict[str, Any]]]]:
        """The chunk gathered so far, if any."""
        if self.procs:
            chunk, first = self.procs, self.first
            self.first += len(chunk)
            self.procs, self.size = [], 0
            yield first, chunk
