"""What the job asks of a slot, and the Requirements expression that says so.

Sizes follow condor_submit's `parse_int64_bytes`: a number with an optional
fraction and an optional K/M/G/T (binary) unit, `request_memory` and
`gpus_minimum_memory` in MB by default, `request_disk` in KB, rounded up;
anything else is a ClassAd expression (e.g. one of `MemoryUsage`), which must
evaluate to a number in the job's ad (or refer to the slot with `TARGET.`), so
that `request_memory = lots` is an error and not a job that never runs.

Requirements = the user's clause, then the resource clauses glidewms has
always added (Cpus, Memory, Disk, GPUs against the slot), then those
condor_submit adds for GPUs properties, custom resources, CUDA, containers,
URL inputs and a shared file system.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING

from glidewms.submit import commands
from glidewms.submit.exprs import evaluate, is_number, problem, quote
from glidewms.submit.model import (
    DEFAULT_REQUEST_CPUS,
    DEFAULT_REQUEST_DISK_KIB,
    DEFAULT_REQUEST_MEMORY_MIB,
)

if TYPE_CHECKING:
    from glidewms.submit.build import Got, JobBuilder

_SIZE_RE = re.compile(r"\s*(\d+)(?:\.(\d*))?\s*(?:([KMGTkmgt])(?:i?[bB])?)?\s*")
_UNITS = {"k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
_SPECIAL_REQUESTS = {
    "request_cpus",
    "request_memory",
    "request_disk",
    "request_gpus",
    "request_cpu",
    "request_gpu",
}
_NAME_RE = re.compile(r"[A-Za-z0-9_.@-]+")
_LIMIT_RE = re.compile(r"[A-Za-z0-9_.]+(?::\d+(?:\.\d*)?)?")
_checked_requests: dict[tuple[str, str], object] = {}


def size(text: str, base: int) -> int | None:
    """`text` in units of `base` bytes, rounded up, or None if it is not a size."""
    m = _SIZE_RE.fullmatch(text)
    if m is None:
        return None
    fraction = float("0." + m.group(2)) if m.group(2) else 0.0
    unit = _UNITS[m.group(3).lower()] if m.group(3) else base
    return math.ceil((int(m.group(1)) + fraction) * unit / base)


def requests(job: JobBuilder) -> None:
    _request(job, "request_cpus", "RequestCpus", 1, DEFAULT_REQUEST_CPUS, whole=True)
    _request(job, "request_memory", "RequestMemory", 1024**2, DEFAULT_REQUEST_MEMORY_MIB)
    _request(job, "request_disk", "RequestDisk", 1024, DEFAULT_REQUEST_DISK_KIB)
    if job.get("request_gpus") is not None:
        _request(job, "request_gpus", "RequestGPUs", 1, 0, whole=True, minimum=0)
        _gpu_properties(job)
    else:
        for name in (
            "require_gpus",
            "gpus_minimum_capability",
            "gpus_maximum_capability",
            "gpus_minimum_memory",
            "gpus_minimum_runtime",
        ):
            if got := job.get(name):
                job.ctx.warn(
                    got.source,
                    got.line,
                    f"{got.key} is ignored without request_gpus (as condor_submit ignores it)",
                )
    _custom(job)
    if got := job.get("cuda_version"):
        m = re.fullmatch(r"(\d+)(?:\.(\d+))?", got.value)
        if m is None:
            raise job.fail(got, f"expected a version such as 12.1, got {got.value!r}")
        major = int(m.group(1))
        version = (
            major * 1000 + int(m.group(2)) % 100
            if m.group(2) is not None
            else (major * 1000 if major < 1000 else major)
        )
        job.attrs["CUDAVersion"] = str(version)
        job.clauses.append("CUDAVersion <= TARGET.CUDAMaxSupportedVersion")


def _request(
    job: JobBuilder,
    command: str,
    attr: str,
    base: int,
    default: int,
    whole: bool = False,
    minimum: int = 1,
) -> None:
    got = job.get(command)
    if got is None:
        job.attrs[attr] = str(default)
        return
    value = (
        int(got.value)
        if whole and re.fullmatch(r"\s*\d+\s*", got.value)
        else size(got.value, base)
        if not whole
        else None
    )
    if value is not None:
        if value < minimum:
            raise job.fail(got, f"expected at least {minimum}, got {got.value!r}")
        job.attrs[attr] = str(value)
        return
    if got.value.strip().lower() == "undefined":
        raise job.fail(got, "not supported by glidewms: every job states its request")
    if problem(got.value) is not None:
        raise job.fail(got, _expected(whole, got.value))
    job.attrs[attr] = got.value.strip()
    job.request_exprs.append((attr, got, minimum, whole))


def _expected(whole: bool, value: str) -> str:
    wanted = "a whole number" if whole else "a size such as 2048, 2 GB or 512M"
    return f"expected {wanted}, or an expression giving a number, got {value.strip()!r}"


def _gpu_properties(job: JobBuilder) -> None:
    require = job.get("require_gpus")
    text = job.expr(require) if require else ""
    clauses = []
    for command, attr, prop, op in (
        ("gpus_minimum_capability", "GPUsMinCapability", "Capability", ">="),
        ("gpus_maximum_capability", "GPUsMaxCapability", "Capability", "<="),
        ("gpus_minimum_memory", "GPUsMinMemory", "GlobalMemoryMb", ">="),
        ("gpus_minimum_runtime", "GPUsMinRuntime", "MaxSupportedVersion", ">="),
    ):
        got = job.get(command)
        if got is None:
            continue
        if command == "gpus_minimum_memory" and (mb := size(got.value, 1024**2)) is not None:
            job.attrs[attr] = str(mb)
        elif command == "gpus_minimum_runtime" and (
            m := re.fullmatch(r"(\d+)(?:\.(\d+))?", got.value)
        ):
            major, minor = int(m.group(1)), int(m.group(2) or 0)
            job.attrs[attr] = str(
                major if m.group(2) is None and major > 1000 else major * 1000 + minor * 10
            )
        else:
            job.attrs[attr] = job.expr(got)
        if not re.search(rf"\b{prop}\b", text, re.IGNORECASE):
            clauses.append(f"{prop} {op} {attr}")
    if text and clauses:
        text = f"({text}) && " + " && ".join(clauses)
    elif clauses:
        text = " && ".join(clauses)
    if text:
        job.attrs["RequireGPUs"] = text


def _custom(job: JobBuilder) -> None:
    """`request_<name>`: a custom resource `Request<name>`, as condor_submit has them."""
    for lower, assign in job.block.macros.items():
        if not lower.startswith("request_") or lower in _SPECIAL_REQUESTS:
            continue
        if lower in commands.BY_NAME:
            continue
        tag = assign.key[len("request_") :]
        if len(tag) < 2 or tag.startswith("_") or not re.fullmatch(r"[A-Za-z0-9_]+", tag):
            continue
        value = job.expand(assign.value, assign.source, assign.line).strip()
        if not value:
            continue
        found = problem(value)
        if found is not None:
            raise job.fail(job.got_of(assign), f"{found}: {value!r}")
        attr = "Request" + tag
        job.attrs[attr] = value
        require = job.block.macros.get("require_" + tag.lower())
        if require is not None and require.value.strip():
            rtext = job.expand(require.value, require.source, require.line).strip()
            if problem(rtext) is not None:
                raise job.fail(job.got_of(require), f"not a valid ClassAd expression: {rtext!r}")
            job.attrs["Require" + tag] = rtext
            job.custom_clauses.append(
                f"countMatches(MY.Require{tag}, TARGET.Available{tag}) >= {attr}"
            )
        elif value.startswith('"'):
            job.custom_clauses.append(f"regexp({attr}, TARGET.{tag})")
        else:
            job.custom_clauses.append(f"TARGET.{tag} >= {attr}")


def policy(job: JobBuilder) -> None:
    """Accounting group, concurrency limits, retries and materialisation."""
    group, user = job.get("accounting_group"), job.get("accounting_group_user")
    if group or user:
        name = user.value if user else job.ctx.login
        for got, text in ((group, group.value if group else ""), (user, name)):
            if text and not _NAME_RE.fullmatch(text):
                raise job.fail(got, f"not a valid accounting name: {text!r}")
        job.attrs["AcctGroupUser"] = quote(name)
        if group:
            job.attrs["AcctGroup"] = quote(group.value)
            job.attrs["AccountingGroup"] = quote(f"{group.value}.{name}")
        else:
            job.attrs["AccountingGroup"] = quote(name)
    limits, limits_expr = job.get("concurrency_limits"), job.get("concurrency_limits_expr")
    if limits and limits_expr:
        raise job.fail(
            limits_expr, "concurrency_limits and concurrency_limits_expr can't be used together"
        )
    if limits:
        names = sorted(n for n in re.split(r"[ ,\t\r\n]+", limits.value.lower()) if n)
        for name in names:
            if not _LIMIT_RE.fullmatch(name):
                raise job.fail(limits, f"invalid concurrency limit {name!r}")
        job.attrs["ConcurrencyLimits"] = quote(",".join(names))
    elif limits_expr:
        job.attrs["ConcurrencyLimits"] = job.expr(limits_expr)
    if job.get("max_retries"):
        job.attrs["MaxRetries"] = str(job.integer("max_retries", 0, 0))
    # late materialisation: kept in the ad, as HTCondor keeps them in the cluster ad
    for command, attr in (
        ("max_materialize", "JobMaterializeLimit"),
        ("max_idle", "JobMaterializeMaxIdle"),
    ):
        value = job.integer(command, None, 1)
        if value is not None:
            job.attrs[attr] = str(value)


def requirements(job: JobBuilder) -> None:
    for attr, got, minimum, whole in job.request_exprs:
        _check_request(job, attr, got, minimum, whole)
    if job.flags.get("forced:requirements"):
        job.ctx.warn(
            job.block.source,
            job.block.line,
            "+Requirements replaces the requirements "
            "glidewms adds (resources, containers, transfers): the job may match "
            "slots that cannot run it",
        )
        return
    clauses: list[str] = []
    if req := job.get("requirements"):
        clauses.append(job.expr(req))
    clauses += [
        "TARGET.Cpus >= RequestCpus",
        "TARGET.Memory >= RequestMemory",
        "TARGET.Disk >= RequestDisk",
    ]
    gpus = job.attrs.get("RequestGPUs")
    if gpus is not None and gpus != "0":
        clauses.append(
            "countMatches(MY.RequireGPUs, TARGET.AvailableGPUs) >= RequestGPUs"
            if "RequireGPUs" in job.attrs
            else "TARGET.GPUs >= RequestGPUs"
        )
    clauses += job.custom_clauses
    clauses += job.clauses
    job.attrs["Requirements"] = " && ".join(f"({c})" for c in clauses)


def _check_request(job: JobBuilder, attr: str, got: Got, minimum: int, whole: bool) -> None:
    """A request written as an expression must give a number (unless it asks the slot)."""
    if job.attrs.get(attr) != got.value.strip():  # replaced by a +Attr
        return
    if re.search(r"\btarget\.", got.value, re.IGNORECASE):
        return
    key = (attr, got.value)
    if key not in _checked_requests:
        others = {k: v for k, v in job.attrs.items() if k != attr}
        if len(_checked_requests) > 10000:
            _checked_requests.clear()
        _checked_requests[key] = evaluate(got.value, others)
    value = _checked_requests[key]
    if not is_number(value):
        shown = value.name.lower() if hasattr(value, "name") else repr(value)
        raise job.fail(got, f"{_expected(whole, got.value)} (it evaluates to {shown})")
    if value < minimum:
        raise job.fail(got, f"expected at least {minimum}, got {got.value.strip()!r}")
