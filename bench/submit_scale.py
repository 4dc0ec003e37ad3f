"""One huge submit: client and pool memory, wall time, database size (issue 15).

Starts a real pool process (`glidewms pool`, SQLite) from a given install
(`--venv`: this worktree's, or main's for the baseline), writes a submit file
of `--jobs` jobs (`arguments = $(Process)`, `output = out.$(Process)`: each
job differs from the others), optionally with `max_materialize`, runs
`glidewms submit` of that install as a child process and reports:

- client: wall time of `glidewms submit` and its peak RSS (wait4's ru_maxrss);
- pool: peak RSS (VmHWM) once the submit returned and, when the cluster
  materialises in the background (a plain compact cluster), once every job
  is in the queue (`--settle`);
- the database's size (file + WAL) at the end.

Run:  .venv/bin/python bench/submit_scale.py --jobs 1000000 --max-materialize 10000
      .venv/bin/python bench/submit_scale.py --jobs 100000 --venv /work/main/.venv
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from glidewms.security.tokens import TokenIssuer, generate_keypair


def vm_hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def db_mb(state: Path) -> float:
    return sum(p.stat().st_size for p in state.glob("pool.sqlite*")) / 2**20


def queued(state: Path) -> int:
    with sqlite3.connect(f"file:{state / 'pool.sqlite'}?mode=ro", uri=True) as conn:
        return int(conn.execute("SELECT count(*) FROM jobs").fetchone()[0])


def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    glidewms = str(Path(args.venv) / "bin" / "glidewms")
    private, public = generate_keypair(tmp / "keys")
    token = tmp / "user.token"
    token.write_text(TokenIssuer.from_file(private).issue("alice", ["user"]))
    state = tmp / "pool"
    config = {
        "listen_port": 0,
        "url_file": str(tmp / "pool.url"),
        "state_dir": str(state),
        "issuer_public_key": str(public),
        # main's plain path: one body of every job (its defaults: 64 MiB, 100k jobs)
        "max_submit_bytes": 1024 * 2**20,
        "max_jobs_per_request": 10_000_000,
    }
    (tmp / "pool.yaml").write_text(yaml.safe_dump(config))
    log = open(tmp / "pool.log", "wb")  # noqa: SIM115 (the child keeps it)
    pool = subprocess.Popen(
        [glidewms, "pool", "--config", str(tmp / "pool.yaml")], stdout=log, stderr=log
    )
    try:
        url_file = tmp / "pool.url"
        end = time.monotonic() + 60
        while not (url_file.is_file() and url_file.read_text().strip()):
            if time.monotonic() > end or pool.poll() is not None:
                raise RuntimeError((tmp / "pool.log").read_text()[-2000:])
            time.sleep(0.05)
        url = url_file.read_text().strip()
        (tmp / "job.sh").write_text("#!/bin/sh\necho $1\n")
        (tmp / "job.sub").write_text(
            "executable = job.sh\narguments = $(Process)\noutput = out.$(Process)\n"
            "error = err.$(Process)\nrequest_memory = 32\n"
            + (f"max_materialize = {args.max_materialize}\n" if args.max_materialize else "")
            + f"queue {args.jobs}\n"
        )
        env = {
            **os.environ,
            "GLIDEWMS_POOL_URL": url,
            "GLIDEWMS_TOKEN_FILE": str(token),
            "GLIDEWMS_USERLOG_STATE": str(tmp / "cli"),
        }
        before_mb = vm_hwm_mb(pool.pid)
        started = time.monotonic()
        client = subprocess.Popen(
            [glidewms, "submit", "job.sub"],
            cwd=tmp,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        _, status, usage = os.wait4(client.pid, 0)
        wall = time.monotonic() - started
        stdout = client.stdout.read().decode() if client.stdout else ""
        stderr = client.stderr.read().decode() if client.stderr else ""
        if os.waitstatus_to_exitcode(status) != 0:
            raise RuntimeError(f"submit failed: {stdout} {stderr[-2000:]}")
        out: dict[str, Any] = {
            "jobs": args.jobs,
            "max_materialize": args.max_materialize,
            "venv": args.venv,
            "submit_s": round(wall, 1),
            "client_peak_mb": round(usage.ru_maxrss / 1024, 1),
            "pool_idle_mb": round(before_mb, 1),
            "pool_peak_after_submit_mb": round(vm_hwm_mb(pool.pid), 1),
            "queued_after_submit": queued(state),
            "stdout": stdout.strip(),
        }
        if args.settle:
            want = args.max_materialize or args.jobs
            started = time.monotonic()
            while queued(state) < want:
                time.sleep(1.0)
            out["materialise_after_submit_s"] = round(time.monotonic() - started, 1)
            out["pool_peak_settled_mb"] = round(vm_hwm_mb(pool.pid), 1)
            out["queued_settled"] = queued(state)
        r = httpx.get(f"{url}/healthz", timeout=10)
        out["healthz"] = r.status_code
        out["db_mb"] = round(db_mb(state), 1)
        out["loadavg"] = Path("/proc/loadavg").read_text().strip()
        return out
    finally:
        pool.terminate()
        try:
            pool.wait(30)
        except subprocess.TimeoutExpired:
            pool.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--max-materialize", type=int, default=0)
    parser.add_argument("--venv", default=str(Path(__file__).resolve().parents[1] / ".venv"))
    parser.add_argument("--settle", action="store_true", help="wait until all are materialised")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="submit-scale-", dir="/tmp") as d:
        print(json.dumps(run(args, Path(d)), indent=1))


if __name__ == "__main__":
    main()
