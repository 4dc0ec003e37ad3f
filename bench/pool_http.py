"""Pool over HTTP: pilot turns against a real pool process, no jobs run.

Between bench/pool_cycle.py (the store alone, in one process) and
bench/end_to_end.py (the whole system, real pilots running `/bin/true`):
the pool runs as its own process exactly as `glidewms up` starts it, and P
fake pilots, each a thread of this process using the agent's own HTTP client
(glidewms.glidein.agent.http.Api), make pilot turns back to back: each turn
reports the jobs its previous turn claimed as completed (exit 0, no outputs)
and asks for up to C more. So the figure is what the pool costs per job,
HTTP, token check, validation and JSON included, with nothing else on the
machine competing for the CPU but this client.

Run:  .venv/bin/python bench/pool_http.py [--jobs 20000] [--pilots 2] [--slots 16]
      [--profile-pool FILE]   (py-spy raw stacks of the pool during the turns)
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from glidewms.client import ClientSettings, PoolClient
from glidewms.glidein.agent.http import Api
from glidewms.launcher import Installation, Options
from glidewms.security.tokens import TokenIssuer, write_secret
from glidewms.submit import parse_submit


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pilot(api: Api, slots: int, stop: threading.Event, counts: list[int], turns: list[int]) -> None:
    """One fake pilot: turns back to back until nothing is left to claim."""
    slot = {
        "Cpus": slots,
        "Memory": 64 * slots,
        "Disk": 10**7,
        "GLIDEIN_Site": "BENCH",
        "OpSys": "LINUX",
        "Arch": "X86_64",
    }
    _, answer = api.call("POST", "pilots", {"slot": slot, "glidein_id": "bench"})
    path = f"pilots/{answer['pilot_id']}/cycle"
    held: list[str] = []
    while not stop.is_set():
        done = [{"claim_id": c, "exit_code": 0, "outputs": [], "wall_seconds": 0.001} for c in held]
        _, answer = api.call(
            "POST",
            path,
            {
                "completions": done,
                "max_jobs": slots,
                "free": {"cpus": slots, "memory": 64 * slots},
                "wait": 0.5,
            },
        )
        turns.append(len(answer["claims"]))
        counts.append(sum(1 for ok in answer["completed"].values() if ok))
        held = [c["claim_id"] for c in answer["claims"]]
        if not held and not done:
            return


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20000)
    parser.add_argument("--pilots", type=int, default=2)
    parser.add_argument("--slots", type=int, default=16)
    parser.add_argument("--profile-pool", metavar="FILE")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        inst = Installation(Options(state_dir=Path(tmp) / "state"))
        inst.prepare()
        inst.path("run").mkdir(parents=True, exist_ok=True)
        inst.path("logs").mkdir(parents=True, exist_ok=True)
        inst._spawn("pool")  # the pool only: no factory, no frontend, no real pilots
        try:
            inst._await_url("pool", 60)
            url = inst.services["pool"].url
            issuer = TokenIssuer.from_file(inst.path("keys", "issuer.key"))
            token = Path(tmp) / "pilot.token"
            write_secret(
                token, issuer.issue("bench-pilot", ["pilot"], 3600, fe="frontend", group="main")
            )
            client = PoolClient(ClientSettings(url, inst.token_file("user")))
            many = parse_submit(
                "executable = /bin/true\ntransfer_executable = false\n"
                f"request_memory = 16\nqueue {args.jobs}\n",
                "many.sub",
                Path(tmp),
            )
            client.submit(many)
            pid = inst.services["pool"].process.pid
            spy = None
            if args.profile_pool:
                spy = subprocess.Popen(
                    [
                        str(Path(sys.executable).parent / "py-spy"),
                        "record",
                        "--format",
                        "raw",
                        "-r",
                        "200",
                        "-o",
                        args.profile_pool,
                        "-p",
                        str(pid),
                    ],
                    stdout=subprocess.DEVNULL,
                )
                time.sleep(1.0)  # py-spy attaches
            stop = threading.Event()
            counts: list[int] = []
            turns: list[int] = []
            threads = [
                threading.Thread(
                    target=pilot, args=(Api(url, str(token)), args.slots, stop, counts, turns)
                )
                for _ in range(args.pilots)
            ]
            cpu0, t0 = cpu_seconds(pid), time.perf_counter()
            client_cpu0 = time.process_time()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(600)
            elapsed = time.perf_counter() - t0
            pool_cpu = cpu_seconds(pid) - cpu0
            client_cpu = time.process_time() - client_cpu0
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                spy.wait(30)
            completed = sum(counts)
        finally:
            inst.stop()

    if completed != args.jobs:
        raise SystemExit(f"{completed} jobs completed, {args.jobs} submitted")
    print(
        f"machine: {platform.node()} {platform.machine()}, "
        f"{platform.python_implementation()} {platform.python_version()}, "
        f"load {os.getloadavg()[0]:.1f}"
    )
    print(f"{args.pilots} fake pilots x {args.slots} slots, SQLite\n")
    print("| measure | value |")
    print("|---|---|")
    print(
        f"| {completed} jobs claimed and completed over HTTP | {elapsed:.2f} s "
        f"({completed / elapsed:.0f} jobs/s) |"
    )
    print(f"| turns (calls) | {len(turns)} ({completed / max(1, len(turns)):.1f} jobs/turn) |")
    print(f"| pool CPU per job | {pool_cpu / completed * 1000:.3f} ms |")
    print(f"| client (fake pilots) CPU per job | {client_cpu / completed * 1000:.3f} ms |")


if __name__ == "__main__":
    main()
