"""End-to-end benchmark: the whole system on this machine, real pilot processes.

Measures, on an installation started like `glidewms up`:
- dispatch latency: submit → job started, one job at a time, on a pilot
  already idle and long-polling (the pool wakes it; no cycle to wait for);
- throughput: N trivial jobs (`/bin/true`, not transferred) from submit until
  the last completion, with P pilots of C cores each.

Run:  .venv/bin/python bench/end_to_end.py [--jobs 500] [--pilots 2] [--cores 4]
Results go to stdout as a Markdown table; record them in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import platform
import statistics
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


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--pilots", type=int, default=2)
    parser.add_argument("--cores", type=int, default=4)
    parser.add_argument("--latency-samples", type=int, default=50)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        inst = Installation(Options(state_dir=Path(tmp) / "state", max_pilots=args.pilots,
                                    pilot_cpus=args.cores, pilot_idle_timeout=120,
                                    frontend_cycle=1.0, factory_cycle=1.0))
        inst.prepare()
        inst.start()
        try:
            client = PoolClient(ClientSettings(inst.services["pool"].url,
                                               inst.token_file("user")))
            one = parse_submit("executable = /bin/true\ntransfer_executable = false\n"
                               "request_memory = 16\nqueue\n", "bench.sub", Path(tmp))
            # warm up: get the pilots registered and idle
            warm = parse_submit("executable = /bin/true\ntransfer_executable = false\n"
                                f"request_memory = 16\nqueue {args.pilots * args.cores}\n",
                                "warm.sub", Path(tmp))
            client.submit(warm)
            wait(lambda: not client.jobs())

            latencies = []
            for _ in range(args.latency_samples):
                [jid] = client.submit(one)["job_ids"]
                wait(lambda jid=jid: client.job(jid)["state"] == "completed", step=0.005)
                events = {e["type"]: e["time"] for e in client.events(jid)}
                latencies.append((events["started"] - events["submitted"]) * 1000)

            many = parse_submit("executable = /bin/true\ntransfer_executable = false\n"
                                f"request_memory = 16\nqueue {args.jobs}\n", "many.sub",
                                Path(tmp))
            t0 = time.monotonic()
            client.submit(many)
            submitted = time.monotonic() - t0
            wait(lambda: not client.jobs(), step=0.05)
            elapsed = time.monotonic() - t0
        finally:
            inst.stop()

    print(f"machine: {platform.node()} {platform.machine()}, "
          f"{platform.python_implementation()} {platform.python_version()}")
    print(f"pilots: {args.pilots} x {args.cores} cores (local entry)\n")
    print("| measure | value |")
    print("|---|---|")
    print(f"| dispatch latency p50 (submit → started, idle pilot) | "
          f"{statistics.median(latencies):.1f} ms |")
    print(f"| dispatch latency p99 | {percentile(latencies, 0.99):.1f} ms |")
    print(f"| submit of {args.jobs} jobs (one cluster) | {submitted * 1000:.0f} ms "
          f"({args.jobs / submitted:.0f} jobs/s) |")
    print(f"| {args.jobs} `/bin/true` jobs, submit → last completed | {elapsed:.1f} s "
          f"({args.jobs / elapsed:.1f} jobs/s) |")


if __name__ == "__main__":
    main()
