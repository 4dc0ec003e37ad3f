"""Slurm backend: pilots as job arrays, one `sbatch` per array.

- submit: the array's script (data/pilot_array.sh) on sbatch's standard input,
  `sbatch --parsable`; task i of job J is the job ref `J_i`.
- status: one `squeue -h -r -t all` for all the arrays of a cycle (it also
  lists jobs that ended within Slurm's MinJobAge); refs it no longer knows are
  looked up in `sacct` (slurmdbd), and a job in neither has ended long ago
  (Slurm forgets jobs after MinJobAge): it counts as finished.
- remove: `scancel` with the task refs (SIGTERM, then SIGKILL after KillWait).
- release: `scontrol release` of held task refs.
- adopt: each array carries `--comment=glidewms:<its first glidein id>`, so a
  factory killed between `sbatch` and storing the job id finds its pilots
  again with one `squeue -n glidewms-<entry>` (see `BatchBackend.adopt`).

Every state Slurm can report is mapped explicitly in `STATE_MAP`; a state not
in the map is `unknown` (and logged), so a new Slurm version cannot silently
turn pilots into something they are not.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

from glidewms.config.factory import EntryConfig
from glidewms.factory.backends.base import BackendError, PilotState
from glidewms.factory.backends.batch import BatchBackend, chunks
from glidewms.factory.backends.script import PilotArray
from glidewms.factory.backends.shell import Shell

log = logging.getLogger(__name__)

STATE_MAP: dict[str, PilotState] = {
    "PENDING": PilotState.queued,
    "REQUEUED": PilotState.queued,
    "REQUEUE_FED": PilotState.queued,
    "CONFIGURING": PilotState.queued,  # allocated, nodes still booting
    "RESV_DEL_HOLD": PilotState.held,
    "REQUEUE_HOLD": PilotState.held,
    "SPECIAL_EXIT": PilotState.held,  # held after a special exit code
    "SUSPENDED": PilotState.held,  # allocated but stopped: does no work
    "STOPPED": PilotState.held,
    "RUNNING": PilotState.running,
    "COMPLETING": PilotState.running,  # processes may still be ending
    "RESIZING": PilotState.running,
    "SIGNALING": PilotState.running,
    "STAGE_OUT": PilotState.running,
    "COMPLETED": PilotState.finished,
    "CANCELLED": PilotState.removed,
    "REVOKED": PilotState.removed,  # federation: runs on another cluster instead
    "FAILED": PilotState.failed,
    "TIMEOUT": PilotState.failed,
    "NODE_FAIL": PilotState.failed,
    "BOOT_FAIL": PilotState.failed,
    "DEADLINE": PilotState.failed,
    "OUT_OF_MEMORY": PilotState.failed,
    "PREEMPTED": PilotState.failed,
}

# PENDING with one of these reasons is a hold, not a wait for resources.
HOLD_REASONS = frozenset({"JobHeldUser", "JobHeldAdmin", "held"})

REFS_PER_CALL = 500
COMMENT_MARK = "glidewms:"


def slurm_state(state: str, reason: str = "") -> PilotState:
    """A Slurm job state (`CANCELLED by 0` and `CANCELLED+` included) as a PilotState."""
    word = state.strip().split()[0].rstrip("+") if state.strip() else ""
    if word == "PENDING" and reason.strip() in HOLD_REASONS:
        return PilotState.held
    mapped = STATE_MAP.get(word)
    if mapped is None:
        log.warning("unknown Slurm job state %r", state)
        return PilotState.unknown
    return mapped


def parse_squeue(text: str) -> dict[str, PilotState]:
    """`squeue -h -r -o %i|%T|%r` lines -> {job ref: state}."""
    out: dict[str, PilotState] = {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) >= 2 and parts[0]:
            out[parts[0]] = slurm_state(parts[1], parts[2] if len(parts) > 2 else "")
    return out


def parse_sacct(text: str) -> dict[str, PilotState]:
    """`sacct -X -n -P -o JobID,State` lines -> {job ref: state}."""
    out: dict[str, PilotState] = {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) >= 2 and parts[0]:
            out[parts[0]] = slurm_state(parts[1])
    return out


DRAIN_SIGNAL_SECONDS = 120


def walltime_minutes(seconds: int) -> int:
    return max(1, math.ceil(seconds / 60))


def parse_marked_arrays(text: str) -> dict[str, list[str]]:
    """`squeue -h -r -o %i|%k` lines -> {first glidein id: task refs by task index}."""
    tasks: dict[str, list[tuple[int, str]]] = {}
    for line in text.splitlines():
        ref, _, comment = line.strip().partition("|")
        _, sep, task = ref.partition("_")
        if not comment.startswith(COMMENT_MARK) or not sep or not task.isdigit():
            continue
        tasks.setdefault(comment[len(COMMENT_MARK) :], []).append((int(task), ref))
    return {first: [ref for _, ref in sorted(refs)] for first, refs in tasks.items()}


class SlurmBackend(BatchBackend):
    kind = "slurm"
    can_release = True
    task_index = "${SLURM_ARRAY_TASK_ID:--1}"
    job_ref = "${SLURM_ARRAY_JOB_ID:-?}_${SLURM_ARRAY_TASK_ID:-?}"

    def directives(self, entry: EntryConfig, array: PilotArray, log_dir: str) -> list[str]:
        batch = entry.batch
        lines = [
            f"--job-name=glidewms-{entry.name}",
            f"--comment={COMMENT_MARK}{array.glidein_ids[0]}",
            f"--array=0-{len(array.glidein_ids) - 1}",
            f"--output={log_dir}/%A_%a.out",
            f"--error={log_dir}/%A_%a.err",
            f"--time={walltime_minutes(entry.walltime)}",
            "--nodes=1",
            "--ntasks=1",
        ]
        if entry.walltime >= 10 * DRAIN_SIGNAL_SECONDS:
            # SIGTERM to the batch script (not to srun's tasks, which srun would
            # SIGKILL) before the walltime, so the pilot drains and reports; not
            # on short pilots, as Slurm may signal up to a minute early
            lines.append(f"--signal=B:TERM@{DRAIN_SIGNAL_SECONDS}")
        if entry.cpus != "auto":
            lines.append(f"--cpus-per-task={entry.cpus}")
        else:
            lines.append("--exclusive")  # a whole node: the pilot finds out its size
        if entry.memory != "auto":
            lines.append(f"--mem={entry.memory}M")
        if entry.gpus:  # generic resources: the node's GPUs, bound to the job by Slurm
            lines.append(f"--gres=gpu:{entry.gpus}")
        return self.directive_lines(
            "#SBATCH", lines, batch, queue="--partition={}", account="--account={}"
        )

    async def submit_array(
        self, shell: Shell, entry: EntryConfig, script: str, count: int
    ) -> list[str]:
        result = await self.run_checked(shell, entry, ["sbatch", "--parsable"], stdin=script)
        job_id = result.stdout.strip().split(";")[0]
        if not job_id.isdigit():
            raise BackendError(f"sbatch printed no job id: {result.stdout.strip()!r}")
        return [f"{job_id}_{i}" for i in range(count)]

    async def query(
        self, shell: Shell, entry: EntryConfig, refs: Sequence[str]
    ) -> dict[str, PilotState]:
        jobs = sorted({ref.split("_")[0] for ref in refs})
        seen: dict[str, PilotState] = {}
        timeout = entry.batch.command_timeout
        for part in chunks(jobs, REFS_PER_CALL):
            argv = ["squeue", "-h", "-r", "-t", "all", "-o", "%i|%T|%r", "-j", ",".join(part)]
            result = await shell.run(argv, timeout=timeout)
            if result.returncode != 0 and "Invalid job id" not in result.stderr:
                raise BackendError(result.describe(argv))
            seen.update(parse_squeue(result.stdout))  # all ids unknown: rc 1, nothing listed
        for ref in refs:
            # Tasks never split from their array (e.g. cancelled while pending) share
            # the array's own record, listed under the bare job id.
            job = ref.split("_")[0]
            if ref not in seen and job in seen:
                seen[ref] = seen[job]
        missing = [ref for ref in refs if ref not in seen]
        if missing:
            seen.update(await self._accounting(shell, missing, timeout))
        for ref in refs:
            if ref not in seen:
                seen[ref] = PilotState.finished  # forgotten by Slurm: ended long ago
        return seen

    async def _accounting(
        self, shell: Shell, refs: Sequence[str], timeout: float
    ) -> dict[str, PilotState]:
        """Ended jobs Slurm's controller forgot, from slurmdbd when there is one."""
        out: dict[str, PilotState] = {}
        for part in chunks(list(refs), REFS_PER_CALL):
            argv = ["sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j", ",".join(part)]
            result = await shell.run(argv, timeout=timeout)
            if result.returncode != 0 or "accounting storage is disabled" in result.stderr:
                return out  # no accounting: squeue was all there is to know
            out.update(parse_sacct(result.stdout))
        return out

    async def release_jobs(self, shell: Shell, entry: EntryConfig, refs: Sequence[str]) -> None:
        for part in chunks(list(refs), REFS_PER_CALL):
            await self.run_checked(shell, entry, ["scontrol", "release", *part])

    async def find_arrays(self, shell: Shell, entry: EntryConfig) -> dict[str, list[str]]:
        argv = ["squeue", "-h", "-r", "-t", "all", "-n", f"glidewms-{entry.name}", "-o", "%i|%k"]
        result = await self.run_checked(shell, entry, argv)
        return parse_marked_arrays(result.stdout)

    async def cancel(self, shell: Shell, entry: EntryConfig, refs: Sequence[str]) -> None:
        await self.remove_in_chunks(shell, entry, ["scancel"], refs, REFS_PER_CALL)
