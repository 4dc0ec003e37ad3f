"""PBS backend (OpenPBS / PBS Professional): pilots as array jobs (`-J`).

- submit: the script on qsub's standard input. qsub prints `1234[].server`
  for an array and `1234.server` for a plain job (PBS refuses an array of one,
  so a single pilot is a plain job). Subjob i of array 1234 is the job ref
  `1234[i].server`, the id qstat and qdel use.
- status: `qstat -x -t -f -F json <arrays>` (`-x`: finished jobs too, from
  the server's job history; `-t`: every subjob). A ref qstat does not know any
  more ended long ago: finished.
- remove: `qdel` with the refs; release: `qrls` of held ones.
- adopt: each array carries `-v GLIDEWMS_MARK=<its first glidein id>`; one
  `qstat -x -t -f -F json` of all jobs finds the arrays named
  `glidewms-<entry>` and their subjobs (see `BatchBackend.adopt`).
- logs: `-o <log_dir>/` (a directory): PBS names the files
  `<job name>.o<sequence>[.<index>]` (and `.e` for stderr).

Every `job_state` letter is mapped in `STATE_MAP`; an ended job (F, X) is
finished when its Exit_status is 0, failed otherwise, and removed when it has
none (deleted before it ran).

Tested against stand-in qsub/qstat/qdel (tests/components/pbs_lsf_standin.py)
that print what OpenPBS prints; no PBS server can run here.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from typing import Any

from glidewms.config.factory import EntryConfig
from glidewms.factory.backends.base import BackendError, PilotState
from glidewms.factory.backends.batch import BatchBackend, chunks
from glidewms.factory.backends.script import PilotArray, walltime
from glidewms.factory.backends.shell import Shell

log = logging.getLogger(__name__)

STATE_MAP: dict[str, PilotState] = {
    "Q": PilotState.queued,
    "W": PilotState.queued,  # waiting for its execution time
    "T": PilotState.queued,  # being moved to a new location
    "M": PilotState.queued,  # moved to another server
    "H": PilotState.held,
    "S": PilotState.held,  # suspended by the server
    "U": PilotState.held,  # suspended: the workstation became busy
    "R": PilotState.running,
    "E": PilotState.running,  # exiting after having run
    "B": PilotState.running,  # an array with at least one subjob started
}
ENDED = frozenset({"F", "X"})  # finished (history), expired subjob
REFS_PER_CALL = 200
MARK = "GLIDEWMS_MARK"  # job variable: the first glidein id of the array
JOB_ID = re.compile(r"^(\d+)(\[\])?(\.[\w.-]+)?$")


def pbs_state(job: dict[str, Any]) -> PilotState:
    """One job (or subjob) of `qstat -f -F json` as a PilotState."""
    letter = str(job.get("job_state", "")).strip()
    if letter in ENDED:
        status = job.get("Exit_status")
        if status is None:
            return PilotState.removed
        return PilotState.finished if int(status) == 0 else PilotState.failed
    mapped = STATE_MAP.get(letter)
    if mapped is None:
        log.warning("unknown PBS job state %r", letter)
        return PilotState.unknown
    return mapped


def parse_qstat_json(text: str) -> dict[str, PilotState]:
    """`qstat -x -t -f -F json` -> {job id: state}; array parents (`1234[]`) skipped."""
    try:
        jobs = json.loads(text or "{}").get("Jobs") or {}
    except (ValueError, AttributeError) as exc:
        raise BackendError(f"qstat printed JSON that does not parse: {exc}") from exc
    return {job_id: pbs_state(job) for job_id, job in jobs.items() if "[]" not in job_id}


def parse_marked_arrays(text: str, entry: str) -> dict[str, list[str]]:
    """`qstat -x -t -f -F json` of all jobs -> {first glidein id: refs by index} of the
    jobs named glidewms-<entry> (array parents skipped, a plain job is its own ref)."""
    try:
        jobs = json.loads(text or "{}").get("Jobs") or {}
    except (ValueError, AttributeError) as exc:
        raise BackendError(f"qstat printed JSON that does not parse: {exc}") from exc
    tasks: dict[str, list[tuple[int, str]]] = {}
    for job_id, job in jobs.items():
        mark = (job.get("Variable_List") or {}).get(MARK)
        if "[]" in job_id or job.get("Job_Name") != f"glidewms-{entry}" or not mark:
            continue
        index = re.search(r"\[(\d+)\]", job_id)
        tasks.setdefault(str(mark), []).append((int(index.group(1)) if index else 0, job_id))
    return {first: [ref for _, ref in sorted(refs)] for first, refs in tasks.items()}


class PbsBackend(BatchBackend):
    kind = "pbs"
    can_release = True
    task_index = "${PBS_ARRAY_INDEX:-0}"
    job_ref = "${PBS_JOBID:-?}"

    def directives(self, entry: EntryConfig, array: PilotArray, log_dir: str) -> list[str]:
        batch = entry.batch
        select = "select=1"
        if isinstance(entry.cpus, int):
            select += f":ncpus={entry.cpus}"
        if isinstance(entry.memory, int):
            select += f":mem={entry.memory}mb"
        if entry.gpus:
            select += f":ngpus={entry.gpus}"
        lines = [
            f"-N glidewms-{entry.name}",
            f"-v {MARK}={array.glidein_ids[0]}",
            f"-o {log_dir}/",
            f"-e {log_dir}/",
            "-r n",
            f"-l walltime={walltime(entry.walltime)}",
            f"-l {select}",
        ]
        if len(array.glidein_ids) > 1:
            lines.append(f"-J 0-{len(array.glidein_ids) - 1}")
        return self.directive_lines(
            "#PBS", lines, batch, queue="-q {}", project="-P {}", account="-A {}"
        )

    async def submit_array(
        self, shell: Shell, entry: EntryConfig, script: str, count: int
    ) -> list[str]:
        result = await self.run_checked(shell, entry, ["qsub"], stdin=script)
        printed = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
        match = JOB_ID.match(printed)
        if match is None or bool(match.group(2)) != (count > 1):
            raise BackendError(f"qsub printed no job id for {count} pilot(s): {printed!r}")
        number, server = match.group(1), match.group(3) or ""
        if count == 1:
            return [f"{number}{server}"]
        return [f"{number}[{i}]{server}" for i in range(count)]

    async def query(
        self, shell: Shell, entry: EntryConfig, refs: Sequence[str]
    ) -> dict[str, PilotState]:
        jobs = sorted({re.sub(r"\[\d+\]", "[]", ref) for ref in refs})
        seen: dict[str, PilotState] = {}
        for part in chunks(jobs, REFS_PER_CALL):
            argv = ["qstat", "-x", "-t", "-f", "-F", "json", *part]
            result = await shell.run(argv, timeout=entry.batch.command_timeout)
            if result.returncode != 0 and "Unknown Job Id" not in result.stderr:
                raise BackendError(result.describe(argv))
            seen.update(parse_qstat_json(result.stdout))  # unknown ones: listed on stderr
        return {ref: seen.get(ref, PilotState.finished) for ref in refs}

    async def cancel(self, shell: Shell, entry: EntryConfig, refs: Sequence[str]) -> None:
        await self.remove_in_chunks(shell, entry, ["qdel"], refs, REFS_PER_CALL)

    async def release_jobs(self, shell: Shell, entry: EntryConfig, refs: Sequence[str]) -> None:
        for part in chunks(list(refs), REFS_PER_CALL):
            await self.run_checked(shell, entry, ["qrls", *part])

    async def find_arrays(self, shell: Shell, entry: EntryConfig) -> dict[str, list[str]]:
        result = await self.run_checked(shell, entry, ["qstat", "-x", "-t", "-f", "-F", "json"])
        return parse_marked_arrays(result.stdout, entry.name)

    def log_names(self, entry: EntryConfig, ref: str) -> tuple[str, str]:
        match = re.match(r"^(\d+)(?:\[(\d+)\])?", ref)
        number, index = (match.group(1), match.group(2)) if match else (ref, None)
        suffix = f"{number}.{index}" if index is not None else number
        name = f"glidewms-{entry.name}"
        return f"{name}.o{suffix}", f"{name}.e{suffix}"
