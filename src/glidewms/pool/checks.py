"""What the pool refuses from outside before it stores or matches anything.

Every ad, expression and number a user, pilot or frontend sends is held to
bounds here or in `glidewms.classads` (which checks ClassAd text against
`AdLimits` before the library sees it): a stored ad that could crash the
ClassAd library, or a number a database column cannot hold, would fail
again on every restart. Refusals are `Refused` (a ValueError naming the
attribute or field), which the routes answer with 422.

The attributes the pool owns (`POOL_OWNED`) are refused at submit and at
edit: a job that carried its own `ExitCode`, `HoldReason` or `RemoteUser`
would lie to every expression that reads them. `ProcId` alone is accepted
at submit, and replaced: clients number the jobs of a cluster, the pool
renumbers them.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from glidewms import classads
from glidewms.classad_limits import DEFAULT_LIMITS, AdLimits

INT32 = 2**31  # the database's INTEGER columns (PostgreSQL int4)
AMOUNT = 2**53  # the largest resource amount (exact in JSON and doubles)

# Set or derived by the pool over a job's life (HTCondor's schedd owns these too).
POOL_OWNED = (
    "Owner",
    "User",
    "ClusterId",
    "ProcId",
    "GlobalJobId",
    "QDate",
    "JobStatus",
    "LastJobStatus",
    "EnteredCurrentStatus",
    "NumJobStarts",
    "NumRestarts",
    "NumSiteFailures",
    "NumJobCompletions",
    "NumCkpts",
    "ExitCode",
    "ExitBySignal",
    "ExitSignal",
    "ExitStatus",
    "HoldReason",
    "HoldReasonCode",
    "HoldReasonSubCode",
    "RemoteUser",
    "RemoteHost",
    "RemotePilot",
    "JobStartDate",
    "JobCurrentStartDate",
    "CompletionDate",
    "RemoteWallClockTime",
    "CurrentTime",
    "ServerTime",
)
POOL_OWNED_LOWER = frozenset(name.lower() for name in POOL_OWNED)
RENUMBERED = "ProcId"  # accepted at submit, and replaced

# The numbers the pool reads from a job's ad: (lowest, highest, default).
JOB_NUMBERS: dict[str, tuple[int, int, int]] = {
    "RequestCpus": (0, INT32 - 1, 1),
    "RequestMemory": (0, INT32 - 1, 0),  # MB
    "RequestDisk": (0, AMOUNT, 0),  # KiB
    "RequestGPUs": (0, INT32 - 1, 0),
    "JobPrio": (-INT32, INT32 - 1, 0),
    "MaxRetries": (0, INT32 - 1, 0),
}
# A slot's resources: what a pilot offers, and what a turn says is free.
SLOT_RESOURCES = ("Cpus", "Memory", "Disk", "GPUs")
SANDBOX_NAME = re.compile(r"[^/\x00-\x1f\x7f]{1,255}")


class Refused(ValueError):
    """Input the pool does not take; `attribute` names the attribute or field."""

    def __init__(self, attribute: str, reason: str) -> None:
        self.attribute = attribute
        super().__init__(f"attribute {attribute!r}: {reason}")


@dataclass(frozen=True)
class StoreLimits:
    """What the store holds outside input to (PoolConfig has each as a key)."""

    ads: AdLimits = field(default_factory=lambda: DEFAULT_LIMITS)
    max_events_per_job: int = 1000
    max_outputs_per_job: int = 1000
    batch_size: int = 1000  # jobs per transaction of a submit or a bulk action


def check_job_ad(ad: Any) -> None:
    """A submitted (or edited) job's ad: no attribute the pool owns, and the
    numbers the pool reads within their range where they are numbers."""
    for name in ad:
        if name.lower() in POOL_OWNED_LOWER and name != RENUMBERED:
            raise Refused(name, "is set by the pool; leave it out")
    for name in JOB_NUMBERS:
        check_job_number(ad, name)


def check_job_number(ad: Any, name: str) -> None:
    """`name`'s value, if it evaluates to a number, is finite and in range
    (an expression that needs a slot to evaluate is left to matching)."""
    low, high, _ = JOB_NUMBERS[name]
    value = classads.number(classads.eval_attr(ad, name))
    if value is None:
        return
    if not math.isfinite(value):
        raise Refused(name, f"{value} is not a finite number")
    if not low <= value <= high:
        raise Refused(name, f"{value} is outside [{low}, {high}]")


def job_number(ad: Any, name: str) -> int:
    """The value the pool uses for one of JOB_NUMBERS: its default when not a
    finite number, clamped to its range (ads stored before these checks)."""
    low, high, default = JOB_NUMBERS[name]
    value = classads.number(classads.eval_attr(ad, name))
    if value is None or not math.isfinite(value):
        return default
    return min(high, max(low, int(value)))


def job_requests(ad: Any) -> dict[str, int]:
    """Resources one job asks for; at least one core, never a negative amount
    (a pilot subtracts these from what it has free)."""
    return {
        "cpus": max(1, job_number(ad, "RequestCpus")),
        "memory": job_number(ad, "RequestMemory"),
        "disk": job_number(ad, "RequestDisk"),
        "gpus": job_number(ad, "RequestGPUs"),
    }


def check_slot(slot: Mapping[str, Any], limits: AdLimits) -> None:
    """A pilot's slot ad (JSON) before it is stored: within the ad bounds
    (`classads.ad_from_dict`), its resources amounts in range, and its start
    expression within the expression bounds."""
    try:
        classads.ad_from_dict(slot, limits)
    except classads.ClassAdTooLarge as exc:
        raise Refused(exc.attribute or "slot", exc.reason) from None
    except classads.ClassAdError as exc:
        raise Refused("slot", str(exc)) from None
    size = len(json.dumps(slot).encode())
    if size > limits.max_ad_bytes:
        raise Refused("slot", f"{size} bytes; at most {limits.max_ad_bytes}")
    for name in SLOT_RESOURCES:
        if name in slot:
            amount(slot[name], name)
    start = slot.get("GLIDEIN_Start")
    if isinstance(start, str) and start.strip():
        # beyond the bounds: refused; merely broken: the slot takes no jobs (slots.py)
        try:
            classads.check_expr(start, "GLIDEIN_Start", limits)
        except classads.ClassAdTooLarge as exc:
            raise Refused("GLIDEIN_Start", exc.reason) from None


def amount(value: Any, name: str) -> int:
    """A resource amount: a finite number in [0, 2**53]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Refused(name, f"{value!r} is not a number")
    if not math.isfinite(value) or not 0 <= value <= AMOUNT:
        raise Refused(name, f"{value} is outside [0, {AMOUNT}]")
    return int(value)


def check_sandbox_name(name: str, field_name: str = "sandbox") -> str:
    """A file name inside a job's sandbox: one path component, not `.` or
    `..`, without NUL or other control characters."""
    if name in (".", "..") or not SANDBOX_NAME.fullmatch(name):
        raise Refused(field_name, f"{name[:80]!r} is not a plain file name")
    return name


MAX_SANDBOX_DEPTH = 32  # directories a sandbox path may go down
MAX_SANDBOX_PATH = 4096  # bytes of a sandbox path


def is_sandbox_path(name: str) -> bool:
    """A path inside a job's sandbox: relative, at most MAX_SANDBOX_DEPTH plain
    names (`check_sandbox_name`) joined by `/`: files of an input directory,
    outputs of a directory the job made."""
    if len(name.encode("utf-8", "surrogatepass")) > MAX_SANDBOX_PATH:
        return False
    parts = name.split("/")
    return len(parts) <= MAX_SANDBOX_DEPTH and all(
        p not in (".", "..") and SANDBOX_NAME.fullmatch(p) for p in parts
    )


def check_sandbox_path(name: str, field_name: str = "sandbox") -> str:
    if not is_sandbox_path(name):
        raise Refused(
            field_name,
            f"{name[:80]!r} is not a relative path of plain names (no . or .., "
            f"at most {MAX_SANDBOX_DEPTH} deep)",
        )
    return name
