"""STAND-IN for an HTCondor schedd, as the `htcondor2.Schedd` object the bindings give.

No schedd can run on this machine (the `htcondor` wheel has the bindings but
no daemons), so the HTCondor backend is tested against this object. It
honours exactly the three calls the backend makes, with their real types:

- `submit(htcondor2.Submit, count)` -> an object with `cluster()`: the real
  `Submit` is read command by command and turned into one job ad (a real
  `classad2.ClassAd`) per proc, expanding the submit macros the backend uses
  (`$(Cluster)`, `$(Process)`, `$(DOLLAR)`, `$CHOICE(Process, a, b, ...)`);
  `+Attr = value` becomes the attribute, the usual commands their job
  attributes (`executable` -> Cmd, `arguments` -> Arguments, `output` -> Out);
- `query(constraint, projection)` -> ClassAds of the jobs matching the
  constraint (evaluated by the real ClassAd library), projected;
- `act(htcondor2.JobAction, ["c.p", ...])` -> Remove and Release, with the
  ClassAd of counts the real call returns.

What it does not model: the gridmanager and the CE (jobs move only when a
test moves them with `set_status`, or runs one with `run`), users, spooling,
LeaveJobInQueue timing (a test drops a job with `forget`). `run` starts a
job's executable the way a worker node would (input files copied into a
fresh sandbox, the Environment set, `Arguments` split by HTCondor's rules), so
a test sees that the description the backend wrote really starts a pilot.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import htcondor2

from glidewms import classads

# Submit commands and the job attribute each becomes (the ones the backend writes).
COMMANDS = {
    "universe": "JobUniverse",
    "grid_resource": "GridResource",
    "executable": "Cmd",
    "arguments": "Arguments",
    "environment": "Environment",
    "output": "Out",
    "error": "Err",
    "transfer_input_files": "TransferInput",
    "should_transfer_files": "ShouldTransferFiles",
    "when_to_transfer_output": "WhenToTransferOutput",
    "request_cpus": "RequestCpus",
    "request_memory": "RequestMemory",
    "request_disk": "RequestDisk",
    "x509userproxy": "x509userproxy",
    "scitokens_file": "ScitokensFile",
    "batch_queue": "BatchQueue",
    "leave_in_queue": "LeaveJobInQueue",
}
EXPRESSIONS = {"leave_in_queue", "request_cpus", "request_memory", "request_disk"}
UNIVERSES = {"vanilla": 5, "grid": 9, "local": 12}
CHOICE = re.compile(r"\$CHOICE\(\s*Process\s*,([^)]*)\)")


@dataclass
class StandinSubmitResult:
    """What `Schedd.submit` returns (`htcondor2.SubmitResult`'s methods used)."""

    _cluster: int
    _count: int

    def cluster(self) -> int:
        return self._cluster

    def first_proc(self) -> int:
        return 0

    def num_procs(self) -> int:
        return self._count


def expand(value: str, cluster: int, proc: int) -> str:
    """The submit macros the backend uses, for one proc."""

    def choose(match: re.Match[str]) -> str:
        items = [item.strip() for item in match.group(1).split(",")]
        if proc >= len(items):
            raise htcondor2.HTCondorException(f"$CHOICE index {proc} out of range")
        return items[proc]

    value = CHOICE.sub(choose, value)
    for name, number in (
        ("Cluster", cluster),
        ("ClusterId", cluster),
        ("Process", proc),
        ("ProcId", proc),
    ):
        value = value.replace(f"$({name})", str(number))
    return value.replace("$(DOLLAR)", "$")


def split_new_syntax(value: str) -> list[str]:
    """HTCondor's "new syntax" of `arguments` (and environment words): the whole in
    double quotes ("" is a literal "), words split on blanks, '...' groups ('' is ')."""
    text = value.strip()
    if not (text.startswith('"') and text.endswith('"')):
        raise ValueError(f"not new-syntax arguments: {value!r}")
    text = text[1:-1].replace('""', '"')
    words: list[str] = []
    word: list[str] | None = None
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "'":
            word = word if word is not None else []
            end = i + 1
            while True:
                end = text.index("'", end)
                if text[end + 1 : end + 2] == "'":
                    word.append(text[i + 1 : end] + "'")
                    i, end = end + 1, end + 2
                    continue
                word.append(text[i + 1 : end])
                i = end + 1
                break
            continue
        if ch.isspace():
            if word is not None:
                words.append("".join(word))
                word = None
        else:
            word = (word or []) + [ch]
        i += 1
    if word is not None:
        words.append("".join(word))
    return words


class StandinSchedd:
    """An in-memory job queue behind the `htcondor2.Schedd` calls (module docstring)."""

    def __init__(self) -> None:
        self.jobs: dict[str, classads.ClassAd] = {}  # "c.p" -> job ad
        self.calls: list[str] = []  # "submit", "query", "act Remove" ... in order
        self.fail_submit: str | None = None  # the next submit raises this
        self.down = False  # every call raises, as when the schedd does not answer
        self._next_cluster = 41
        self._lock = threading.Lock()  # the backend calls from worker threads

    # -- the three calls ---------------------------------------------------------------

    def submit(self, description: htcondor2.Submit, count: int = 0) -> StandinSubmitResult:
        assert isinstance(description, htcondor2.Submit), "the real Submit object"
        with self._lock:
            self.calls.append("submit")
            self._check()
            if self.fail_submit is not None:
                message, self.fail_submit = self.fail_submit, None
                raise htcondor2.HTCondorException(message)
            commands = dict(description)
            self._next_cluster += 1
            cluster, n = self._next_cluster, max(1, count)
            for proc in range(n):
                self.jobs[f"{cluster}.{proc}"] = self._job_ad(commands, cluster, proc)
            return StandinSubmitResult(cluster, n)

    def query(
        self,
        constraint: str = "True",
        projection: list[str] | None = None,
    ) -> list[classads.ClassAd]:
        with self._lock:
            self.calls.append("query")
            self._check()
            out = []
            for ad in self.jobs.values():
                if classads.constraint_matches(constraint, ad):
                    keys = projection or list(ad.keys())
                    out.append(classads.ClassAd({k: ad[k] for k in keys if k in ad}))
            return out

    def act(self, action: htcondor2.JobAction, job_spec: list[str]) -> classads.ClassAd:
        with self._lock:
            self.calls.append(f"act {action.name}")
            self._check()
            done = missing = bad = 0
            for ref in job_spec:
                ad = self.jobs.get(ref)
                if ad is None:
                    missing += 1
                elif action is htcondor2.JobAction.Remove and ad["JobStatus"] not in (3, 4):
                    self._move(ad, 3)
                    done += 1
                elif action is htcondor2.JobAction.Release and ad["JobStatus"] == 5:
                    self._move(ad, 1)
                    ad.pop("HoldReason", None)
                    done += 1
                else:
                    bad += 1
            return classads.ClassAd(
                {"TotalSuccess": done, "TotalJobDoesNotExist": missing, "TotalBadStatus": bad}
            )

    # -- what tests do --------------------------------------------------------------------

    def set_status(self, ref: str, status: int, **attributes: Any) -> None:
        """Move a job, as the gridmanager would (HoldReason=..., ExitCode=...)."""
        with self._lock:
            ad = self.jobs[ref]
            self._move(ad, status)
            for key, value in attributes.items():
                ad[key] = value

    def forget(self, ref: str) -> None:
        """The job leaves the queue (LeaveJobInQueue became false)."""
        with self._lock:
            del self.jobs[ref]

    def refs(self, **attributes: Any) -> list[str]:
        """The jobs whose attributes have these values, in submission order."""
        return [
            ref
            for ref, ad in self.jobs.items()
            if all(ad.get(k) == v for k, v in attributes.items())
        ]

    def run(self, ref: str, sandbox: Path, timeout: float = 60.0) -> int:
        """Run the job as a worker node would; its exit code (also set as ExitCode,
        JobStatus 4). Output goes to the job's Out and Err files."""
        ad = self.jobs[ref]
        sandbox.mkdir(parents=True)
        for name in str(ad.get("TransferInput", "")).split(","):
            if name.strip():
                shutil.copy2(name.strip(), sandbox / Path(name.strip()).name)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(sandbox),
            "_CONDOR_SCRATCH_DIR": str(sandbox),
        }
        for word in split_new_syntax(str(ad.get("Environment", '""'))):
            key, _, value = word.partition("=")
            env[key] = value
        argv = [str(ad["Cmd"]), *split_new_syntax(str(ad.get("Arguments", '""')))]
        with open(str(ad["Out"]), "wb") as out, open(str(ad["Err"]), "wb") as err:
            self.set_status(ref, 2)
            code = subprocess.run(
                argv,
                cwd=sandbox,
                env=env,
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                timeout=timeout,
            ).returncode
        self.set_status(ref, 4, ExitCode=code)
        return code

    # -- inside ------------------------------------------------------------------------------

    def _check(self) -> None:
        if self.down:
            raise htcondor2.HTCondorException("Failed to connect to schedd (stand-in is down)")

    @staticmethod
    def _move(ad: classads.ClassAd, status: int) -> None:
        ad["JobStatus"] = status
        ad["EnteredCurrentStatus"] = int(time.time())

    @staticmethod
    def _job_ad(commands: dict[str, str], cluster: int, proc: int) -> classads.ClassAd:
        ad = classads.ClassAd(
            {
                "ClusterId": cluster,
                "ProcId": proc,
                "JobStatus": 1,
                "QDate": int(time.time()),
                "EnteredCurrentStatus": int(time.time()),
            }
        )
        for key, raw in commands.items():
            value = expand(raw, cluster, proc)
            if key.startswith("+") or key.startswith("MY."):
                ad[key.lstrip("+").removeprefix("MY.")] = classads.parse_expr(value)
            elif key == "universe":
                ad["JobUniverse"] = UNIVERSES[value]
            elif key in EXPRESSIONS:
                ad[COMMANDS[key]] = classads.parse_expr(value)
            elif key in COMMANDS:
                ad[COMMANDS[key]] = value
            else:
                raise htcondor2.HTCondorException(f"stand-in: submit command {key!r} not modelled")
        return ad
