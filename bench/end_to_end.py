"""End-to-end benchmark: the whole system on this machine, real pilot processes.

Measures, on an installation started like `glidewms up`:
- dispatch latency: submit → job started, one job at a time, on a pilot
  already idle and long-polling (the pool wakes it; no cycle to wait for);
- throughput: N trivial jobs (`/bin/true`, not transferred) from submit until
  the last completion, with P pilots of C cores each.

Run:  .venv/bin/python bench/end_to_end.py [--jobs 500] [--pilots 2] [--cores 4] [--parsl]
(the throughput figure of record: --jobs 5000 --cores 16 --parsl)
Results go to stdout as a Markdown table; record them in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from glidewms.client import ClientSettings, PoolClient
from glidewms.launcher import Installation, Options
from glidewms.submit import parse_submit


def wait(predicate, timeout: float = 600.0, step: float = 0.02) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark condition not reached")
        time.sleep(step)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pilot_cpu(pid: int) -> tuple[float, float]:
    """CPU of a pilot agent, and of the jobs it has reaped (cutime, cstime)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0, 0.0
    tick = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / tick, (int(fields[13]) + int(fields[14])) / tick


def agents_of(pool_url: str) -> list[int]:
    """Pids of the pilot agents of this pool (their glidein_config names it)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if b"agent" not in (proc / "cmdline").read_bytes():
                continue
            config = (proc / "cwd" / "glidein_config").read_text()
        except OSError:
            continue
        if f"GLIDEIN_Pool_URL {pool_url}" in config:
            found.append(int(proc.name))
    return found


def all_cpu() -> dict[int, tuple[str, float]]:
    """{pid: (command, own CPU + reaped children's CPU)} of every process now."""
    out = {}
    tick = os.sysconf("SC_CLK_TCK")
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        name = " ".join(a.decode(errors="replace").rsplit("/", 1)[-1] for a in argv[:4])
        out[int(proc.name)] = (name[:60], sum(int(f) for f in fields[11:15]) / tick)
    return out


def machine_ticks() -> tuple[int, int]:
    """(busy, total) CPU ticks of the whole machine so far (Linux /proc/stat)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


def completed(client: PoolClient) -> int:
    """Jobs completed so far (GET /api/v1/stats: counters kept by the pool)."""
    return int(client._call("GET", "/stats")["counters"]["jobs_completed"])


def spy_on(pid: int, out: str, *extra: str) -> subprocess.Popen[bytes]:
    """py-spy recording ``pid`` into ``out`` (raw collapsed stacks) until SIGINT."""
    return subprocess.Popen(
        [
            str(Path(sys.executable).parent / "py-spy"),
            "record",
            "--format",
            "raw",
            "-r",
            "200",
            "-o",
            out,
            "-p",
            str(pid),
            *extra,
        ],
        stdout=subprocess.DEVNULL,
    )


def claiming_turns(state_dir: Path, since: float) -> int:
    """Pilot turns that started jobs since ``since`` (monotonic): one
    `started` time per pilot and turn in the pool's events table."""
    start = time.time() - (time.monotonic() - since)
    [db] = state_dir.rglob("pool.sqlite")
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        query = (
            "SELECT COUNT(*) FROM (SELECT DISTINCT time, json_extract(detail, '$.pilot') "
            "FROM events WHERE type = 'started' AND time >= ?)"
        )
        return int(conn.execute(query, (start,)).fetchone()[0])


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--pilots", type=int, default=2)
    parser.add_argument("--cores", type=int, default=4)
    parser.add_argument("--latency-samples", type=int, default=50)
    parser.add_argument(
        "--parsl",
        action="store_true",
        help="also run Parsl's HighThroughputExecutor on the same jobs with "
        "as many workers as job slots (bench/parsl_true.py) and print "
        "the ratio",
    )
    parser.add_argument(
        "--profile-pool",
        metavar="FILE",
        help="record the pool process with py-spy during the throughput run, "
        "waits included (collapsed stacks, for flamegraph.pl or grep)",
    )
    parser.add_argument(
        "--profile-pilot",
        metavar="FILE",
        help="record the first pilot agent the same way, only the thread "
        "holding the GIL (the pilot's Python work, not its waits)",
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        inst = Installation(
            Options(
                state_dir=Path(tmp) / "state",
                max_pilots=args.pilots,
                pilot_cpus=args.cores,
                pilot_idle_timeout=120,
                frontend_cycle=1.0,
                factory_cycle=1.0,
            )
        )
        inst.prepare()
        inst.start()
        try:
            client = PoolClient(ClientSettings(inst.services["pool"].url, inst.token_file("user")))
            one = parse_submit(
                "executable = /bin/true\ntransfer_executable = false\nrequest_memory = 16\nqueue\n",
                "bench.sub",
                Path(tmp),
            )
            # warm up: jobs long enough that one pilot cannot run them all before
            # the frontend asks for the others; then every pilot idle
            warm = parse_submit(
                "executable = /bin/sleep\narguments = 5\n"
                "transfer_executable = false\nrequest_memory = 16\n"
                f"queue {args.pilots * args.cores}\n",
                "warm.sub",
                Path(tmp),
            )
            client.submit(warm)
            wait(lambda: len(agents_of(inst.services["pool"].url)) >= args.pilots)
            wait(lambda: completed(client) >= args.pilots * args.cores)

            latencies = []
            for _ in range(args.latency_samples):
                [jid] = client.submit(one)["job_ids"]
                wait(lambda jid=jid: client.job(jid)["state"] == "completed", step=0.005)
                events = {e["type"]: e["time"] for e in client.events(jid)}
                latencies.append((events["started"] - events["submitted"]) * 1000)

            many = parse_submit(
                "executable = /bin/true\ntransfer_executable = false\n"
                f"request_memory = 16\nqueue {args.jobs}\n",
                "many.sub",
                Path(tmp),
            )
            base = completed(client)
            pool_pid = inst.services["pool"].process.pid
            pilots = agents_of(inst.services["pool"].url)
            spies = [
                spy_on(pid, out, *extra)
                for pid, out, extra in (
                    (pool_pid, args.profile_pool, ("--idle",)),
                    (pilots[0], args.profile_pilot, ("--gil",)),
                )
                if out
            ]
            if spies:
                time.sleep(1.0)  # py-spy attaches
            cpu0, ticks0, every0 = cpu_seconds(pool_pid), machine_ticks(), all_cpu()
            pilots0 = {pid: pilot_cpu(pid) for pid in pilots}
            t0 = time.monotonic()
            client.submit(many)
            submitted = time.monotonic() - t0
            # a cheap counter, not a job listing: polling must not load the pool
            wait(lambda: completed(client) >= base + args.jobs, step=0.05)
            elapsed = time.monotonic() - t0
            pool_cpu = cpu_seconds(pool_pid) - cpu0
            ticks1, every1 = machine_ticks(), all_cpu()
            busy = (ticks1[0] - ticks0[0]) / max(1, ticks1[1] - ticks0[1])
            load = os.getloadavg()[0]
            failures = client._call("GET", "/stats")["counters"]["job_failures"]
            turns = claiming_turns(Path(tmp) / "state", t0)
            agents_cpu = sum(pilot_cpu(pid)[0] - pilots0[pid][0] for pid in pilots)
            jobs_cpu = sum(pilot_cpu(pid)[1] - pilots0[pid][1] for pid in pilots)
            for spy in spies:
                spy.send_signal(signal.SIGINT)
                spy.wait(30)
        finally:
            inst.stop()

    print(
        f"machine: {platform.node()} {platform.machine()}, "
        f"{platform.python_implementation()} {platform.python_version()}"
    )
    print(f"pilots: {args.pilots} x {args.cores} cores (local entry)\n")
    print("| measure | value |")
    print("|---|---|")
    print(
        f"| dispatch latency p50 (submit → started, idle pilot) | "
        f"{statistics.median(latencies):.1f} ms |"
    )
    print(f"| dispatch latency p99 | {percentile(latencies, 0.99):.1f} ms |")
    print(
        f"| submit of {args.jobs} jobs (one cluster) | {submitted * 1000:.0f} ms "
        f"({args.jobs / submitted:.0f} jobs/s) |"
    )
    print(
        f"| {args.jobs} `/bin/true` jobs, submit → last completed | {elapsed:.1f} s "
        f"({args.jobs / elapsed:.1f} jobs/s) |"
    )
    print(f"| job failures (non-zero exits) | {failures} |")
    print(f"| jobs per pilot turn that claimed | {args.jobs / max(1, turns):.1f} |")
    print(f"| pool CPU per job (throughput run) | {pool_cpu / args.jobs * 1000:.2f} ms |")
    print(
        f"| pilot agents' CPU per job / the jobs' own CPU (throughput run) | "
        f"{agents_cpu / args.jobs * 1000:.2f} ms / {jobs_cpu / args.jobs * 1000:.2f} ms |"
    )
    if args.parsl:
        from parsl_true import run as parsl_run  # bench/, next to this script

        workers = args.pilots * args.cores
        parsl_rate = parsl_run(args.jobs, workers)
        rate = args.jobs / elapsed
        print(
            f"| Parsl HTEX, {workers} workers: {args.jobs} `/bin/true` bash apps | "
            f"{parsl_rate:.1f} jobs/s |"
        )
        print(f"| ratio glidewms / Parsl (same run) | {rate / parsl_rate:.2f} |")
    print(
        f"| machine CPU busy during the run (all processes, {os.cpu_count()} cores) | "
        f"{busy * 100:.0f}% |"
    )
    print(f"| load average (1 min) at the end | {load:.1f} |")
    spent = sorted(
        ((cpu - every0.get(pid, ("", 0.0))[1], name, pid) for pid, (name, cpu) in every1.items()),
        reverse=True,
    )
    print("\nCPU per job by process during the throughput run (jobs in their pilot's):\n")
    for cpu, name, pid in spent[:8]:
        if cpu > 0:
            print(f"- {cpu / args.jobs * 1000:.3f} ms  {pid} {name}")


if __name__ == "__main__":
    main()
