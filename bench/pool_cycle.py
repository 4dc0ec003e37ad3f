"""Pool store benchmark: the pilot turn (completions + claims in one call), no HTTP.

Submits N trivial jobs, registers P pilots of C slots, then runs the pilots'
turns round-robin as the real ones would: each turn completes what the
pilot's previous turn claimed and claims up to C jobs. Prints the store's
jobs/s and CPU per job; `--profile` prints the top of a cProfile of the turns.

Run:  .venv/bin/python bench/pool_cycle.py [--jobs 20000] [--pilots 2] [--slots 16]
      [--database-url postgresql+psycopg://...] [--profile]
      (the profile's order and length: environment SORT=cumulative|tottime, TOP=35)
"""

from __future__ import annotations

import argparse
import cProfile
import os
import platform
import pstats
import tempfile
import time
from pathlib import Path

from glidewms.db import make_engine, sqlite_url
from glidewms.pool.exit import Completion
from glidewms.pool.jobs import NewJob
from glidewms.pool.pilots import PilotOwner
from glidewms.pool.store import PoolStore

AD = '[ Cmd = "/bin/true"; RequestCpus = 1; RequestMemory = 16; Requirements = true ]'


def run(url: str, jobs: int, pilots: int, slots: int, profile: bool) -> None:
    store = PoolStore(make_engine(url))
    try:
        store.queue.submit("bench", [NewJob(AD, [], [], {}) for _ in range(jobs)])
        slot = {
            "Cpus": slots,
            "Memory": 16 * slots,
            "Disk": 10**6,
            "GLIDEIN_Site": "BENCH",
            "OpSys": "LINUX",
            "Arch": "X86_64",
        }
        ids = [
            store.pilots.register(dict(slot), f"g{i}", PilotOwner("pilot", "fe", "main"), 3600)
            for i in range(pilots)
        ]
        held: dict[str, list[str]] = {p: [] for p in ids}
        done = 0
        profiler = cProfile.Profile() if profile else None
        cpu0, t0 = time.process_time(), time.perf_counter()
        if profiler:
            profiler.enable()
        while done < jobs:
            progressed = False
            for pid in ids:
                ended = [Completion(c, 0, [], 0.001) for c in held[pid]]
                free = {"cpus": slots, "memory": 16 * slots, "disk": 10**6, "gpus": 0}
                result, claims, _ = store.turns.cycle(pid, ended, free, 600, slots, time.time())
                done += sum(result.values())
                held[pid] = [c["claim_id"] for c in claims]
                progressed = progressed or bool(claims) or bool(ended)
            if not progressed:
                break
        if profiler:
            profiler.disable()
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        # the numbers only count if every job completed exactly once
        counted, queue = store.reports.stats()["jobs_completed"], store.reports.queue_counts()
        if done != jobs or counted != jobs or queue != {"idle": 0, "running": 0}:
            raise SystemExit(
                f"integrity: {done} completions answered, {counted} counted, "
                f"queue {queue}; expected {jobs}"
            )
    finally:
        store.close()
    print(
        f"machine: {platform.node()} {platform.machine()}, "
        f"{platform.python_implementation()} {platform.python_version()}"
    )
    print(
        f"database: {url.split('@')[-1] if '@' in url else url.split(':')[0]}; "
        f"{pilots} pilots x {slots} slots\n"
    )
    print("| measure | value |\n|---|---|")
    print(
        f"| {jobs} jobs claimed and completed (store only) | {wall:.2f} s "
        f"({jobs / wall:.0f} jobs/s) |"
    )
    print(f"| CPU per job (claim + completion) | {cpu / jobs * 1000:.3f} ms |")
    if profiler:
        stats = pstats.Stats(profiler).sort_stats(os.environ.get("SORT", "cumulative"))
        stats.print_stats(int(os.environ.get("TOP", "35")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20000)
    parser.add_argument("--pilots", type=int, default=2)
    parser.add_argument("--slots", type=int, default=16)
    parser.add_argument("--database-url")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = args.database_url or sqlite_url(Path(tmp) / "pool.sqlite")
        run(url, args.jobs, args.pilots, args.slots, args.profile)


if __name__ == "__main__":
    main()
