"""Grid Engine backend (Son of Grid Engine, Univa/Altair GE): pilots as array jobs.

- submit: the array's script on qsub's standard input, `qsub -terse`; its
  directives (`#$ -t 1-N`, ...) are in the script. Tasks are 1-based: task i
  of job J is the job ref `J.i` (qdel's own `job.task` syntax).
- status: one `qstat -xml -g d` per shell and cycle (`-g d` lists every task
  of an array, pending ones included); refs qstat no longer lists are looked up
  with `qacct -j` (the accounting file, no database needed). A job in neither
  ended before it ever ran (deleted while pending) or long ago: finished.
- remove: `qdel` with the task refs.
- release: `qmod -cj` (clears an error state, `Eqw`) then `qrls` (a hold).
- adopt: each array is named `glidewms-<its first glidein id>` (that id
  starts with the entry's name), so a factory killed between `qsub` and
  storing the job id finds its pilots again in one `qstat -xml -g d` (see
  `BatchBackend.adopt`); an array that already ended by then is not found.

Grid Engine reports a state as a word of letters (`qw`, `hqw`, `Eqw`, `dr`,
`Rr`, `ts`...). Every letter is mapped explicitly in `LETTERS`, and the
pilot state of a word is the one of its strongest letter (`PRECEDENCE`): a
deleted, errored or held job is that before it is queued or running. A letter
not in the map makes the word `unknown` (and is logged).

Root may not submit (`min_uid`): set `batch.command_prefix` to run the
commands as the pilots' account (`[runuser, -u, pilots, --]`), or use the SSH
backend as that account.
"""

from __future__ import annotations

import logging
import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence

from glidewms.config.factory import EntryConfig
from glidewms.factory.backends.base import BackendError, PilotState
from glidewms.factory.backends.batch import BatchBackend
from glidewms.factory.backends.script import PilotArray, walltime
from glidewms.factory.backends.shell import Shell

log = logging.getLogger(__name__)

# Each letter Grid Engine prints in a job's state, and what it means for a pilot.
LETTERS: dict[str, PilotState] = {
    "d": PilotState.removed,  # deletion requested (qdel): on its way out
    "E": PilotState.held,  # error state (Eqw): will not run until cleared (qmod -cj)
    "h": PilotState.held,  # hold (user, operator, system or array dependency)
    "s": PilotState.held,  # suspended: allocated but does no work
    "S": PilotState.held,  # suspended by a subordinate queue
    "T": PilotState.held,  # suspended by a load threshold
    "r": PilotState.running,
    "t": PilotState.running,  # transferring to the execution host: starting
    "R": PilotState.queued,  # restarted (Rq, Rr): the other letters say where it is
    "q": PilotState.queued,
    "w": PilotState.queued,  # waiting
}
PRECEDENCE = (PilotState.removed, PilotState.held, PilotState.running, PilotState.queued)

REFS_PER_CALL = 200
NAME_MARK = "glidewms-"  # an array's name: the mark and its first glidein id
TERSE_ID = re.compile(r"^(\d+)(?:\.(\d+)-(\d+):(\d+))?$")


def sge_state(word: str) -> PilotState:
    """A qstat state word (`qw`, `hRwq`, `dr`...) as a PilotState."""
    seen = set()
    for letter in word.strip():
        mapped = LETTERS.get(letter)
        if mapped is None:
            log.warning("unknown Grid Engine job state %r (letter %r)", word, letter)
            return PilotState.unknown
        seen.add(mapped)
    for state in PRECEDENCE:
        if state in seen:
            return state
    log.warning("empty Grid Engine job state %r", word)
    return PilotState.unknown


def parse_qstat_xml(text: str) -> dict[str, PilotState]:
    """`qstat -xml -g d` -> {`JOB.TASK` (or `JOB` for a plain job): state}.

    A pending array not expanded by `-g d` (older versions) lists a task range
    such as `3-5:1`: each task of it gets the state.
    """
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise BackendError(f"qstat printed XML that does not parse: {exc}") from exc
    out: dict[str, PilotState] = {}
    for job in root.iter("job_list"):
        number = (job.findtext("JB_job_number") or "").strip()
        state = sge_state(job.findtext("state") or "")
        tasks = (job.findtext("tasks") or "").strip()
        if not number:
            continue
        if not tasks:
            out[number] = state
            continue
        for part in tasks.split(","):
            match = re.match(r"^(\d+)(?:-(\d+)(?::(\d+))?)?$", part)
            if match is None:
                log.warning("qstat task list %r not understood", tasks)
                continue
            first = int(match.group(1))
            last = int(match.group(2) or first)
            step = int(match.group(3) or 1)
            for task in range(first, last + 1, step):
                out[f"{number}.{task}"] = state
    return out


def parse_qacct(text: str) -> dict[str, PilotState]:
    """`qacct -j JOB` records -> {`JOB.TASK`: finished or failed}.

    A record whose `failed` is not 0 (the job could not start, or was killed:
    `100 : assumedly after job`) or whose exit status is not 0 is failed. When
    a job id appears more than once (ids reused after a spool reset), the last
    record, the newest, wins.
    """
    out: dict[str, PilotState] = {}
    for block in text.split("=" * 62):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            key, _, value = line.partition(" ")
            if key:
                fields[key] = value.strip()
        number = fields.get("jobnumber")
        if not number:
            continue
        task = fields.get("taskid", "undefined")
        ref = number if task in ("undefined", "0", "") else f"{number}.{task}"
        failed = fields.get("failed", "0").split(":")[0].strip()
        status = fields.get("exit_status", "0").split()[0] if fields.get("exit_status") else "0"
        ok = failed == "0" and status == "0"
        out[ref] = PilotState.finished if ok else PilotState.failed
    return out


def parse_marked_arrays(text: str, entry: str) -> dict[str, list[str]]:
    """`qstat -xml -g d` -> {first glidein id: `JOB.TASK` refs by task} of `entry`'s arrays."""
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise BackendError(f"qstat printed XML that does not parse: {exc}") from exc
    tasks: dict[str, set[tuple[int, str]]] = {}
    for job in root.iter("job_list"):
        name = (job.findtext("JB_name") or "").strip()
        number = (job.findtext("JB_job_number") or "").strip()
        if not name.startswith(f"{NAME_MARK}{entry}-") or not number:
            continue
        listed = parse_qstat_xml(f"<job_info>{ET.tostring(job, encoding='unicode')}</job_info>")
        for ref in listed:
            _, _, task = ref.partition(".")
            if task.isdigit():
                tasks.setdefault(name[len(NAME_MARK) :], set()).add((int(task), ref))
    return {first: [ref for _, ref in sorted(refs)] for first, refs in tasks.items()}


class SgeBackend(BatchBackend):
    kind = "sge"
    can_release = True
    task_index = "${SGE_TASK_ID:-0} - 1"
    job_ref = "${JOB_ID:-?}.${SGE_TASK_ID:-?}"

    def directives(self, entry: EntryConfig, array: PilotArray, log_dir: str) -> list[str]:
        batch = entry.batch
        lines = [
            f"-N {NAME_MARK}{array.glidein_ids[0]}",
            f"-t 1-{len(array.glidein_ids)}",
            f"-o {log_dir}/$JOB_ID.$TASK_ID.out",
            f"-e {log_dir}/$JOB_ID.$TASK_ID.err",
            "-S /bin/bash",
            "-r n",  # a pilot that lost its node is not restarted: the factory decides
            f"-l h_rt={walltime(entry.walltime)}",
        ]
        if isinstance(entry.cpus, int) and entry.cpus > 1:
            lines.append(f"-pe {batch.parallel_environment} {entry.cpus}")
        if entry.gpus:  # a consumable complex, named as the site configured it
            lines.append(f"-l {batch.gpu_complex}={entry.gpus}")
        return self.directive_lines(
            "#$", lines, batch, queue="-q {}", project="-P {}", account="-A {}"
        )

    async def submit_array(
        self, shell: Shell, entry: EntryConfig, script: str, count: int
    ) -> list[str]:
        result = await self.run_checked(shell, entry, ["qsub", "-terse"], stdin=script)
        match = TERSE_ID.match(result.stdout.strip().splitlines()[-1] if result.stdout else "")
        if match is None:
            raise BackendError(f"qsub printed no job id: {result.stdout.strip()!r}")
        return [f"{match.group(1)}.{task}" for task in range(1, count + 1)]

    async def query(
        self, shell: Shell, entry: EntryConfig, refs: Sequence[str]
    ) -> dict[str, PilotState]:
        timeout = entry.batch.command_timeout
        result = await self.run_checked(shell, entry, ["qstat", "-xml", "-g", "d"])
        listed = parse_qstat_xml(result.stdout)
        seen = {ref: listed[ref] for ref in refs if ref in listed}
        missing = [ref for ref in refs if ref not in seen]
        for job in sorted({ref.split(".")[0] for ref in missing}, key=int):
            argv = ["qacct", "-j", job]
            result = await shell.run(argv, timeout=timeout)
            if result.returncode == 0:  # rc 1: "job id N not found"
                seen.update({r: s for r, s in parse_qacct(result.stdout).items() if r in missing})
        for ref in missing:
            seen.setdefault(ref, PilotState.finished)  # never ran, or accounted long ago
        return seen

    async def cancel(self, shell: Shell, entry: EntryConfig, refs: Sequence[str]) -> None:
        await self.remove_in_chunks(shell, entry, ["qdel"], refs, REFS_PER_CALL)

    async def release_jobs(self, shell: Shell, entry: EntryConfig, refs: Sequence[str]) -> None:
        """An `E` state is cleared with `qmod -cj`, a hold with `qrls`; a pilot has one or
        the other, and either command complains about the jobs it does not apply to."""
        await self.remove_in_chunks(shell, entry, ["qmod", "-cj"], refs, REFS_PER_CALL)
        await self.remove_in_chunks(shell, entry, ["qrls"], refs, REFS_PER_CALL)

    async def find_arrays(self, shell: Shell, entry: EntryConfig) -> dict[str, list[str]]:
        result = await self.run_checked(shell, entry, ["qstat", "-xml", "-g", "d"])
        return parse_marked_arrays(result.stdout, entry.name)
