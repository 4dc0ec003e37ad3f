"""HTCondor-G / HTCondor-CE backend: pilots as grid-universe jobs of an HTCondor schedd.

The factory talks to a schedd through the HTCondor Python bindings
(`htcondor2`); the schedd's gridmanager forwards each job to its site:

- `condor.grid_type: condor` routes to an HTCondor-CE
  (`grid_resource = condor <ce_host> <ce_host>:<ce_port>`), the usual way to
  reach a WLCG site;
- `condor.grid_type: batch` hands jobs to a batch system through the schedd's
  blahp (`grid_resource = batch slurm [user@host]`), BOSCO style.

- submit: one `Schedd.submit(Submit, count=N)` per group of pilots that share
  their arguments (`batch.array_size` at most): one cluster, proc k is the
  k-th pilot. The bootstrap is the executable, the pilot token travels as an
  input file (`transfer_input_files`, the job finds it through
  `GLIDEIN_TOKEN_FILE`), and every proc carries `+GlideWMS_Factory`,
  `+GlideWMS_Entry` and its own `+GlideWMS_GlideinId` (the submit language's
  `$CHOICE(Process, ...)` picks it), so a factory that stopped before it
  stored the cluster id finds its pilots again (`adopt`). A backend id is
  `<entry>/<cluster>.<proc>`.
- status: one `Schedd.query` per schedd and factory tag with a constraint on
  `GlideWMS_Factory`: JobStatus and GridJobStatus mapped in `JOB_STATUS` and
  `GRID_STATUS`; a job no longer in the queue ended (ended jobs stay in the
  queue for `LEAVE_SECONDS`, long enough for the factory to read ExitCode).
- remove / release: `Schedd.act(JobAction.Remove | Release, ["c.p", ...])`.
- logs: the job's `output` and `error` files under the entry's log
  directory, with the last HoldReason the schedd gave for a held pilot.

Credentials: `condor.x509` and `condor.scitoken` name files; the description
holds their paths, never their content, and is never logged. A pilot keeps
the token it was submitted with (HTCondor re-sends only X.509 proxies to a
running job), so pilots here do not see a renewed pilot token.

No schedd can run on this machine: the tests drive this module through a
stand-in object that honours exactly the three Schedd calls used here
(tests/components/condor_schedd_standin.py).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import htcondor2

from glidewms.config.factory import EntryConfig
from glidewms.config.sites import CondorConfig
from glidewms.factory.backends.base import (
    Backend,
    BackendContext,
    BackendError,
    PilotLogs,
    PilotState,
    PilotSubmission,
)
from glidewms.factory.backends.script import PilotArray, pilot_arrays
from glidewms.factory.backends.shell import LocalShell

log = logging.getLogger(__name__)

# JobStatus of a job ad (the schedd's own view of the job).
JOB_STATUS: dict[int, PilotState] = {
    1: PilotState.queued,  # Idle: not yet at the CE, or waiting there
    2: PilotState.running,
    3: PilotState.removed,
    4: PilotState.finished,  # Completed: failed instead when ExitCode != 0 (see condor_state)
    5: PilotState.held,  # Held: HoldReason says why
    6: PilotState.running,  # Transferring output
    7: PilotState.held,  # Suspended: allocated but does no work
}
# GridJobStatus: what the remote side (the CE's schedd, the blahp) says, upper-cased.
GRID_STATUS: dict[str, PilotState] = {
    "UNSUBMITTED": PilotState.queued,
    "IDLE": PilotState.queued,
    "PENDING": PilotState.queued,
    "QUEUED": PilotState.queued,
    "RUNNING": PilotState.running,
    "TRANSFERRING_OUTPUT": PilotState.running,
    "HELD": PilotState.held,
    "SUSPENDED": PilotState.held,
    "COMPLETED": PilotState.finished,
    "REMOVED": PilotState.removed,
}
PROJECTION = [
    "ClusterId",
    "ProcId",
    "JobStatus",
    "GridJobStatus",
    "HoldReason",
    "ExitCode",
    "ExitBySignal",
    "GlideWMS_GlideinId",
    "GlideWMS_Entry",
]
LEAVE_SECONDS = 1800  # ended jobs stay queued this long: the factory reads their ExitCode
SAFE_ID = re.compile(r"^[A-Za-z0-9_.-]+$")
REF = re.compile(r"^(\d+)\.(\d+)$")


class SubmitResultLike(Protocol):
    def cluster(self) -> int: ...


class ScheddLike(Protocol):
    """The three `htcondor2.Schedd` calls this backend makes (and the stand-in honours)."""

    def submit(self, description: htcondor2.Submit, count: int = 0) -> SubmitResultLike: ...

    def query(self, constraint: str = "True", projection: list[str] = ...) -> list[Any]: ...

    def act(self, action: htcondor2.JobAction, job_spec: list[str]) -> Any: ...


def default_schedd(condor: CondorConfig) -> ScheddLike:
    """The local schedd, or a named one located through the collector (found
    through the host's HTCondor configuration: see `glidewms.classads`)."""
    schedd: ScheddLike  # htcondor2 ships no types
    if condor.schedd == "local":
        schedd = htcondor2.Schedd()
        return schedd
    collector = htcondor2.Collector(condor.collector) if condor.collector else htcondor2.Collector()
    schedd = htcondor2.Schedd(collector.locate(htcondor2.DaemonType.Schedd, condor.schedd))
    return schedd


def condor_state(ad: Mapping[str, Any]) -> PilotState:
    """One job ad as a PilotState.

    JobStatus decides, except that an Idle or Running grid job takes the remote
    side's GridJobStatus when there is one (a job idle in the CE's queue shows
    as Running at some schedd versions); a Completed job is failed when it
    exited non-zero or by a signal.
    """
    try:
        status = int(ad.get("JobStatus", 0))
    except (TypeError, ValueError):
        status = 0
    state = JOB_STATUS.get(status)
    if state is None:
        log.warning("unknown HTCondor JobStatus %r", ad.get("JobStatus"))
        return PilotState.unknown
    grid = ad.get("GridJobStatus")
    if status in (1, 2) and isinstance(grid, str) and grid.strip():
        remote = GRID_STATUS.get(grid.strip().upper())
        if remote is None:
            log.warning("unknown GridJobStatus %r", grid)
        elif remote in (PilotState.queued, PilotState.running, PilotState.held):
            state = remote
    if state is PilotState.finished and (
        ad.get("ExitBySignal") is True or _int(ad.get("ExitCode")) not in (0, None)
    ):
        return PilotState.failed
    return state


def _int(value: Any) -> int | None:  # anything int() takes: a classad value may be an expression
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def quote_arguments(words: Sequence[str]) -> str:
    """HTCondor's "new syntax" for `arguments`/`environment`: every word single-quoted
    (a ' doubled inside), the whole in double quotes (a " doubled), and each `$`
    as `$(DOLLAR)` so that no word is taken for a submit macro."""
    quoted = [
        "'" + w.replace("'", "''").replace('"', '""').replace("$", "$(DOLLAR)") + "'" for w in words
    ]
    return " ".join(quoted)


def grid_resource(condor: CondorConfig) -> str:
    if condor.grid_type == "condor":
        return f"condor {condor.ce_host} {condor.ce_host}:{condor.ce_port}"
    remote = [condor.remote] if condor.remote else []
    return " ".join(["batch", str(condor.batch_system), *remote])


def submit_description(
    entry: EntryConfig, array: PilotArray, *, bootstrap: Path, log_dir: str
) -> dict[str, str]:
    """The submit commands of one cluster (pure: the tests read it)."""
    condor = entry.condor
    if condor is None:
        raise BackendError(f"entry {entry.name}: backend htcondor needs a condor: section")
    bad = [g for g in array.glidein_ids if not SAFE_ID.fullmatch(g)]
    if bad:
        raise BackendError(f"glidein id {bad[0]!r} cannot be named in a submit description")
    choice = f"$CHOICE(Process, {', '.join(array.glidein_ids)})"
    env = {**entry.environment, "GLIDEIN_TOKEN_FILE": array.token_file.name}
    env_words = " ".join(f"{k}={quote_arguments([v])}" for k, v in sorted(env.items()))
    description = {
        "universe": "grid",
        "grid_resource": grid_resource(condor),
        "executable": str(bootstrap),
        "arguments": f'"{quote_arguments(array.arguments)} --glidein-id {choice}"',
        "environment": f'"{env_words}"',
        "transfer_input_files": str(array.token_file),
        "should_transfer_files": "YES",
        "when_to_transfer_output": "ON_EXIT",
        "output": f"{log_dir}/$(Cluster).$(Process).out",
        "error": f"{log_dir}/$(Cluster).$(Process).err",
        "+GlideWMS_Factory": f'"{condor.factory_tag}"',
        "+GlideWMS_Entry": f'"{entry.name}"',
        "+GlideWMS_GlideinId": f'"{choice}"',
        "+maxWallTime": str(max(1, entry.walltime // 60)),  # HTCondor-CE: minutes
        "leave_in_queue": f"(JobStatus == 3 || JobStatus == 4) && "
        f"(time() - EnteredCurrentStatus) < {LEAVE_SECONDS}",
    }
    if isinstance(entry.cpus, int):
        description["request_cpus"] = str(entry.cpus)
        description["+xcount"] = str(entry.cpus)  # what an HTCondor-CE routes on
    if isinstance(entry.memory, int):
        description["request_memory"] = str(entry.memory)
        description["+maxMemory"] = str(entry.memory)
    if entry.gpus:  # an HTCondor-CE routes it to the site's batch system
        description["request_gpus"] = str(entry.gpus)
    if isinstance(entry.disk, int):
        description["request_disk"] = str(entry.disk * 1024)  # KiB
    if entry.batch.queue:
        key = "+queue" if condor.grid_type == "condor" else "batch_queue"
        description[key] = f'"{entry.batch.queue}"' if key == "+queue" else entry.batch.queue
    if condor.x509 is not None:
        description["x509userproxy"] = str(condor.x509)
    if condor.scitoken is not None:
        description["scitokens_file"] = str(condor.scitoken)
    description.update(condor.submit)
    return description


def check_credentials(entry: EntryConfig) -> None:
    """A credential file that is missing fails the submission, named by its key only."""
    condor = entry.condor
    for key in ("x509", "scitoken"):
        path = getattr(condor, key, None)
        if path is not None and not Path(path).is_file():
            raise BackendError(f"entry {entry.name}: condor.{key} is not a readable file")


class HtcondorBackend(Backend):
    """Pilots as jobs of an HTCondor schedd (see the module docstring)."""

    kind = "htcondor"
    can_release = True

    def __init__(
        self,
        context: BackendContext,
        schedd_factory: Callable[[CondorConfig], ScheddLike] | None = None,
    ) -> None:
        super().__init__(context)
        self._schedd_factory = schedd_factory or default_schedd
        self._schedds: dict[tuple[str, str | None], ScheddLike] = {}
        self.hold_reasons: dict[str, str] = {}  # backend id -> the schedd's HoldReason
        self._prepared: set[str] = set()

    def _condor(self, entry: EntryConfig) -> CondorConfig:
        if entry.condor is None:
            raise BackendError(f"entry {entry.name}: backend htcondor needs a condor: section")
        return entry.condor

    def schedd(self, entry: EntryConfig) -> ScheddLike:
        condor = self._condor(entry)
        key = (condor.schedd, condor.collector)
        if key not in self._schedds:
            self._schedds[key] = self._schedd_factory(condor)
        return self._schedds[key]

    def log_dir(self, entry: EntryConfig) -> str:
        return entry.batch.log_dir or str(self.context.state_dir / "batch" / entry.name)

    async def _call(self, what: str, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """A blocking binding call in a thread; its errors as BackendError."""
        try:
            return await asyncio.to_thread(func, *args, **kwargs)
        except BackendError:
            raise
        except Exception as exc:  # htcondor2 raises HTCondorException and plain ones
            raise BackendError(f"schedd {what} failed: {type(exc).__name__}: {exc}") from None

    # -- the Backend interface ------------------------------------------------------

    async def submit(self, entry: EntryConfig, pilots: Sequence[PilotSubmission]) -> list[str]:
        submitted: list[str] = []
        try:
            check_credentials(entry)
            schedd = self.schedd(entry)
            log_dir = self.log_dir(entry)
            if log_dir not in self._prepared:
                await LocalShell().make_dirs(log_dir)
                self._prepared.add(log_dir)
            for array in pilot_arrays(pilots, entry.batch.array_size):
                description = submit_description(
                    entry, array, bootstrap=self.context.bootstrap, log_dir=log_dir
                )
                count = len(array.glidein_ids)
                result = await self._call(
                    "submit", schedd.submit, htcondor2.Submit(description), count=count
                )
                cluster = int(result.cluster())
                submitted += [f"{entry.name}/{cluster}.{proc}" for proc in range(count)]
        except BackendError as exc:
            raise BackendError(str(exc), submitted) from exc
        except (OSError, ValueError, TypeError) as exc:
            raise BackendError(f"{type(exc).__name__}: {exc}", submitted) from exc
        return submitted

    def _groups(
        self, backend_ids: Sequence[str]
    ) -> tuple[dict[tuple[object, ...], tuple[EntryConfig, dict[str, str]]], list[str]]:
        """Ids by (schedd, factory tag): {key: (an entry there, {"c.p": backend id})}."""
        groups: dict[tuple[object, ...], tuple[EntryConfig, dict[str, str]]] = {}
        bad: list[str] = []
        for backend_id in backend_ids:
            name, _, ref = backend_id.partition("/")
            entry = self.context.entries.get(name)
            if entry is None or entry.condor is None or not REF.match(ref):
                bad.append(backend_id)
                continue
            c = entry.condor
            groups.setdefault((c.schedd, c.collector, c.factory_tag), (entry, {}))[1][ref] = (
                backend_id
            )
        return groups, bad

    async def status(self, backend_ids: Sequence[str]) -> dict[str, PilotState]:
        groups, bad = self._groups(backend_ids)
        out = dict.fromkeys(bad, PilotState.unknown)
        for entry, refs in groups.values():
            tag = self._condor(entry).factory_tag
            try:
                ads = await self._call(
                    "query",
                    self.schedd(entry).query,
                    constraint=f'GlideWMS_Factory == "{tag}"',
                    projection=list(PROJECTION),
                )
            except BackendError as exc:
                log.warning("htcondor status at entry %s failed: %s", entry.name, exc)
                out.update(dict.fromkeys(refs.values(), PilotState.unknown))
                continue
            seen: dict[str, PilotState] = {}
            for ad in ads:
                ref = f"{ad.get('ClusterId')}.{ad.get('ProcId')}"
                seen[ref] = condor_state(ad)
                if ref in refs and seen[ref] is PilotState.held:
                    self.hold_reasons[refs[ref]] = str(ad.get("HoldReason") or "")
            for ref, backend_id in refs.items():
                out[backend_id] = seen.get(ref, PilotState.finished)  # left the queue: ended
        return out

    async def _act(self, action: htcondor2.JobAction, backend_ids: Sequence[str]) -> None:
        groups, _ = self._groups(backend_ids)
        for entry, refs in groups.values():
            await self._call(action.name.lower(), self.schedd(entry).act, action, sorted(refs))

    async def remove(self, backend_ids: Sequence[str]) -> None:
        try:
            await self._act(htcondor2.JobAction.Remove, backend_ids)
        except BackendError as exc:  # like qdel of ended jobs: logged, next cycle sees them
            log.warning("%s", exc)

    async def release(self, backend_ids: Sequence[str]) -> None:
        await self._act(htcondor2.JobAction.Release, backend_ids)

    async def adopt(self, entry: EntryConfig, glidein_ids: Sequence[str]) -> dict[str, str]:
        """Every proc carries its glidein id: one query finds the interrupted ones."""
        condor = self._condor(entry)
        constraint = (
            f'GlideWMS_Factory == "{condor.factory_tag}" && GlideWMS_Entry == "{entry.name}"'
        )
        projection = ["ClusterId", "ProcId", "GlideWMS_GlideinId"]
        ads = await self._call(
            "query", self.schedd(entry).query, constraint=constraint, projection=projection
        )
        wanted = set(glidein_ids)
        return {
            str(ad["GlideWMS_GlideinId"]): f"{entry.name}/{ad['ClusterId']}.{ad['ProcId']}"
            for ad in ads
            if str(ad.get("GlideWMS_GlideinId")) in wanted
        }

    async def logs(self, backend_id: str) -> PilotLogs:
        name, _, ref = backend_id.partition("/")
        entry = self.context.entries.get(name)
        if entry is None or not REF.match(ref):
            return PilotLogs("", "")
        shell, log_dir = LocalShell(), self.log_dir(entry)
        stdout = await shell.read_tail(f"{log_dir}/{ref}.out")
        stderr = await shell.read_tail(f"{log_dir}/{ref}.err")
        reason = self.hold_reasons.get(backend_id)
        if reason:
            stderr += f"\n[glidewms factory] HTCondor held this job: {reason}\n"
        return PilotLogs(stdout, stderr)


__all__ = ["HtcondorBackend", "condor_state", "submit_description"]
