"""Benchmark: pilot startup and per-job wrapper overhead.

1. Bootstrap start → registered in the pool, stage warm: a real pool and a
   real factory (separate processes, loopback) serve the signed stage; the
   real glidein_startup.sh downloads and checks it (sha256 + Ed25519 with
   openssl), runs the standard validation scripts (container test run
   included) and starts the agent; the clock stops when the pool lists the
   pilot. The first run warms the page cache and is reported apart.
2. Per-job wrapper overhead: `/bin/true` run through the agent's JobProcess
   directly, in a bubblewrap container with the host image, and with a
   directory image.

Usage: .venv/bin/python bench/glidein_startup.py [--runs N] [--jobs N]
Prints a Markdown table for bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from glidewms.factory.stage import bootstrap_path
from glidewms.glidein.agent.container import Bind, ContainerSetup, wrap
from glidewms.glidein.agent.jobs import JobProcess, JobSpec, job_environment
from glidewms.launcher import Installation, Options
from glidewms.security.tokens import TokenIssuer


def wait_for(predicate, timeout: float = 60.0, step: float = 0.005):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise TimeoutError("condition not reached")


def spawn(inst: Installation, name: str) -> tuple[subprocess.Popen[bytes], str]:
    url_file = inst.path("run", f"{name}.url")
    url_file.parent.mkdir(parents=True, exist_ok=True)
    url_file.unlink(missing_ok=True)
    log = open(inst.path(f"{name}.log"), "ab")  # noqa: SIM115 (kept open for the child)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "glidewms",
            name,
            "--config",
            str(inst.path("config", f"{name}.yaml")),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    wait_for(url_file.is_file, 60)
    return proc, url_file.read_text().strip()


def _timestamp_lines(stream: Any, started: float, out: list[tuple[float, str]]) -> None:
    """Keep each stderr line of the pilot with the time it arrived (for --trace)."""
    for raw in iter(stream.readline, b""):
        out.append((time.monotonic() - started, raw.decode(errors="replace").rstrip()))


def bench_startup(runs: int, trace: bool = False) -> list[float]:
    root = Path(tempfile.mkdtemp(prefix="glidein_bench_"))
    inst = Installation(Options(state_dir=root))
    inst.prepare()
    procs = []
    try:
        pool_proc, pool = spawn(inst, "pool")
        factory_proc, factory = spawn(inst, "factory")
        procs = [pool_proc, factory_proc]
        stage = root / "factory" / "stage"
        manifest_sha = hashlib.sha256((stage / "manifest").read_bytes()).hexdigest()
        from glidewms.factory.stage import load_or_create_key, public_key_b64

        key = public_key_b64(load_or_create_key(root / "factory" / "keys" / "stage_signing.pem"))
        issuer = TokenIssuer.from_file(inst.path("keys", "issuer.key"))
        token = root / "pilot.token"
        token.write_text(issuer.issue("pilot", ["pilot"], 3600, fe="frontend", group="main"))
        token.chmod(0o600)
        admin = {"Authorization": "Bearer " + inst.token_file("admin").read_text().strip()}
        times = []
        for i in range(runs):
            gid = f"bench-{i}"
            started = time.monotonic()
            pilot = subprocess.Popen(
                [
                    "bash",
                    str(bootstrap_path()),
                    "--factory",
                    factory,
                    "--manifest-sha256",
                    manifest_sha,
                    "--manifest-key",
                    key,
                    "--pool",
                    pool,
                    "--glidein-id",
                    gid,
                    "--entry",
                    "bench",
                    "--site",
                    "BENCH",
                    "--idle-timeout",
                    "30",
                    "--work-dir",
                    str(root),
                ],
                env={**os.environ, "GLIDEIN_TOKEN_FILE": str(token)},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
            lines: list[tuple[float, str]] = []
            reader = threading.Thread(
                target=_timestamp_lines, args=(pilot.stderr, started, lines), daemon=True
            )
            reader.start()

            def registered(gid: str = gid) -> bool:
                listed = httpx.get(f"{pool}/api/v1/pilots", headers=admin).json()
                return any(p.get("glidein_id") == gid for p in listed)

            wait_for(registered)
            times.append(time.monotonic() - started)
            pilot.send_signal(signal.SIGTERM)
            pilot.wait(60)
            reader.join(10)
            if trace and i == runs - 1:
                print(f"trace of the last run (registered at {times[-1]:.3f} s):")
                for at, line in lines:
                    print(f"  {at:6.3f}  {line[:110]}")
        return times
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
        shutil.rmtree(root, ignore_errors=True)


def bench_wrapper(jobs: int) -> dict[str, float]:
    bwrap = shutil.which("bwrap")
    root = Path(tempfile.mkdtemp(prefix="glidein_wrap_"))
    rootfs = root / "rootfs"
    for name in ("etc", "usr", "proc", "dev", "tmp", "srv"):
        (rootfs / name).mkdir(parents=True)
    for name in ("bin", "lib", "lib64", "sbin"):
        (rootfs / name).symlink_to(f"usr/{name}")
    cases = {"no container": None}
    if bwrap:
        cases["bubblewrap, host image"] = (ContainerSetup("bwrap", bwrap), "host")
        cases["bubblewrap, directory image"] = (
            ContainerSetup("bwrap", bwrap, binds=(Bind("/usr", "/usr", True),)),
            str(rootfs),
        )
    results = {}
    try:
        for label, case in cases.items():
            samples = []
            for _ in range(jobs):
                sandbox = Path(tempfile.mkdtemp(dir=root))
                spec = JobSpec(cmd="/bin/true")
                env = job_environment(spec, str(sandbox), {})
                launcher = None
                if case is not None:
                    setup, image = case

                    def launcher(argv, e, setup=setup, image=image, sandbox=sandbox):  # type: ignore[no-untyped-def]
                        return wrap(setup, image, str(sandbox), argv, e)

                started = time.monotonic()
                assert JobProcess(spec, str(sandbox), env, launcher).run() == 0
                samples.append(time.monotonic() - started)
            results[label] = statistics.median(samples)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=6)
    parser.add_argument("--jobs", type=int, default=30)
    parser.add_argument(
        "--trace",
        action="store_true",
        help="print the last pilot's log lines with their arrival times",
    )
    options = parser.parse_args()
    times = bench_startup(options.runs, options.trace)
    warm = times[1:] or times
    wrapper = bench_wrapper(options.jobs)
    print(
        f"machine: {platform.node()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, {time.strftime('%Y-%m-%d')}"
    )
    print("\n| measure | result |\n|---|---|")
    print(f"| bootstrap start → registered, first run (cold) | {times[0]:.2f} s |")
    print(
        f"| bootstrap start → registered, warm, median of {len(warm)} | "
        f"{statistics.median(warm):.2f} s (min {min(warm):.2f}, max {max(warm):.2f}) |"
    )
    base = wrapper["no container"]
    for label, value in wrapper.items():
        extra = "" if label == "no container" else f" (+{(value - base) * 1000:.0f} ms)"
        print(
            f"| `/bin/true` through the job wrapper, {label}, median of {options.jobs} | "
            f"{value * 1000:.1f} ms{extra} |"
        )


if __name__ == "__main__":
    main()
