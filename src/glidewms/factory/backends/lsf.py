"""LSF backend (IBM Spectrum LSF): pilots as job arrays (`-J "name[1-N]"`).

- submit: the script on bsub's standard input (bsub reads its `#BSUB`
  directives there); it prints `Job <1234> is submitted to queue <q>.`.
  Element i (1-based) of job 1234 is the job ref `1234[i]`.
- status: `bjobs -a -noheader -o "jobid stat exit_code jobindex delimiter='|'"`
  for all the jobs of a cycle (`-a`: recently finished ones too). A ref bjobs
  does not know any more ended long ago: finished.
- remove: `bkill` with the refs; release: `bresume` of held (PSUSP) ones.
- adopt: each array carries the description `-Jd "glidewms:<its first
  glidein id>"`; one `bjobs -a` of all jobs finds them (`BatchBackend.adopt`).
- logs: `-o <log_dir>/%J.%I.out`, `-e <log_dir>/%J.%I.err`.

Every LSF job state is mapped in `STATE_MAP`. Tested against stand-in
bsub/bjobs/bkill (tests/components/pbs_lsf_standin.py) that print what LSF
prints; no LSF cluster can run here.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence

from glidewms.config.factory import EntryConfig
from glidewms.factory.backends.base import BackendError, PilotState
from glidewms.factory.backends.batch import BatchBackend, chunks
from glidewms.factory.backends.script import PilotArray
from glidewms.factory.backends.shell import Shell

log = logging.getLogger(__name__)

STATE_MAP: dict[str, PilotState] = {
    "PEND": PilotState.queued,
    "WAIT": PilotState.queued,  # chunk job member waiting to run
    "PROV": PilotState.queued,  # host being provisioned
    "PSUSP": PilotState.held,  # suspended while pending (bstop, or submitted with -H)
    "USUSP": PilotState.held,  # suspended by its user while running
    "SSUSP": PilotState.held,  # suspended by LSF (load, window)
    "RUN": PilotState.running,
    "DONE": PilotState.finished,
    "EXIT": PilotState.failed,  # non-zero exit, or killed (bkill)
    "ZOMBI": PilotState.failed,  # killed while its host was unreachable
    "UNKWN": PilotState.unknown,  # the host's sbatchd cannot be reached
}
SUBMITTED = re.compile(r"Job <(\d+)> is submitted")
FORMAT = "jobid stat exit_code jobindex delimiter='|'"
REFS_PER_CALL = 200
MARK = "glidewms:"  # job description: the first glidein id of the array
MARK_FORMAT = "jobid jobindex job_name job_description delimiter='|'"


def parse_marked_arrays(text: str, entry: str) -> dict[str, list[str]]:
    """`bjobs -o MARK_FORMAT` lines -> {first glidein id: refs by index} of `entry`'s arrays."""
    tasks: dict[str, list[tuple[int, str]]] = {}
    for line in text.splitlines():
        parts = [p.strip() for p in line.split("|")]
        if len(parts) < 4 or not parts[0].isdigit() or not parts[3].startswith(MARK):
            continue
        job, index, name = parts[0], parts[1], parts[2]
        if name.split("[")[0] != f"glidewms-{entry}" or not index.isdigit():
            continue
        tasks.setdefault(parts[3][len(MARK) :], []).append((int(index), f"{job}[{index}]"))
    return {first: [ref for _, ref in sorted(refs)] for first, refs in tasks.items()}


def lsf_state(word: str) -> PilotState:
    mapped = STATE_MAP.get(word.strip())
    if mapped is None:
        log.warning("unknown LSF job state %r", word)
        return PilotState.unknown
    return mapped


def parse_bjobs(text: str) -> dict[str, PilotState]:
    """`bjobs -noheader -o "jobid stat exit_code jobindex delimiter='|'"` -> {ref: state}."""
    out: dict[str, PilotState] = {}
    for line in text.splitlines():
        parts = [p.strip() for p in line.split("|")]
        if len(parts) < 4 or not parts[0].isdigit():
            continue
        job, state, index = parts[0], parts[1], parts[3]
        ref = f"{job}[{index}]" if index not in ("", "0", "-") else job
        out[ref] = lsf_state(state)
    return out


class LsfBackend(BatchBackend):
    kind = "lsf"
    can_release = True
    task_index = "${LSB_JOBINDEX:-1} - 1"
    job_ref = "${LSB_JOBID:-?}[${LSB_JOBINDEX:-?}]"

    def directives(self, entry: EntryConfig, array: PilotArray, log_dir: str) -> list[str]:
        batch = entry.batch
        lines = [
            f'-J "glidewms-{entry.name}[1-{len(array.glidein_ids)}]"',
            f'-Jd "{MARK}{array.glidein_ids[0]}"',
            f"-o {log_dir}/%J.%I.out",
            f"-e {log_dir}/%J.%I.err",
            f"-W {max(1, math.ceil(entry.walltime / 60))}",
        ]
        if isinstance(entry.cpus, int):
            lines.append(f"-n {entry.cpus}")
        if isinstance(entry.memory, int):
            lines.append(f'-R "rusage[mem={entry.memory}]"')
        if entry.gpus:
            lines.append(f'-gpu "num={entry.gpus}"')
        return self.directive_lines("#BSUB", lines, batch, queue="-q {}", account="-P {}")

    async def submit_array(
        self, shell: Shell, entry: EntryConfig, script: str, count: int
    ) -> list[str]:
        result = await self.run_checked(shell, entry, ["bsub"], stdin=script)
        match = SUBMITTED.search(result.stdout)
        if match is None:
            raise BackendError(f"bsub printed no job id: {result.stdout.strip()!r}")
        return [f"{match.group(1)}[{i}]" for i in range(1, count + 1)]

    async def query(
        self, shell: Shell, entry: EntryConfig, refs: Sequence[str]
    ) -> dict[str, PilotState]:
        jobs = sorted({ref.split("[")[0] for ref in refs}, key=int)
        seen: dict[str, PilotState] = {}
        for part in chunks(jobs, REFS_PER_CALL):
            argv = ["bjobs", "-a", "-noheader", "-o", FORMAT, *part]
            result = await shell.run(argv, timeout=entry.batch.command_timeout)
            if result.returncode != 0 and "is not found" not in result.stderr:
                raise BackendError(result.describe(argv))
            seen.update(parse_bjobs(result.stdout))
        return {ref: seen.get(ref, PilotState.finished) for ref in refs}

    async def cancel(self, shell: Shell, entry: EntryConfig, refs: Sequence[str]) -> None:
        await self.remove_in_chunks(shell, entry, ["bkill"], refs, REFS_PER_CALL)

    async def release_jobs(self, shell: Shell, entry: EntryConfig, refs: Sequence[str]) -> None:
        for part in chunks(list(refs), REFS_PER_CALL):
            await self.run_checked(shell, entry, ["bresume", *part])

    async def find_arrays(self, shell: Shell, entry: EntryConfig) -> dict[str, list[str]]:
        argv = ["bjobs", "-a", "-noheader", "-o", MARK_FORMAT]
        result = await shell.run(argv, timeout=entry.batch.command_timeout)
        # rc 255 with "No job found" / "No unfinished job found": nothing to adopt
        if result.returncode != 0 and "job found" not in result.stderr:
            raise BackendError(result.describe(argv))
        return parse_marked_arrays(result.stdout, entry.name)

    def log_names(self, entry: EntryConfig, ref: str) -> tuple[str, str]:
        match = re.match(r"^(\d+)\[(\d+)\]$", ref)
        stem = f"{match.group(1)}.{match.group(2)}" if match else f"{ref}.0"
        return f"{stem}.out", f"{stem}.err"
