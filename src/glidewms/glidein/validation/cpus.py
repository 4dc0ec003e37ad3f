"""Validation: how many CPUs this pilot offers (GLIDEIN_Cpus: N, auto, node or slot).

Writes the resolved number back as ``GLIDEIN_Cpus`` (the agent reads it) and
``GLIDEIN_Cpus_Source`` (batch, cgroup, affinity, node or configured).
"""

from __future__ import annotations

import os
import socket
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import checks
from gconfig import Failure, Script, main


def check(script: Script) -> str:
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = os.cpu_count() or 1
    batch = checks.batch_cpus(os.environ, socket.gethostname())
    cgroup = checks.cgroup_cpus(
        checks.own_cgroup_file("cpu.max"),
        checks.own_cgroup_file("cpu/cpu.cfs_quota_us"),
        checks.own_cgroup_file("cpu/cpu.cfs_period_us"),
    )
    try:
        cpus, source = checks.decide_cpus(
            script.get("GLIDEIN_Cpus", "auto"),
            batch[0] if batch else None,
            cgroup,
            affinity,
            os.cpu_count() or affinity,
        )
    except ValueError as exc:
        raise Failure("Config", str(exc)) from None
    script.add("GLIDEIN_Cpus", cpus)
    script.add(
        "GLIDEIN_Cpus_Source", source + (f" ({batch[1]})" if source == "batch" and batch else "")
    )
    return f"{cpus} cpus from {source}"


if __name__ == "__main__":
    main(check)
