"""The pilot's own cost of serving two pools instead of one (issue 15).

A real agent process (`python -m glidewms.glidein.agent`) against in-process
stand-in pools that answer at once: every turn hands out as many claims of
`/bin/true` as cores are free, until `--jobs` jobs (split by share between
the pools) have run; the agent then idles out. Measured: the agent's CPU
time (user + system, its jobs included: `os.wait4`) per job and per turn,
and the turns it made, for one pool and for two pools (shares 1:1).
The stand-in pools cost nothing the pilot is charged for (other process).

    .venv/bin/python bench/multipool_turns.py --jobs 400 --cpus 4 --repeat 3

Then an idle run (`--idle SECONDS`, no jobs): the agent's CPU while it
long-polls nothing, one pool against two.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

TOKEN = "bench-token"


class StandInPool:
    """Register, cycle (claims of /bin/true while `left` > 0; long-poll else),
    heartbeat, deregister: just enough of docs/protocol.md for one pilot."""

    def __init__(self, name: str, jobs: int, token: str) -> None:
        self.name, self.left, self.token = name, jobs, token
        self.lock = threading.Lock()
        self.turns = 0  # claim calls (max_jobs > 0)
        self.completed = 0
        self.closing = threading.Event()
        pool = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                pool.handle(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.handle_error = lambda *_: None  # type: ignore[method-assign]  # resets at exit
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def send(self, h: BaseHTTPRequestHandler, status: int, obj: Any) -> None:
        body = json.dumps(obj).encode()
        h.send_response(status)
        h.send_header("Glidewms-Api-Version", "1.0")
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    def handle(self, h: BaseHTTPRequestHandler) -> None:
        raw = h.rfile.read(int(h.headers.get("Content-Length") or 0))
        if h.headers.get("Authorization") != f"Bearer {self.token}":
            return self.send(h, 401, {"detail": "not our token"})
        body = json.loads(raw) if raw else {}
        if h.path == "/api/v1/pilots":
            return self.send(
                h, 201, {"pilot_id": "p1", "lease_seconds": 60, "heartbeat_seconds": 20}
            )
        if re.fullmatch(r"/api/v1/pilots/p1/cycle", h.path):
            done = {c["claim_id"]: True for c in body.get("completions", [])}
            with self.lock:
                self.completed += len(done)
                want = int(body.get("max_jobs", 0))
                if want:
                    self.turns += 1
                n = min(want, self.left)
                self.left -= n
                first = self.left
            claims = [
                {
                    "claim_id": f"{self.name}{first + i}",
                    "job_id": f"{first + i}.0",
                    "lease_seconds": 60,
                    "job": {"cmd": "/bin/true", "request": {"cpus": 1, "memory": 10}},
                }
                for i in range(n)
            ]
            if want and not claims and not done:
                self.closing.wait(min(float(body.get("wait", 0)), 60.0))
            return self.send(h, 200, {"completed": done, "claims": claims})
        if h.path.endswith("/heartbeat"):
            return self.send(h, 200, {"lease_seconds": 60, "kill": [], "drain": False})
        if h.path.endswith("/deregister"):
            return self.send(h, 200, {})
        return self.send(h, 404, {"detail": "no route"})

    def close(self) -> None:
        self.closing.set()
        self.server.shutdown()


def run(pools: int, jobs: int, cpus: int, idle_timeout: int) -> dict[str, float]:
    """One agent run; its CPU seconds, wall seconds, turns and jobs."""
    stand_ins = [StandInPool(chr(97 + i), jobs // pools, f"{TOKEN}-{i}") for i in range(pools)]
    with tempfile.TemporaryDirectory(prefix="mp-bench-") as tmp:
        work = Path(tmp)
        token = work / "token"
        lines = [stand_ins[0].token]  # one pool: the file as it always was
        if pools > 1:
            lines += [f"pool {p.url} {p.token}" for p in stand_ins]
        token.write_text("\n".join(lines) + "\n")
        token.chmod(0o600)
        values = {
            "GLIDEIN_Pool_URL": stand_ins[0].url,
            "GLIDEIN_Id": "bench-1",
            "GLIDEIN_Token_File": str(token),
            "GLIDEIN_Work_Dir": str(work),
            "GLIDEIN_Cpus": str(cpus),
            "GLIDEIN_Memory": "4096",
            "GLIDEIN_Idle_Timeout": str(idle_timeout),
            "GLIDEIN_Lifetime": "3600",
        }
        if pools > 1:
            values["GLIDEIN_Also_Pools"] = " ".join(p.url for p in stand_ins[1:])
        (work / "glidein_config").write_text("".join(f"{k} {v}\n" for k, v in values.items()))
        start = time.monotonic()
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "glidewms.glidein.agent",
                "--config",
                str(work / "glidein_config"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=open(work / "agent.err", "wb"),  # noqa: SIM115  (closed with the dir)
        )
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.monotonic() - start
        if sum(p.completed for p in stand_ins) != jobs // pools * pools:  # say why
            log = (work / "agent.err").read_text().splitlines()
            Path("/tmp/mp_bench_agent.err").write_text("\n".join(log))
            print([(p.name, p.left, p.completed) for p in stand_ins])
            print("\n".join(x for x in log if " INFO " not in x)[-3000:])
    for p in stand_ins:
        p.close()
    return {
        "rc": os.waitstatus_to_exitcode(status),
        "cpu": usage.ru_utime + usage.ru_stime,
        "wall": wall,
        "turns": sum(p.turns for p in stand_ins),
        "jobs": sum(p.completed for p in stand_ins),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=400)
    parser.add_argument("--cpus", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--idle", type=int, default=0, help="seconds of an idle run (0: none)")
    parser.add_argument("--pools", default="1,2", help="pool counts to run (1 only: main's code)")
    options = parser.parse_args()
    counts = [int(n) for n in options.pools.split(",")]
    print(f"loadavg {Path('/proc/loadavg').read_text().split()[:3]}")
    for i in range(options.repeat):
        for pools in counts:  # interleaved: both see the same load
            r = run(pools, options.jobs, options.cpus, 2)
            print(
                f"run {i} pools={pools}: rc={r['rc']} jobs={r['jobs']} turns={r['turns']} "
                f"cpu={r['cpu']:.2f}s wall={r['wall']:.2f}s "
                f"cpu/job={1000 * r['cpu'] / max(1, r['jobs']):.2f}ms "
                f"cpu/turn={1000 * r['cpu'] / max(1, r['turns']):.2f}ms"
            )
    if options.idle:
        for pools in counts:
            r = run(pools, 0, options.cpus, options.idle)
            print(
                f"idle {options.idle}s pools={pools}: rc={r['rc']} turns={r['turns']} "
                f"cpu={r['cpu']:.2f}s wall={r['wall']:.2f}s"
            )
    print(f"loadavg {Path('/proc/loadavg').read_text().split()[:3]}")


if __name__ == "__main__":
    main()
