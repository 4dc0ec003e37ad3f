"""Jobs as the pool sees them: ids, submissions, the attributes it owns, and
what a pilot needs to run one. No database access here."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from glidewms import classads
from glidewms.pool.fairshare import submitter_name
from glidewms.pool.lifecycle import JOB_STATUS

# HoldReasonCode values, as HTCondor numbers them
HOLD_USER = 1  # condor_hold / glidewms hold
HOLD_POLICY = 3  # a job policy: periodic_hold, or the pool's limit on site failures
PERIODIC = ("PeriodicHold", "PeriodicRemove", "PeriodicRelease")


class NotFound(LookupError):
    pass


class Conflict(Exception):
    """The request is valid but the state no longer allows it (e.g. a stale claim)."""


class PilotGone(Conflict):
    """The pool no longer counts this pilot (it deregistered or was declared lost)."""


class InvalidJob(ValueError):
    """A job of a submission is malformed; `index` says which."""

    def __init__(self, index: int, message: str) -> None:
        super().__init__(f"jobs[{index}]: {message}")
        self.index = index


class InvalidEdit(ValueError):
    """A qedit the pool refuses (bad name, bad value, an attribute it owns)."""


def job_id(cluster_id: int, proc_id: int) -> str:
    return f"{cluster_id}.{proc_id}"


def split_job_id(text: str) -> tuple[int, int]:
    try:
        cluster, _, proc = text.partition(".")
        return int(cluster), int(proc or 0)
    except ValueError:
        raise NotFound(f"not a job id: {text!r} (expected CLUSTER.PROC)") from None


CLUSTER_PLACEHOLDER = "$(ClusterId)"
# Set by the pool at submit; anything a user sends under these names is dropped.
RESERVED = ("Owner", "ClusterId", "ProcId", "QDate", "JobStatus", "User")
# Never editable: the submit-time ones plus what the pool derives over a job's life.
POOL_OWNED = frozenset(
    name.lower()
    for name in (
        *RESERVED,
        "NumJobStarts",
        "NumRestarts",
        "NumSiteFailures",
        "EnteredCurrentStatus",
        "ExitCode",
        "RemotePilot",
        "HoldReason",
        "HoldReasonCode",
        "CompletionDate",
        "JobStartDate",
    )
)
ATTRIBUTE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass
class NewJob:
    """One job of a submission. `$(ClusterId)` anywhere in its text stands for
    the cluster id, which only the pool can assign."""

    ad_text: str
    sandbox: list[dict[str, Any]]
    args: list[str]
    env: dict[str, str]

    def realise(self, cluster_id: int) -> tuple[Any, list[str], dict[str, str]]:
        def sub(text: str) -> str:
            return text.replace(CLUSTER_PLACEHOLDER, str(cluster_id))

        ad = classads.parse_ad(sub(self.ad_text))
        for name in ("Requirements", "Rank"):
            if name in ad:
                classads.parse_expr(str(ad.lookup(name)))
        for name in RESERVED:
            if name in ad:
                del ad[name]
        return ad, [sub(a) for a in self.args], {k: sub(v) for k, v in self.env.items()}


# A submitted job's own ProcId (the client numbers them) is dropped by
# NewJob.realise: the pool numbers a cluster's jobs itself.
_PROC_ID_VALUE = re.compile(r"\bProcId\s*=\s*(\d+)", re.IGNORECASE)
TemplateKey = Any  # str (the ad text) or (text before, text after) its ProcId value


def template_key(text: str, seen: dict[tuple[str, str], bool]) -> TemplateKey:
    """What a job's ad text is the same as, for the work done once per kind of
    job at submit (parse, checks, autocluster): texts that differ only in the
    value of ProcId realise to the same ad, so ``queue 100000`` costs one parse,
    not 100000.

    The key is the text cut around its last ``ProcId = <digits>``, used only
    once two probe parses proved that exactly that place is ProcId's value (a
    match inside a string literal, or a ProcId expression, fails the probe);
    otherwise the whole text is the key. ``seen`` keeps each cut's verdict.
    """
    matches = list(_PROC_ID_VALUE.finditer(text))
    if not matches:
        return text
    last = matches[-1]
    cut = (text[: last.start(1)], text[last.end(1) :])
    ok = seen.get(cut)
    if ok is None:
        ok = seen[cut] = _is_proc_id_value(*cut)
    return cut if ok else text


def _is_proc_id_value(before: str, after: str) -> bool:
    for probe in (12345, 54321):
        try:
            ad = classads.parse_ad(f"{before}{probe}{after}")
        except classads.ClassAdError:
            return False
        if ad.get("ProcId") != probe:
            return False
    return True


@dataclass(frozen=True)
class Derived:
    """What the pool keeps in columns beside a job's ad, derived from the ad."""

    signature: str
    signature_ad: str
    prio: int
    cpus: int
    submitter: str


def derive(ad: Any, owner: str, significant: Sequence[str] = ()) -> Derived:
    key, sig_text = classads.signature(ad, significant)
    group = ad.eval("AcctGroup") if "AcctGroup" in ad else None
    return Derived(
        signature=key,
        signature_ad=sig_text,
        prio=int_attr(ad, "JobPrio", 0),
        cpus=max(1, int_attr(ad, "RequestCpus", 1)),
        submitter=submitter_name(owner, group if isinstance(group, str) and group else None),
    )


def has_periodic(ad: Any) -> bool:
    """Does the job carry an expression the periodic policy pass must evaluate?"""
    return any(name in ad for name in PERIODIC)


def check_edit(attribute: str, value: str) -> Any:
    """The parsed value of a qedit, or InvalidEdit saying why not."""
    if not ATTRIBUTE_NAME.fullmatch(attribute):
        raise InvalidEdit(f"attribute: {attribute!r} is not a ClassAd attribute name")
    if attribute.lower() in POOL_OWNED:
        raise InvalidEdit(f"attribute: {attribute} is set by the pool and cannot be edited")
    try:
        return classads.parse_expr(value)
    except classads.ClassAdError as exc:
        raise InvalidEdit(f"value: {exc}") from None


def int_attr(ad: Any, name: str, default: int) -> int:
    if name not in ad:
        return default
    value = classads.number(ad.eval(name))
    return default if value is None else int(value)


_PROC_ID = re.compile(r"(?:^\[ |; )ProcId = (-?\d+)(?:;| \])")


class SpecCache:
    """What `execution_spec` reads from ads, per ad text with ProcId aside:
    the jobs of a cluster share it, so a stream of claims parses one ad per
    cluster, not one per job. Bounded; cleared when full."""

    def __init__(self, limit: int = 4096) -> None:
        self.limit = limit
        self._specs: dict[str, dict[str, Any]] = {}

    def ad_part(self, text: str) -> dict[str, Any]:
        found = _PROC_ID.search(text)
        key = text if found is None else text[: found.start(1)] + text[found.end(1) :]
        spec = self._specs.get(key)
        if spec is None:
            if len(self._specs) >= self.limit:
                self._specs.clear()
            spec = self._specs[key] = _ad_part(classads.parse_ad(text))
        return spec


def _ad_part(ad: Any) -> dict[str, Any]:
    def text(name: str) -> str | None:
        if name not in ad:
            return None
        value = ad.eval(name)
        return value if isinstance(value, str) else None

    transfer = text("TransferOutput")
    return {
        "cmd": text("Cmd"),
        "out": text("Out"),
        "err": text("Err"),
        "transfer_output": [t.strip() for t in transfer.replace(",", " ").split()]
        if transfer
        else None,
        "request": {
            "cpus": int_attr(ad, "RequestCpus", 1),
            "memory": int_attr(ad, "RequestMemory", 0),
            "disk": int_attr(ad, "RequestDisk", 0),
            "gpus": int_attr(ad, "RequestGPUs", 0),
        },
        "container": container_request(ad),
    }


def execution_spec(row: Any, cache: SpecCache | None = None) -> dict[str, Any]:
    """What a pilot needs to run the job, derived from its ad and sandbox."""
    part = cache.ad_part(row.ad) if cache is not None else _ad_part(classads.parse_ad(row.ad))
    spec = row.sandbox or {}
    files = spec.get("files", [])
    executable = next((f["name"] for f in files if f.get("executable")), None)
    container = part["container"]
    return {
        "cmd": executable or part["cmd"],
        "args": spec.get("args", []),
        "env": spec.get("env", {}),
        "sandbox": files,
        "out": part["out"],
        "err": part["err"],
        "transfer_output": None
        if part["transfer_output"] is None
        else list(part["transfer_output"]),
        "request": dict(part["request"]),
        **({"container": dict(container)} if container is not None else {}),
    }


def container_request(ad: Any) -> dict[str, str] | None:
    """The job's container wish, as the pilot's job wrapper takes it.

    `ContainerImage` (submit's `container_image`) or the GlideinWMS-era
    `SingularityImage` name an image; `WantContainer = true` alone asks for
    the group's default image (empty string).
    """
    for name in ("ContainerImage", "SingularityImage"):
        if name in ad:
            value = ad.eval(name)
            if isinstance(value, str) and value:
                return {"image": value}
    if "WantContainer" in ad and classads.is_true(ad.eval("WantContainer")):
        return {"image": ""}
    return None


def dynamic(row: Any) -> dict[str, Any]:
    """The attributes that come from the job's columns (absent ones left out)."""
    out: dict[str, Any] = {
        "JobStatus": JOB_STATUS[row.state],
        "NumJobStarts": row.num_starts,
        "NumRestarts": row.num_restarts,
        "NumSiteFailures": row.num_restarts,
        "EnteredCurrentStatus": int(row.updated_at),
        "NumJobCompletions": getattr(row, "completions", 0) or 0,
    }
    if row.exit_code is not None:
        out["ExitCode"] = row.exit_code
    if row.pilot_id:
        out["RemotePilot"] = row.pilot_id
    if row.hold_reason:
        out["HoldReason"] = row.hold_reason
        if row.hold_code is not None:
            out["HoldReasonCode"] = row.hold_code
    if row.start_date:
        out["JobStartDate"] = int(row.start_date)
    if row.completion_date:
        out["CompletionDate"] = int(row.completion_date)
    return out


def full_ad(row: Any) -> Any:
    """The stored ad plus the attributes that change over a job's life."""
    ad = classads.parse_ad(row.ad)
    for name, value in dynamic(row).items():
        ad[name] = value
    return ad
