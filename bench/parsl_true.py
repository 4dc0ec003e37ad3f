"""Peer benchmark: Parsl's HighThroughputExecutor running `/bin/true` bash apps.

The issue asks for glidewms' trivial-job throughput next to Parsl's on the
same machine. This runs N `bash_app`s whose command is `/bin/true` on a
local HighThroughputExecutor with W workers (give it as many as the glidewms
run has job slots), and prints the throughput from the first submit to the
last result. Parsl is a benchmark-only dependency (`pip install -e .[bench]`).

Run:  .venv/bin/python bench/parsl_true.py [--jobs 3000] [--workers 32]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time


def run(jobs: int, workers: int) -> float:
    """jobs/s of N `/bin/true` bash apps on W local HTEX workers."""
    import parsl
    from parsl.app.app import bash_app
    from parsl.config import Config
    from parsl.executors import HighThroughputExecutor
    from parsl.providers import LocalProvider

    # Parsl starts its interchange and workers as scripts of its environment
    bin_dir = os.path.dirname(sys.executable)
    os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")
    # ... and its workers import the app's module (this file) by name
    here = os.path.dirname(os.path.abspath(__file__))
    os.environ["PYTHONPATH"] = here + os.pathsep + os.environ.get("PYTHONPATH", "")

    @bash_app
    def true_app() -> str:
        return "/bin/true"

    with tempfile.TemporaryDirectory() as tmp:
        config = Config(
            executors=[
                HighThroughputExecutor(
                    label="htex",
                    max_workers_per_node=workers,
                    cores_per_worker=1e-6,
                    provider=LocalProvider(init_blocks=1, min_blocks=1, max_blocks=1),
                )
            ],
            run_dir=tmp,
            strategy="none",
        )
        with parsl.load(config):
            for f in [true_app() for _ in range(workers * 2)]:  # warm up the workers
                f.result()
            t0 = time.monotonic()
            futures = [true_app() for _ in range(jobs)]
            failures = sum(1 for f in futures if f.result() != 0)
            elapsed = time.monotonic() - t0
        parsl.clear()
    if failures:
        raise SystemExit(f"{failures} parsl apps failed")
    return jobs / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--workers", type=int, default=32)
    args = parser.parse_args()
    rate = run(args.jobs, args.workers)
    print(
        f"machine: {platform.node()} {platform.machine()}, "
        f"{platform.python_implementation()} {platform.python_version()}"
    )
    print(
        f"| Parsl HTEX, {args.workers} workers: {args.jobs} `/bin/true` bash apps | "
        f"{rate:.1f} jobs/s |"
    )


if __name__ == "__main__":
    main()
