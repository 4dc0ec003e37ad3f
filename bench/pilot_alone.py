"""One real pilot agent against a stand-in pool that costs almost nothing.

bench/end_to_end.py measures the whole system, where the pool and the
pilots share the 2 cores, so a change to the pilot shows up mixed with
everything else. Here the agent (`python -m glidewms.glidein.agent`, the
process the bootstrap runs) talks to a minimal stand-in of the pool's pilot
API in this process: it registers the pilot, answers heartbeats and hands
out `/bin/true` jobs in `POST /pilots/{id}/cycle` turns until N jobs are
completed. The figures are the agent's own CPU per job (user and system),
its jobs' CPU, jobs per turn, and jobs/s.

Run:  .venv/bin/python bench/pilot_alone.py [--jobs 5000] [--cores 16] [--strace]
      [--isolation none|account|sandbox]
(--strace counts the agent's system calls during the run, per job; --isolation
runs every job as `nobody` (root only) or under bubblewrap, as local pilots do.)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


class StandInPool:
    """The pilot side of docs/protocol.md, only what one pilot's turns need."""

    def __init__(self, jobs: int) -> None:
        self.jobs = jobs
        self.handed = 0
        self.completed = 0
        self.turns = 0
        self.first = 0.0
        self.done = threading.Event()
        self.lock = threading.Lock()
        pool = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go in two writes

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(
                    self.rfile.read(int(self.headers["Content-Length"] or 0)) or b"{}"
                )
                answer = pool.answer(self.path, body)
                data = json.dumps(answer).encode()
                self.send_response(201 if self.path.endswith("/pilots") else 200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # the agent's connections reset when it is stopped at the end

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def answer(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        if path.endswith("/pilots"):
            return {"pilot_id": "p1", "heartbeat_seconds": 60, "lease_seconds": 600}
        if not path.endswith("/cycle"):
            return {}  # heartbeat, deregister
        with self.lock:
            done = {c["claim_id"]: True for c in body.get("completions") or []}
            self.completed += len(done)
            want = min(int(body.get("max_jobs") or 0), self.jobs - self.handed)
            claims = []
            for _ in range(max(0, want)):
                self.handed += 1
                claims.append(
                    {
                        "claim_id": f"c{self.handed}",
                        "job_id": f"1.{self.handed}",
                        "lease_seconds": 600,
                        "job": {"cmd": "/bin/true", "request": {"cpus": 1, "memory": 16}},
                    }
                )
            if claims:
                self.turns += 1
                if not self.first:
                    self.first = time.monotonic()
            if self.completed >= self.jobs:
                self.done.set()
        if not claims and not done and not self.done.is_set():
            time.sleep(min(0.05, float(body.get("wait") or 0)))  # a short long-poll
        return {"completed": done, "claims": claims}


def cpu(pid: int) -> tuple[float, float, float]:
    """(user, system, reaped children) CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return (
        int(fields[11]) / tick,
        int(fields[12]) / tick,
        (int(fields[13]) + int(fields[14])) / tick,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--cores", type=int, default=16)
    parser.add_argument(
        "--strace",
        action="store_true",
        help="count the agent's system calls (strace -c -f) during the run",
    )
    parser.add_argument(
        "--trace",
        metavar="FILE",
        help="write every system call of the agent's threads to FILE "
        "(strace -f, not counted: to read one job's calls)",
    )
    parser.add_argument(
        "--isolation",
        choices=("none", "account", "sandbox"),
        default="none",
        help="GLIDEIN_Job_Isolation of the pilot (agent/isolation.py)",
    )
    args = parser.parse_args()
    pool = StandInPool(args.jobs)
    threading.Thread(target=pool.server.serve_forever, daemon=True).start()
    with tempfile.TemporaryDirectory() as tmp:
        token = Path(tmp) / "token"
        token.write_text("not-checked-by-the-stand-in")
        config = Path(tmp) / "glidein_config"
        config.write_text(
            f"GLIDEIN_Pool_URL {pool.url}\nGLIDEIN_Id bench-1\n"
            f"GLIDEIN_Token_File {token}\nGLIDEIN_Work_Dir {tmp}\n"
            f"GLIDEIN_Cpus {args.cores}\nGLIDEIN_Memory {args.cores * 1000}\n"
            "GLIDEIN_Idle_Timeout 600\nGLIDEIN_Lifetime 3600\n"
            f"GLIDEIN_Job_Isolation {args.isolation}\n"
        )
        src = Path(__file__).resolve().parent.parent / "src"
        agent = subprocess.Popen(
            [sys.executable, "-m", "glidewms.glidein.agent", "--config", str(config)],
            cwd=tmp,
            env={**os.environ, "PYTHONPATH": str(src)},
            stderr=subprocess.DEVNULL,
        )
        try:
            before = cpu(agent.pid)
            strace = None
            if args.strace or args.trace:
                strace = subprocess.Popen(
                    ["strace", "-f", "-o", args.trace, "-p", str(agent.pid)]
                    if args.trace
                    else ["strace", "-c", "-f", "-o", f"{tmp}/strace", "-p", str(agent.pid)],
                    stderr=subprocess.DEVNULL,
                )
            if not pool.done.wait(600):
                raise TimeoutError(f"only {pool.completed} of {args.jobs} jobs completed")
            elapsed = time.monotonic() - pool.first
            after = cpu(agent.pid)
            calls = ""
            if strace is not None:
                strace.terminate()
                strace.wait(30)
                calls = "" if args.trace else Path(f"{tmp}/strace").read_text()
        finally:
            agent.terminate()
            agent.wait(30)
    user, system, jobs = (a - b for a, b in zip(after, before, strict=True))
    n = args.jobs
    print(
        f"machine: {platform.node()} {platform.machine()}, "
        f"{platform.python_implementation()} {platform.python_version()}"
    )
    print(
        f"one pilot, {args.cores} cores, {n} `/bin/true` jobs, stand-in pool, "
        f"isolation {args.isolation}\n"
    )
    print("| measure | value |")
    print("|---|---|")
    print(f"| jobs/s (first claim → last completion) | {n / elapsed:.0f} |")
    print(
        f"| agent CPU per job: user / system | {user / n * 1000:.3f} ms / "
        f"{system / n * 1000:.3f} ms |"
    )
    print(f"| the jobs' own CPU per job | {jobs / n * 1000:.3f} ms |")
    print(f"| jobs per turn | {n / max(1, pool.turns):.1f} |")
    if calls:
        print("\nsystem calls per job (under strace, which slows everything):\n")
        for line in calls.splitlines()[2:14]:
            parts = line.split()
            if len(parts) >= 5 and parts[3].isdigit():
                print(f"- {parts[-1]}: {int(parts[3]) / n:.1f}")


if __name__ == "__main__":
    main()
