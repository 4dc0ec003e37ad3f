"""Jobs as the pool sees them: ids, submissions, the attributes it owns, and
what a pilot needs to run one. No database access here."""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from glidewms import classads
from glidewms.classad_limits import DEFAULT_LIMITS, AdLimits
from glidewms.pool import concurrency
from glidewms.pool.checks import (
    INT32,
    JOB_NUMBERS,
    POOL_OWNED_LOWER,
    RENUMBERED,
    Refused,
    check_job_ad,
    check_job_number,
    job_number,
    job_requests,
)
from glidewms.pool.fairshare import submitter_name
from glidewms.pool.lifecycle import JOB_STATUS

# HoldReasonCode values, as HTCondor numbers them
HOLD_USER = 1  # condor_hold / glidewms hold
HOLD_POLICY = 3  # a job policy: periodic_hold, or the pool's limit on site failures
HOLD_TRANSFER_OUTPUT = 12  # a listed output file the job did not make (subcode: errno)
HOLD_TRANSFER_INPUT = 13  # an input (URL) the pilot could not fetch (subcode: errno)
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


class BadJobId(ValueError):
    """Text that is not a job id the pool could have given (CLUSTER.PROC)."""


def job_id(cluster_id: int, proc_id: int) -> str:
    return f"{cluster_id}.{proc_id}"


_JOB_ID = re.compile(r"([0-9]{1,10})(?:\.([0-9]{1,10}))?")


def split_job_id(text: str) -> tuple[int, int]:
    found = _JOB_ID.fullmatch(text)
    if found is None or int(found.group(1)) >= INT32 or int(found.group(2) or 0) >= INT32:
        raise BadJobId(f"not a job id: {text[:40]!r} (expected CLUSTER.PROC)")
    return int(found.group(1)), int(found.group(2) or 0)


CLUSTER_PLACEHOLDER = "$(ClusterId)"
ATTRIBUTE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,255}")


@dataclass
class NewJob:
    """One job of a submission. `$(ClusterId)` anywhere in its text stands for
    the cluster id, which only the pool can assign."""

    ad_text: str
    sandbox: list[dict[str, Any]]
    args: list[str]
    env: dict[str, str]

    def realise(
        self, cluster_id: int, limits: AdLimits = DEFAULT_LIMITS
    ) -> tuple[Any, list[str], dict[str, str]]:
        """The job's ad (bounded by `limits`, checked by `check_job_ad`, its
        ProcId dropped), arguments and environment, for cluster `cluster_id`."""

        def sub(text: str) -> str:
            return text.replace(CLUSTER_PLACEHOLDER, str(cluster_id))

        self.check_size(limits)
        ad = classads.parse_ad(sub(self.ad_text), limits)
        for name in ("Requirements", "Rank"):
            if name in ad:
                classads.parse_expr(str(ad.lookup(name)), name, limits)
        check_job_ad(ad)
        if RENUMBERED in ad:
            del ad[RENUMBERED]
        return ad, [sub(a) for a in self.args], {k: sub(v) for k, v in self.env.items()}

    def check_size(self, limits: AdLimits) -> None:
        """Arguments and environment are stored beside the ad and shown with
        it: each value within an attribute's bound, all of it within an ad's."""
        total = len(self.ad_text.encode("utf-8", "surrogatepass"))
        values = [("args", a) for a in self.args]
        values += [(f"env[{k[:40]!r}]", k + v) for k, v in self.env.items()]
        values += [("sandbox", str(f)) for f in self.sandbox]
        if len(values) > limits.max_list_items:
            raise Refused(
                "args",
                f"{len(values)} arguments, variables and files; at most {limits.max_list_items}",
            )
        for what, text in values:
            size = len(text.encode("utf-8", "surrogatepass"))
            if size > limits.max_value_bytes:
                raise Refused(what, f"{size} bytes; at most {limits.max_value_bytes}")
            total += size
        if total > limits.max_ad_bytes:
            raise Refused(
                "job",
                f"ad, arguments and environment of {total} bytes; at most {limits.max_ad_bytes}",
            )


# A submitted job's own ProcId (the client numbers them) is dropped by
# NewJob.realise: the pool numbers a cluster's jobs itself.
_PROC_ID_VALUE = re.compile(r"\bProcId\s*=\s*(\d+)", re.IGNORECASE)
TemplateKey = Any  # str (the ad text) or (text before, text after) its ProcId value


def template_key(
    text: str, seen: dict[tuple[str, str], bool], limits: AdLimits = DEFAULT_LIMITS
) -> TemplateKey:
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
        ok = seen[cut] = _is_proc_id_value(*cut, limits)
    return cut if ok else text


def _is_proc_id_value(before: str, after: str, limits: AdLimits) -> bool:
    for probe in (12345, 54321):
        try:
            ad = classads.parse_ad(f"{before}{probe}{after}", limits)
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
    """The columns of a job. Its autocluster also carries its concurrency
    limits, evaluated here against the whole job and written in canonical
    form (jobs holding different limits never share an autocluster; the
    matchmaker reads them from there). Its submitter (the fair-share
    principal) is the accounting group with the owner from the token as
    its user (`accounting_submitter`)."""
    key, sig_text = classads.signature(ad, significant)
    wanted = _limits_text(ad)
    if wanted is not None:
        sig = stored_ad(sig_text)
        sig[LIMITS_ATTR] = wanted
        sig_text = classads.to_text(sig)
        key = hashlib.sha256(sig_text.encode()).hexdigest()[:24]
    return Derived(
        signature=key,
        signature_ad=sig_text,
        prio=job_number(ad, "JobPrio"),
        cpus=job_requests(ad)["cpus"],
        submitter=submitter_name(owner, accounting_group(ad)),
    )


LIMITS_ATTR = "ConcurrencyLimits"
INVALID_LIMITS = "!"  # prefix of a value the pool could not read: such jobs never start


def _limits_text(ad: Any) -> str | None:
    """The job's ConcurrencyLimits in canonical form; None when it has none;
    INVALID_LIMITS and why when it cannot be read."""
    if LIMITS_ATTR not in ad:
        return None
    refs = classads.external_refs(ad, ad.lookup(LIMITS_ATTR))
    if refs is None or any(r.lower().startswith("target.") for r in refs):
        # HTCondor evaluates it against the slot matched; here it is fixed at
        # submit, so one that reads the slot would silently be no limit
        return f"{INVALID_LIMITS}ConcurrencyLimits reads the slot (TARGET): not supported"
    value = classads.eval_attr(ad, LIMITS_ATTR)
    if value is None or value is classads.UNDEFINED:
        return None
    if not isinstance(value, str):
        return f"{INVALID_LIMITS}ConcurrencyLimits is not a string"
    try:
        wanted = concurrency.parse(value)
    except concurrency.BadLimits as exc:
        return f"{INVALID_LIMITS}{exc}"
    return concurrency.normalized(wanted) or None


_GROUP_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.@-]{0,127}")


def accounting_group(ad: Any) -> str | None:
    """The accounting group a job's usage is charged to, as HTCondor's
    negotiator reads it: ``AccountingGroup`` (``group.user``, condor_submit's
    accounting_group + accounting_group_user) without its last component,
    else ``AcctGroup``. The user part is never taken from the ad: the
    submitter is ``group.<owner from the token>`` (docs/security.md), so no
    one charges, or borrows the priority of, another user. A name that is
    not a plain dotted name (or longer than 128) is ignored: the job is
    charged to its owner alone."""
    full = classads.eval_attr(ad, "AccountingGroup")
    if isinstance(full, str) and full:
        group = full.rsplit(".", 1)[0] if "." in full else None
    else:
        plain = classads.eval_attr(ad, "AcctGroup")
        group = plain if isinstance(plain, str) and plain else None
    if group is None or not _GROUP_NAME.fullmatch(group) or ".." in group:
        return None
    return group


def has_periodic(ad: Any) -> bool:
    """Does the job carry an expression the periodic policy pass must evaluate?"""
    return any(name in ad for name in PERIODIC)


def check_edit(attribute: str, value: str, limits: AdLimits = DEFAULT_LIMITS) -> Any:
    """The parsed value of a qedit, or InvalidEdit saying why not."""
    if not ATTRIBUTE_NAME.fullmatch(attribute):
        raise InvalidEdit(f"attribute: {attribute[:80]!r} is not a ClassAd attribute name")
    if attribute.lower() in POOL_OWNED_LOWER:
        raise InvalidEdit(f"attribute: {attribute} is set by the pool and cannot be edited")
    try:
        expr = classads.parse_expr(value, attribute, limits)
    except classads.ClassAdError as exc:
        raise InvalidEdit(f"value: {exc}") from None
    for name in JOB_NUMBERS:  # a constant out of range is refused for every job at once
        if name.lower() == attribute.lower():
            probe = classads.ClassAd()
            probe[name] = expr
            try:
                check_job_number(probe, name)
            except Refused as exc:
                raise InvalidEdit(str(exc)) from None
    return expr


def check_edited(ad: Any, attribute: str, limits: AdLimits) -> None:
    """A job's ad after a qedit: still within the bounds a submit is held to."""
    try:
        for name in JOB_NUMBERS:  # ClassAd names ignore case
            if name.lower() == attribute.lower():
                check_job_number(ad, name)
        if len(ad) > limits.max_attributes:
            raise Refused(
                attribute, f"the job would have more than {limits.max_attributes} attributes"
            )
        size = len(classads.to_text(ad).encode("utf-8", "surrogatepass"))
        if size > limits.max_ad_bytes:
            raise Refused(
                attribute, f"the job's ad would be {size} bytes; at most {limits.max_ad_bytes}"
            )
    except Refused as exc:
        raise InvalidEdit(str(exc)) from None


def int_attr(ad: Any, name: str, default: int) -> int:
    """An attribute's value as an int: `default` unless a finite number."""
    value = classads.number(classads.eval_attr(ad, name))
    return default if value is None or not math.isfinite(value) else int(value)


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
            spec = self._specs[key] = _ad_part(stored_ad(text))
        return spec


def _ad_part(ad: Any) -> dict[str, Any]:
    def text(name: str) -> str | None:
        value = classads.eval_attr(ad, name)
        return value if isinstance(value, str) else None

    transfer = text("TransferOutput")
    return {
        "cmd": text("Cmd"),
        "out": text("Out"),
        "err": text("Err"),
        # present but "" (transfer_output_files = ""): nothing; absent: every new file
        "transfer_output": None
        if transfer is None
        else [t.strip() for t in transfer.replace(",", " ").split()],
        "request": job_requests(ad),
        "container": container_request(ad),
        "transfer": transfer_request(ad),
        **checkpoint_and_streams(ad),
    }


def transfer_request(ad: Any) -> dict[str, Any]:
    """The file-transfer keys of a claim, those that differ from the defaults:
    `input_urls` (the URL entries of TransferInput, fetched by the pilot's
    transfer plugins), `x509_proxy` and `in` (the proxy's and stdin's sandbox
    names: they travelled as inputs under their base names), `transfer_out`/`transfer_err` false
    (stdout/stderr stay on the node), `when_to_transfer_output` and
    `preserve_relative_paths` (outputs keep their relative path)."""
    spec: dict[str, Any] = {}
    inputs = classads.eval_attr(ad, "TransferInput")
    if isinstance(inputs, str):
        urls = [n.strip() for n in inputs.split(",") if "://" in n]
        if urls:
            spec["input_urls"] = urls
    stdin = classads.eval_attr(ad, "In")
    sent = classads.eval_attr(ad, "TransferIn") is not False  # it came as an input
    if isinstance(stdin, str) and stdin.strip("/") and stdin != "/dev/null" and sent:
        spec["in"] = stdin.rstrip("/").rsplit("/", 1)[-1]
    proxy = classads.eval_attr(ad, "x509userproxy")
    if isinstance(proxy, str) and proxy.strip("/"):
        spec["x509_proxy"] = proxy.rstrip("/").rsplit("/", 1)[-1]
    for attr, key in (("TransferOut", "transfer_out"), ("TransferErr", "transfer_err")):
        if classads.eval_attr(ad, attr) is False:
            spec[key] = False
    if classads.eval_attr(ad, "PreserveRelativePaths") is True:
        spec["preserve_relative_paths"] = True
    when = classads.eval_attr(ad, "WhenToTransferOutput")
    if isinstance(when, str) and when.upper() not in ("", "ON_EXIT"):
        spec["when_to_transfer_output"] = when.upper()
    return spec


def checkpoint_and_streams(ad: Any) -> dict[str, Any]:
    """What the pilot needs of self-checkpointing (SuccessCheckpointExitCode,
    TransferCheckpoint: None means what output transfer would send) and of
    streaming (StreamOut, StreamErr); only the keys the job uses."""
    out: dict[str, Any] = {}
    code = classads.eval_attr(ad, "SuccessCheckpointExitCode")
    if isinstance(code, int) and not isinstance(code, bool):
        out["checkpoint_exit_code"] = code
        files = classads.eval_attr(ad, "TransferCheckpoint")
        if isinstance(files, str):
            out["checkpoint_files"] = [f.strip() for f in files.replace(",", " ").split()]
    for attr, key in (("StreamOut", "stream_out"), ("StreamErr", "stream_err")):
        if classads.is_true(classads.eval_attr(ad, attr)):
            out[key] = True
    return out


def with_checkpoint(
    files: list[dict[str, Any]], checkpoint: list[dict[str, str]] | None
) -> list[dict[str, Any]]:
    """The job's sandbox with its latest checkpoint: a checkpoint file replaces
    the input of its name (but never the executable)."""
    if not checkpoint:
        return files
    names = {f["name"]: f for f in files}
    keep = {n for n, f in names.items() if f.get("executable")}
    taken = {c["name"]: c for c in checkpoint if c["name"] not in keep}
    return [f for f in files if f["name"] not in taken] + [
        {"name": c["name"], "sha256": c["sha256"]} for c in taken.values()
    ]


_RUNTIME_KEYS = ("checkpoint_exit_code", "checkpoint_files", "stream_out", "stream_err")


def execution_spec(row: Any, cache: SpecCache | None = None) -> dict[str, Any]:
    """What a pilot needs to run the job, derived from its ad and sandbox."""
    part = cache.ad_part(row.ad) if cache is not None else _ad_part(stored_ad(row.ad))
    spec = row.sandbox or {}
    files = with_checkpoint(spec.get("files", []), getattr(row, "checkpoint", None))
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
        **part.get("transfer", {}),
        **{k: part[k] for k in _RUNTIME_KEYS if k in part},
    }


# ContainerImageSource values (submit/container.py) of images that travel with the
# job: they are in its sandbox under their base name (ContainerImage).
_SENT_IMAGES = ("cedar", "http", "https")
_WANT_KIND = (("WantSIF", "sif"), ("WantSandboxImage", "sandbox"), ("WantDockerImage", "docker"))


def container_request(ad: Any) -> dict[str, Any] | None:
    """The job's container wish, as the pilot's job wrapper takes it:
    ``{"image", "kind", "in_sandbox"}`` (see glidein/agent/container.py).

    The image: `ContainerImage` (submit's `container_image`), else
    `DockerImage` (`docker_image`, in the container or docker universe: a
    docker:// image), else the GlideinWMS-era `SingularityImage`;
    `WantContainer`/`WantDocker` alone ask for the group's default image
    (empty string). The kind: what submit said (`WantSIF`,
    `WantSandboxImage`, `WantDockerImage`), else condor_submit's rule on the
    name. An image that travelled with the job (`ContainerImageSource` a
    transfer, and `TransferContainer` not false) is in the sandbox under its
    base name, which `ContainerImage` holds.
    """

    def text(name: str) -> str:
        value = classads.eval_attr(ad, name)
        return value.strip() if isinstance(value, str) else ""

    image, kind = text("ContainerImage"), ""
    if not image and (docker := text("DockerImage")):
        image, kind = (docker if docker.startswith("docker:") else f"docker://{docker}"), "docker"
    if not image:
        image = text("SingularityImage")
    if not image:
        wants = ("WantContainer", "WantDocker")
        if any(classads.is_true(classads.eval_attr(ad, n)) for n in wants):
            return {"image": ""}
        return None
    for attr, name in _WANT_KIND:
        if not kind and classads.is_true(classads.eval_attr(ad, attr)):
            kind = name
    if not kind:
        kind = "docker" if image.startswith("docker:") else "sif" if image.endswith(".sif") else ""
    request: dict[str, Any] = {"image": image, "kind": kind or "sandbox"}
    sent = text("ContainerImageSource").lower() in _SENT_IMAGES
    if sent and classads.eval_attr(ad, "TransferContainer") is not False:
        request["in_sandbox"] = True
    return request


def dynamic(row: Any) -> dict[str, Any]:
    """The attributes that come from the job's columns (absent ones left out)."""
    out: dict[str, Any] = {
        "JobStatus": JOB_STATUS[row.state],
        "NumJobStarts": row.num_starts,
        "NumRestarts": row.num_restarts,
        "NumSiteFailures": row.num_restarts,
        "EnteredCurrentStatus": int(row.updated_at),
        "NumJobCompletions": getattr(row, "completions", 0) or 0,
        "NumCkpts": getattr(row, "num_checkpoints", 0) or 0,
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


def stored_ad(text: str) -> Any:
    """An ad the pool stored, parsed: it passed the configured bounds when it
    came in, so it is read back within the most any configuration allows."""
    return classads.parse_ad(text, classads.CEILING)


def full_ad(row: Any) -> Any:
    """The stored ad plus the attributes that change over a job's life."""
    ad = stored_ad(row.ad)
    for name, value in dynamic(row).items():
        ad[name] = value
    return ad
