"""Validation: memory this pilot offers (GLIDEIN_Memory: MB, auto or node) and a minimum.

``auto`` takes the smallest of the batch allocation (Slurm), the cgroup limit
and the node's memory; fewer than ``GLIDEIN_Min_Memory_MB`` is a WN_Resource failure.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import checks
from gconfig import Failure, Script, main


def node_memory_mb() -> int:
    for line in (checks.read_text("/proc/meminfo") or "").splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1024 * 1024)


def check(script: Script) -> str:
    cpus = int(script.get("GLIDEIN_Cpus", "1")) if script.get("GLIDEIN_Cpus").isdigit() else 1
    cgroup = checks.own_cgroup_file("memory.max") or checks.own_cgroup_file(
        "memory/memory.limit_in_bytes"
    )
    try:
        memory, source = checks.decide_memory(
            script.get("GLIDEIN_Memory", "auto"),
            checks.batch_memory_mb(os.environ, cpus),
            checks.cgroup_memory_mb(cgroup),
            node_memory_mb(),
        )
    except ValueError as exc:
        raise Failure("Config", str(exc)) from None
    minimum = int(script.get("GLIDEIN_Min_Memory_MB", "0") or 0)
    if memory < minimum:
        raise Failure(
            "WN_Resource", f"{memory} MB of memory ({source}), GLIDEIN_Min_Memory_MB is {minimum}"
        )
    script.add("GLIDEIN_Memory", memory)
    return f"{memory} MB from {source}"


if __name__ == "__main__":
    main(check)
