"""`glidewms up` and `glidewms demo`: the whole system on one machine.

The demo only submits jobs and watches. Pilots appear because the frontend
sees demand and asks the factory, and they leave by themselves once idle;
the demo never starts or stops a pilot.
"""

from __future__ import annotations

import shutil
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from glidewms.cli.literal import markup_safe
from glidewms.client import ClientError, ClientSettings, PoolClient
from glidewms.launcher import Installation, LaunchError, Options
from glidewms.security.tls import client_context
from glidewms.submit import load_submit

console = Console(highlight=False)
MARKER = ".glidewms-demo"
FINISHED = {"finished", "failed", "removed"}

JOB_SCRIPT = """#!/bin/sh
# A demo job: says where it runs, works a little, and leaves an output file.
n="$1"
echo "job $n running in glidein ${GLIDEIN_Id:-?} at site ${GLIDEIN_Site:-?}"
sleep "$2"
echo "result of job $n: $((n * n))" > "result_$n.txt"
echo "job $n done"
"""

SUBMIT = """# The demo workload: {n} short jobs, each writing stdout and one output file.
executable            = demo_job.sh
arguments             = $(Process) {seconds}
output                = job_$(Process).out
error                 = job_$(Process).err
transfer_output_files = result_$(Process).txt
request_cpus          = 1
request_memory        = 64
request_disk          = 10MB
queue {n}
"""


def run_up(options: Options) -> int:
    inst = Installation(options)
    inst.prepare()
    try:
        inst.start(on_step=lambda s: console.print(f"  {markup_safe(s)}"))
    except LaunchError as exc:
        console.print(f"[red]error:[/red] {markup_safe(exc)}")
        inst.stop()
        return 1
    root = inst.root
    ca_line = f"\n  export GLIDEWMS_CA_FILE={inst.ca_file}" if inst.ca_file else ""
    web = inst.services.get("web")
    console_line = (
        f"\n  console   {web.url}   (log in with a token from {root}/tokens/)" if web else ""
    )
    console.print(f"""
[bold]glidewms is up[/bold] (state in {root})
  pool      {inst.services["pool"].url}   (API docs: {inst.services["pool"].url}/docs)
  factory   {inst.services["factory"].url}
  frontend  {inst.services["frontend"].url}{console_line}
  configs   {root}/config/   logs {root}/logs/   tokens {root}/tokens/

Submit from this directory (the client reads {root}/client.json), or elsewhere after
  export GLIDEWMS_POOL_URL={inst.services["pool"].url}
  export GLIDEWMS_TOKEN_FILE={inst.token_file("user")}{ca_line}
then: glidewms submit job.sub; glidewms q; glidewms history; glidewms fetch 1.0
Ctrl-C stops the services.""")
    stop = False

    def on_signal(*_: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    try:
        while not stop:
            for name in inst.restart_dead():
                console.print(
                    f"[yellow]the {name} had stopped: started again on "
                    f"{markup_safe(inst.services[name].url)}[/yellow]"
                )
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    except LaunchError as exc:
        console.print(f"[red]error:[/red] {markup_safe(exc)}")
        inst.stop()
        return 1
    console.print("stopping…")
    inst.stop()
    return 0


def write_workload(directory: Path, jobs: int, job_seconds: float) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    script = directory / "demo_job.sh"
    script.write_text(JOB_SCRIPT)
    script.chmod(0o755)
    sub = directory / "demo.sub"
    sub.write_text(SUBMIT.format(n=jobs, seconds=job_seconds))
    return sub


class Watcher:
    """Reads job and pilot counts for the progress display."""

    def __init__(self, inst: Installation, client: PoolClient) -> None:
        self.client = client
        token = inst.token_file("admin").read_text().strip()
        self.factory = httpx.Client(
            base_url=inst.services["factory"].url,
            timeout=10,
            headers={"Authorization": f"Bearer {token}"},
            verify=client_context(inst.ca_file),
        )

    def jobs(self) -> Counter[str]:
        counts: Counter[str] = Counter(j["state"] for j in self.client.jobs())
        counts.update(j["state"] for j in self.client.jobs(history=True))
        return counts

    def glideins(self) -> list[dict[str, Any]]:
        r = self.factory.get("/api/v1/glideins")
        r.raise_for_status()
        return r.json()


def _pilot_text(glideins: list[dict[str, Any]]) -> str:
    c = Counter(g["state"] for g in glideins)
    return " ".join(f"{n} {s}" for s, n in sorted(c.items())) or "none yet"


def run_demo(
    jobs: int,
    state_dir: Path,
    max_pilots: int,
    job_seconds: float,
    timeout: float,
    entries: list[dict[str, Any]] | None = None,
    tls: bool = False,
    allow_unisolated_jobs: bool = False,
) -> int:
    if state_dir.exists():
        if not (state_dir / MARKER).exists():
            console.print(
                f"[red]error:[/red] {state_dir} exists and is not a demo directory; "
                "choose another --state-dir"
            )
            return 2
        shutil.rmtree(state_dir)
    state_dir.mkdir(parents=True)
    (state_dir / MARKER).touch()
    options = Options(
        state_dir=state_dir,
        pilot_idle_timeout=5,
        max_pilots=max_pilots,
        frontend_cycle=1.0,
        factory_cycle=1.0,
        heartbeat=5.0,
        claim_lease=30.0,
        entries=entries,
        tls=tls,
        allow_unisolated_jobs=allow_unisolated_jobs,
    )
    inst = Installation(options)
    where = (
        ", ".join(f"{e['name']} ({e.get('backend', 'local')})" for e in entries)
        if entries
        else f"up to {max_pilots} local pilots"
    )
    console.print(f"[bold]glidewms demo[/bold]: {jobs} jobs, {where}")
    inst.prepare()
    try:
        inst.start(on_step=lambda s: console.print(f"  {markup_safe(s)}"))
        return _run(inst, jobs, job_seconds, timeout)
    except (LaunchError, ClientError, httpx.HTTPError) as exc:
        console.print(f"[red]error:[/red] {markup_safe(exc)}")
        console.print(f"logs: {inst.root / 'logs'}")
        return 1
    except KeyboardInterrupt:
        console.print("interrupted")
        return 130
    finally:
        inst.stop()


def _run(inst: Installation, jobs: int, job_seconds: float, timeout: float) -> int:
    settings = ClientSettings(inst.services["pool"].url, inst.token_file("user"), inst.ca_file)
    workload = write_workload(inst.root / "workload", jobs, job_seconds)
    with PoolClient(settings) as client:
        result = client.submit(load_submit(workload))
        cluster = result["cluster_id"]
        console.print(
            f"  submitted {len(result['job_ids'])} jobs as cluster {cluster} ({workload})"
        )
        watcher = Watcher(inst, client)
        deadline = time.monotonic() + timeout
        started = time.monotonic()
        with Progress(
            TextColumn("jobs"),
            BarColumn(bar_width=24),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.description}"),
            console=console,
            transient=False,
        ) as progress:
            task = progress.add_task("", total=jobs)
            while True:
                inst.check_alive()
                counts, glideins = watcher.jobs(), watcher.glideins()
                done = counts["completed"] + counts["removed"]
                progress.update(
                    task,
                    completed=counts["completed"],
                    description=(
                        f"idle {counts['idle']} run {counts['running']} held {counts['held']}"
                        f" | pilots {_pilot_text(glideins)}"
                    ),
                )
                if done >= jobs or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            elapsed = time.monotonic() - started
            progress.update(task, description="waiting for idle pilots to leave…")
            while time.monotonic() < deadline:
                glideins = watcher.glideins()
                if glideins and all(g["state"] in FINISHED for g in glideins):
                    break
                progress.update(
                    task, description=f"pilots {_pilot_text(glideins)}, idle ones leave after 5 s"
                )
                time.sleep(0.5)
        return _summary(inst, client, cluster, jobs, glideins, elapsed)


def _check_outputs(client: PoolClient, job: dict[str, Any], dest: Path) -> str | None:
    """None if the job's outputs are what the demo job writes, else what is wrong."""
    n = job["job_id"].split(".")[1]
    files = {p.name: p for p in client.fetch_outputs(job["job_id"], dest)}
    expected = {
        f"job_{n}.out": f"job {n} running",
        f"result_{n}.txt": f"result of job {n}: {int(n) * int(n)}",
    }
    for name, text in expected.items():
        if name not in files:
            return f"{name} missing"
        if text not in files[name].read_text():
            return f"{name} does not contain {text!r}"
    return None


def _summary(
    inst: Installation,
    client: PoolClient,
    cluster: int,
    jobs: int,
    glideins: list[dict[str, Any]],
    elapsed: float,
) -> int:
    finished = [j for j in client.jobs(f"ClusterId == {cluster}", history=True)]
    dest = inst.root / "outputs"
    ok, problems = 0, []
    for job in finished:
        if job["state"] != "completed" or job["exit_code"] != 0:
            problems.append(f"{job['job_id']}: {job['state']} exit code {job['exit_code']}")
            continue
        wrong = _check_outputs(client, job, dest)
        if wrong:
            problems.append(f"{job['job_id']}: {wrong}")
        else:
            ok += 1
    missing = jobs - len(finished)
    if missing:
        problems.append(f"{missing} job(s) did not finish in time")
    reasons = Counter(g.get("exit_reason") or g["state"] for g in glideins)
    table = Table(title="glidewms demo summary", show_header=False, box=None)
    table.add_row("jobs completed with the right outputs", f"{ok} / {jobs}")
    table.add_row("time until the last job finished", f"{elapsed:.1f} s")
    table.add_row("pilots started by the factory", str(len(glideins)))
    table.add_row(
        "pilots exited",
        f"{sum(g['state'] in FINISHED for g in glideins)} ("
        + ", ".join(f"{n} {r}" for r, n in sorted(reasons.items()))
        + ")",
    )
    table.add_row("job outputs", str(dest))
    table.add_row("service logs", str(inst.root / "logs"))
    table.add_row("pilot logs", str(inst.root / "factory" / "logs"))
    console.print(table)
    for p in problems[:20]:
        console.print(f"[red]problem:[/red] {markup_safe(p)}")
    success = ok == jobs and not problems
    console.print("[green]demo succeeded[/green]" if success else "[red]demo failed[/red]")
    return 0 if success else 1
