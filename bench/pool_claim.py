"""Pool benchmark: bulk submit rate and claim latency against queue size.

Works on the pool's store directly (no HTTP), on SQLite in a temporary
directory or on any SQLAlchemy URL (--database-url, e.g. a PostgreSQL one):
- bulk submit: one cluster of --bulk jobs, jobs/s (ClassAd parse, autocluster
  signature, one insert transaction);
- claim latency: for each (jobs, autoclusters) case, the queue is filled with
  idle jobs spread over that many autoclusters (different RequestMemory) and
  two owners, then an idle pilot claims --claims times; p50/p99 of one claim;
- demand: p50 of the demand summary frontends read (from the in-memory index);
- pool memory (--rss): a fresh process opens the filled database as a pool
  does at start (rebuilding its index), claims once and answers demand; its
  resident memory (VmRSS) and peak (VmHWM) are reported.

Run:  .venv/bin/python bench/pool_claim.py [--cases 10000x10,100000x1000] [--bulk 100000]
      [--database-url postgresql+psycopg://...] [--rss]
Results go to stdout as a Markdown table; record them in bench/RESULTS.md
with the machine and its load (`uptime`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from glidewms.db import make_engine, sqlite_url
from glidewms.pool.jobs import NewJob
from glidewms.pool.pilots import PilotOwner
from glidewms.pool.store import PoolStore

CHUNK = 20_000  # jobs per submitted cluster while filling a queue


def job_ad(memory: int) -> str:
    return (
        f'[ Cmd = "/bin/true"; RequestCpus = 1; RequestMemory = {memory}; '
        "Requirements = TARGET.Cpus >= RequestCpus && TARGET.Memory >= RequestMemory ]"
    )


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def new_store(url: str | None, directory: Path) -> PoolStore:
    directory.mkdir(parents=True, exist_ok=True)
    return PoolStore(make_engine(url or sqlite_url(directory / "pool.sqlite")))


def fill(store: PoolStore, jobs: int, autoclusters: int) -> float:
    """Queue `jobs` idle jobs over `autoclusters` kinds; returns jobs/s."""
    started, done = time.perf_counter(), 0
    owners = ("alice", "bob")
    while done < jobs:
        n = min(CHUNK, jobs - done)
        batch = [NewJob(job_ad(100 + (done + i) % autoclusters), [], [], {}) for i in range(n)]
        store.queue.submit(owners[(done // CHUNK) % 2], batch)
        done += n
    return jobs / (time.perf_counter() - started)


def demand_latency(store: PoolStore, calls: int = 20) -> float:
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        store.reports.demand()
        times.append(time.perf_counter() - t0)
    return percentile(times, 0.5) * 1000


def memory_of_a_pool(url: str) -> dict[str, float]:
    """Start a pool's store on the filled database in a fresh process; its memory in MiB."""
    code = (
        "import json, sys, time\n"
        "from glidewms.db import make_engine\n"
        "from glidewms.pool.store import PoolStore\n"
        "from glidewms.pool.pilots import PilotOwner\n"
        "t0 = time.perf_counter()\n"
        "store = PoolStore(make_engine(sys.argv[1]))\n"
        "started = time.perf_counter() - t0\n"
        "pilot = store.pilots.register({'Cpus': 64, 'Memory': 10**6, 'Disk': 10**7}, 'rss',"
        " PilotOwner('pilot', 'fe', 'main'), 3600)\n"
        "assert store.turns.claim(pilot, {}, 3600) is not None\n"
        "store.reports.demand()\n"
        "status = dict(line.split(':', 1) for line in open('/proc/self/status'))\n"
        "kib = lambda k: int(status[k].split()[0]) / 1024\n"
        "print(json.dumps({'rss': kib('VmRSS'), 'hwm': kib('VmHWM'), 'start': started}))\n"
        "store.close()\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, url],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path.cwd() / "src")},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def claim_latency(store: PoolStore, claims: int) -> tuple[float, float]:
    slot = {"Cpus": 64, "Memory": 1_000_000, "Disk": 10_000_000, "GLIDEIN_Site": "BENCH"}
    pilot = store.pilots.register(slot, "bench", PilotOwner("pilot", "fe", "main"), 3600)
    free = {"cpus": 64, "memory": 1_000_000, "disk": 10_000_000}
    store.turns.claim(pilot, free, 3600)  # the first claim of a slot shape fills the match cache
    times = []
    for _ in range(claims):
        t0 = time.perf_counter()
        got = store.turns.claim(pilot, free, 3600)
        times.append(time.perf_counter() - t0)
        assert got is not None, "the queue ran dry"
    return percentile(times, 0.5) * 1000, percentile(times, 0.99) * 1000


def empty(store: PoolStore) -> None:
    """A shared server: start the next case from an empty database."""
    with store.engine.begin() as conn:
        for table in (
            "events",
            "jobs",
            "autoclusters",
            "pilots",
            "usage",
            "counters",
            "schema_version",
        ):
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS {table} CASCADE")
    store.engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--cases",
        default="10000x10,10000x1000,100000x10,100000x1000",
        help="comma-separated JOBSxAUTOCLUSTERS",
    )
    parser.add_argument("--claims", type=int, default=300)
    parser.add_argument("--bulk", type=int, default=100_000, help="jobs in the bulk submit")
    parser.add_argument("--database-url", default=None, help="default: SQLite in a temp dir")
    parser.add_argument("--rss", action="store_true", help="measure a pool's memory per case")
    args = parser.parse_args()
    backend = (args.database_url or "sqlite").split(":")[0]
    print(
        f"machine: {platform.node()} {platform.machine()} {platform.python_version()}, "
        f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}, backend {backend}\n"
    )
    print("| measure | value |\n|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        store = new_store(args.database_url, Path(tmp) / "bulk")
        t0 = time.perf_counter()
        store.queue.submit("alice", [NewJob(job_ad(100), [], [], {})] * args.bulk)
        elapsed = time.perf_counter() - t0
        print(
            f"| bulk submit, {args.bulk} jobs in one cluster | {elapsed:.1f} s "
            f"({args.bulk / elapsed:.0f} jobs/s) |",
            flush=True,
        )
        store.close()
        if args.database_url:
            empty(store)
    for case in args.cases.split(","):
        jobs, acs = (int(x) for x in case.split("x"))
        with tempfile.TemporaryDirectory() as tmp:
            directory = Path(tmp) / case
            directory.mkdir()
            url = args.database_url
            store = new_store(url, directory)
            rate = fill(store, jobs, acs)
            p50, p99 = claim_latency(store, args.claims)
            print(
                f"| claim, {jobs} idle jobs / {acs} autoclusters (filled at {rate:.0f} "
                f"jobs/s) | p50 {p50:.2f} ms, p99 {p99:.2f} ms |",
                flush=True,
            )
            print(
                f"| demand summary, {jobs} jobs / {acs} autoclusters | "
                f"p50 {demand_latency(store):.1f} ms |",
                flush=True,
            )
            store_url = str(store.engine.url.render_as_string(hide_password=False))
            store.close()
            if args.rss:
                mem = memory_of_a_pool(store_url)
                print(
                    f"| pool memory, {jobs} idle jobs / {acs} autoclusters | RSS "
                    f"{mem['rss']:.0f} MiB (peak {mem['hwm']:.0f} MiB), index rebuilt in "
                    f"{mem['start']:.1f} s |",
                    flush=True,
                )
            if url:
                empty(store)


if __name__ == "__main__":
    main()
