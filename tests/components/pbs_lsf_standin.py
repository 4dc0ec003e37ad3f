"""STAND-IN for the PBS (qsub/qstat/qdel) and LSF (bsub/bjobs/bkill) commands.

No PBS server or LSF cluster can run on this machine, so the PBS and LSF
backends are tested against this stand-in: one Python program that answers
as the real commands do (the output formats of OpenPBS 19+/PBS Pro and of
LSF 10) and really runs the submitted job scripts as local processes, one per
array element, with the batch system's environment variables
(PBS_ARRAY_INDEX/PBS_JOBID, LSB_JOBINDEX/LSB_JOBID) and output files where
the directives put them. What it models and what it does not:

- directives read from the script on standard input (`#PBS -J 0-3`, `-o DIR/`,
  `-h`, `-v NAME=value`; `#BSUB -J "name[1-4]"`, `-o DIR/%J.%I.out`, `-H`,
  `-Jd "description"`), everything else in the directives ignored (no
  resources, no queues);
- held elements released by `qrls` / `bresume`; `qstat` and `bjobs` with no
  job id list every job (`qstat -f -F json` with `Variable_List`, `bjobs -o`
  with the fields asked for: jobid stat exit_code jobindex job_name
  job_description);
- `STANDIN_SLOTS` elements run at once, the others wait (state Q / PEND) and
  start on a later command (no scheduler daemon);
- ended elements are remembered (qstat -x / bjobs -a), with exit status;
- no users, no servers, no accounting.

State lives in `$STANDIN_STATE` (one JSON file per job). Installed on PATH by
`install(bin_dir, state_dir)` as six small wrapper scripts.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

COMMANDS = ("qsub", "qstat", "qdel", "qrls", "bsub", "bjobs", "bkill", "bresume")
SERVER = "standin"


def install(bin_dir: Path, state_dir: Path, slots: int = 2) -> dict[str, str]:
    """Put the six commands into `bin_dir`; the environment the batch commands need."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    state_dir.mkdir(parents=True, exist_ok=True)
    for name in COMMANDS:
        path = bin_dir / name
        path.write_text(
            f"#!/bin/sh\n# STAND-IN {name} (tests/components/pbs_lsf_standin.py)\n"
            f"exec {shlex.quote(sys.executable)} {shlex.quote(__file__)} {name} "
            '"$@"\n'
        )
        path.chmod(0o755)
    return {
        "PATH": f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "STANDIN_STATE": str(state_dir),
        "STANDIN_SLOTS": str(slots),
    }


# -- state --------------------------------------------------------------------------


def state_dir() -> Path:
    return Path(os.environ["STANDIN_STATE"])


def load(job: str) -> dict[str, Any] | None:
    path = state_dir() / f"{job}.json"
    return json.loads(path.read_text()) if path.exists() else None


def save(job: dict[str, Any]) -> None:
    path = state_dir() / f"{job['id']}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(job))
    tmp.replace(path)


def all_jobs() -> list[dict[str, Any]]:
    return [
        json.loads(p.read_text())
        for p in sorted(state_dir().glob("*.json"), key=lambda p: int(p.stem))
    ]


def next_id() -> str:
    counter = state_dir() / "counter"
    n = int(counter.read_text()) + 1 if counter.exists() else 100
    counter.write_text(str(n))
    return str(n)


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def refresh() -> None:
    """Note ended elements and start waiting ones while slots are free (the 'scheduler')."""
    jobs = all_jobs()
    running = 0
    for job in jobs:
        for task in job["tasks"].values():
            if task["state"] == "running":
                exit_file = Path(task["exit_file"])
                if exit_file.exists() and exit_file.read_text().strip():
                    task["state"], task["exit"] = "ended", int(exit_file.read_text())
                elif not alive(task["pid"]):
                    task["state"], task["exit"] = "ended", 271  # killed without a word
                else:
                    running += 1
        save(job)
    slots = int(os.environ.get("STANDIN_SLOTS", "2"))
    for job in jobs:
        for index, task in job["tasks"].items():
            if task["state"] == "waiting" and running < slots:
                start(job, index, task)
                running += 1
        save(job)


def start(job: dict[str, Any], index: str, task: dict[str, Any]) -> None:
    env = dict(os.environ)
    if job["kind"] == "pbs":
        env.update(PBS_JOBID=task["ref"], PBS_JOBNAME=job["name"])
        if job["array"]:
            env["PBS_ARRAY_INDEX"] = index
    else:
        env.update(LSB_JOBID=job["id"], LSB_JOBINDEX=index, LSB_JOBNAME=job["name"])
    out, err, exit_file = task["out"], task["err"], task["exit_file"]
    wrapper = 'bash "$1" > "$2" 2> "$3"; echo $? > "$4"'
    proc = subprocess.Popen(
        ["sh", "-c", wrapper, "job", job["script"], out, err, exit_file],
        env=env,
        start_new_session=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    task.update(state="running", pid=proc.pid)


# -- submission ---------------------------------------------------------------------


def directives(script: str, prefix: str) -> list[list[str]]:
    found = []
    for line in script.splitlines():
        if line.startswith(prefix):
            found.append(shlex.split(line[len(prefix) :]))
    return found


def submit(kind: str, script: str) -> dict[str, Any]:
    job_id = next_id()
    held = False
    variables: dict[str, str] = {}
    description = ""
    if kind == "pbs":
        name, out_dir, indices, array = "STDIN", ".", ["0"], False
        for words in directives(script, "#PBS"):
            option, value = words[0], (words[1] if len(words) > 1 else "")
            if option == "-N":
                name = value
            elif option == "-o":
                out_dir = value.rstrip("/")
            elif option == "-h":
                held = True
            elif option == "-v":
                for pair in value.split(","):
                    key, _, item = pair.partition("=")
                    variables[key] = item
            elif option == "-J":
                first, last = (int(x) for x in value.split("-"))
                if last <= first:
                    sys.exit("qsub: Array job range is invalid")  # PBS: no array of one
                indices, array = [str(i) for i in range(first, last + 1)], True
        tasks = {}
        for i in indices:
            ref = f"{job_id}[{i}].{SERVER}" if array else f"{job_id}.{SERVER}"
            suffix = f"{job_id}.{i}" if array else job_id
            tasks[i] = {
                "ref": ref,
                "out": f"{out_dir}/{name}.o{suffix}",
                "err": f"{out_dir}/{name}.e{suffix}",
            }
    else:
        name, out, err, indices, array = "STDIN", "%J.out", "%J.err", ["0"], False
        for words in directives(script, "#BSUB"):
            option, value = words[0], (words[1] if len(words) > 1 else "")
            if option == "-J":
                match = re.match(r"^(.*)\[(\d+)-(\d+)\]$", value)
                if match:
                    name, array = match.group(1), True
                    indices = [str(i) for i in range(int(match.group(2)), int(match.group(3)) + 1)]
                else:
                    name = value
            elif option == "-o":
                out = value
            elif option == "-e":
                err = value
            elif option == "-H":
                held = True
            elif option == "-Jd":
                description = value
        tasks = {
            i: {
                "ref": f"{job_id}[{i}]" if array else job_id,
                "out": out.replace("%J", job_id).replace("%I", i),
                "err": err.replace("%J", job_id).replace("%I", i),
            }
            for i in indices
        }
    script_path = state_dir() / f"{job_id}.sh"
    script_path.write_text(script)
    for i, task in tasks.items():
        task.update(
            state="held" if held else "waiting",
            pid=0,
            exit=None,
            exit_file=str(state_dir() / f"{job_id}.{i}.exit"),
        )
    job = {
        "id": job_id,
        "kind": kind,
        "name": name,
        "array": array,
        "script": str(script_path),
        "tasks": tasks,
        "submitted": time.time(),
        "variables": variables,
        "description": description,
    }
    save(job)
    refresh()
    return job


# -- the commands -------------------------------------------------------------------

PBS_STATE = {"waiting": "Q", "held": "H", "running": "R"}
LSF_STATE = {"waiting": "PEND", "held": "PSUSP", "running": "RUN"}


def find(ref: str) -> tuple[dict[str, Any], list[str]] | None:
    """The job of a PBS/LSF id (`1234`, `1234[]`, `1234[5]`, with `.server`) and its tasks."""
    match = re.match(r"^(\d+)(?:\[(\d*)\])?(?:\.[\w.-]+)?$", ref)
    if match is None:
        return None
    job = load(match.group(1))
    if job is None:
        return None
    index = match.group(2)
    return job, (list(job["tasks"]) if not index else [index] if index in job["tasks"] else [])


def qstat(args: list[str]) -> int:
    ids = [a for a in args if not a.startswith("-") and a != "json"]
    refresh()
    if not ids:
        ids = [job["id"] for job in all_jobs() if job["kind"] == "pbs"]
    jobs: dict[str, Any] = {}
    code = 0
    for ref in ids:
        found = find(ref)
        if found is None:
            print(f"qstat: Unknown Job Id {ref}", file=sys.stderr)
            code = 153
            continue
        job, indices = found
        if job["array"]:
            jobs[f"{job['id']}[].{SERVER}"] = {
                "Job_Name": job["name"],
                "job_state": "B",
                "array": "True",
            }
        for i in indices:
            task = job["tasks"][i]
            info: dict[str, Any] = {
                "Job_Name": job["name"],
                "queue": "workq",
                "Variable_List": job.get("variables", {}),
            }
            if task["state"] in ("ended", "deleted"):
                info["job_state"] = "F" if not job["array"] else "X"
                if task["exit"] is not None and task["state"] == "ended":
                    info["Exit_status"] = task["exit"]
            else:
                info["job_state"] = PBS_STATE[task["state"]]
            if job["array"]:
                info["array_index"] = int(i)
            jobs[task["ref"]] = info
    print(
        json.dumps(
            {
                "timestamp": int(time.time()),
                "pbs_version": "19.1.3 (stand-in)",
                "pbs_server": SERVER,
                "Jobs": jobs,
            },
            indent=4,
        )
    )
    return code


def bjobs(args: list[str]) -> int:
    ids = []
    fields = ["jobid", "stat", "exit_code", "jobindex"]
    skip = False
    for a in args:
        if skip:
            skip = False
            fields = a.split("delimiter=")[0].split()
        elif a == "-o":
            skip = True
        elif not a.startswith("-"):
            ids.append(a)
    refresh()
    if not ids:
        ids = [job["id"] for job in all_jobs() if job["kind"] == "lsf"]
        if not ids:
            print("No job found", file=sys.stderr)
            return 255
    code = 0
    for ref in ids:
        found = find(ref)
        if found is None:
            print(f"Job <{ref}> is not found", file=sys.stderr)
            code = 255
            continue
        job, indices = found
        for i in indices:
            task = job["tasks"][i]
            if task["state"] in ("ended", "deleted"):
                state = "DONE" if task["exit"] == 0 and task["state"] == "ended" else "EXIT"
                exit_code = "-" if task["exit"] in (0, None) else str(task["exit"])
            else:
                state, exit_code = LSF_STATE[task["state"]], "-"
            index = i if job["array"] else "0"
            values = {
                "jobid": job["id"],
                "stat": state,
                "exit_code": exit_code,
                "jobindex": index,
                "job_name": f"{job['name']}[{index}]",
                "job_description": job.get("description") or "-",
            }
            print("|".join(values[f] for f in fields))
    return code


def release(args: list[str], kind: str) -> int:
    """qrls / bresume: held elements wait for a slot again."""
    code = 0
    for ref in [a for a in args if not a.startswith("-")]:
        found = find(ref)
        if found is None:
            print(
                f"qrls: Unknown Job Id {ref}" if kind == "pbs" else f"{ref}: No such job",
                file=sys.stderr,
            )
            code = 1 if kind == "pbs" else 255
            continue
        job, indices = found
        for i in indices:
            if job["tasks"][i]["state"] == "held":
                job["tasks"][i]["state"] = "waiting"
            elif kind == "lsf":
                print(f"Job <{job['tasks'][i]['ref']}>: The job was not suspended", file=sys.stderr)
                code = 255
        save(job)
    refresh()
    return code


def delete(args: list[str], kind: str) -> int:
    code = 0
    for ref in [a for a in args if not a.startswith("-")]:
        found = find(ref)
        if found is None:
            said = f"qdel: Unknown Job Id {ref}" if kind == "pbs" else f"{ref}: No such job"
            print(said, file=sys.stderr)
            code = 1 if kind == "pbs" else 255
            continue
        job, indices = found
        for i in indices:
            task = job["tasks"][i]
            if task["state"] == "running":
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(task["pid"], signal.SIGTERM)
            if task["state"] in ("running", "waiting", "held"):
                task["state"], task["exit"] = "deleted", None
                if kind == "lsf":
                    print(f"Job <{task['ref']}> is being terminated")
        save(job)
    return code


def main(argv: list[str]) -> int:
    command, args = argv[0], argv[1:]
    if command in ("qsub", "bsub"):
        job = submit("pbs" if command == "qsub" else "lsf", sys.stdin.read())
        if command == "qsub":
            print(f"{job['id']}[].{SERVER}" if job["array"] else f"{job['id']}.{SERVER}")
        else:
            print(f"Job <{job['id']}> is submitted to queue <normal>.")
        return 0
    if command == "qstat":
        return qstat(args)
    if command == "bjobs":
        return bjobs(args)
    if command in ("qrls", "bresume"):
        return release(args, "pbs" if command == "qrls" else "lsf")
    if command in ("qdel", "bkill"):
        return delete(args, "pbs" if command == "qdel" else "lsf")
    print(f"stand-in: unknown command {command}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
