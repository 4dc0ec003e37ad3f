"""Pilot turns during a bulk action: hold, then release, a huge idle cluster.

A real pool process (as `glidewms up` starts it) holds `--jobs` idle jobs
that no pilot matches (a cluster waiting for a site that is not there yet);
meanwhile `--pilots` simulated pilots (bench/pilot_swarm.py's client) run a
steady stream of small jobs. Then the user holds the whole cluster by
constraint, and releases it: actions.py does it in batches of
`bulk_batch_size`, taking the store lock per batch, so turns should keep
being served. Reports the turn latency p50/p99/max before and during each
action, and how long each took.

Run:  .venv/bin/python bench/bulk_turns.py [--jobs 200000] [--pilots 200] [--rate 200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from pilot_swarm import Swarm, cpu_seconds, pct, rss_mb

from glidewms.client import ClientSettings, PoolClient
from glidewms.launcher import Installation, Options
from glidewms.security.tokens import TokenIssuer
from glidewms.submit import parse_submit


async def run(
    args: argparse.Namespace,
    url: str,
    token: str,
    user: str,
    client: PoolClient,
    pid: int,
    tmp: Path,
) -> dict[str, Any]:
    out: dict[str, Any] = {"jobs": args.jobs, "pilots": args.pilots}
    chunk = min(args.jobs, 100_000)  # one submit body stays under max_submit_bytes
    big = parse_submit(
        "executable = /bin/true\ntransfer_executable = false\nrequest_memory = 100\n"
        'requirements = TARGET.GLIDEIN_Site == "NOWHERE"\n'
        f"queue {chunk}\n",
        "big.sub",
        tmp,
    )
    t0 = time.perf_counter()
    clusters = [
        (await asyncio.to_thread(client.submit, big))["cluster_id"]
        for _ in range(args.jobs // chunk)
    ]
    constraint = f"ClusterId >= {min(clusters)} && ClusterId <= {max(clusters)}"
    out["submit_s"] = time.perf_counter() - t0
    out["rss_after_submit_mb"] = rss_mb(pid)

    host, port = url.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)
    swarm = Swarm(host, int(port), token, args.pilots, 8)
    swarm.run_seconds = 0.2
    ready: asyncio.Queue[int] = asyncio.Queue()
    tasks = [asyncio.create_task(swarm.pilot(i, ready)) for i in range(args.pilots)]
    while ready.qsize() < args.pilots:
        if swarm.errors:
            raise SystemExit(swarm.errors[:3])
        await asyncio.sleep(0.05)
    batch = max(1, int(args.rate / 10))
    small = parse_submit(
        "executable = /bin/true\ntransfer_executable = false\nrequest_memory = 100\n"
        f"queue {batch}\n",
        "small.sub",
        tmp,
    )

    async def feed() -> None:
        next_at = time.monotonic()
        while True:
            await asyncio.to_thread(client.submit, small)
            next_at += 0.1
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))

    feeder = asyncio.create_task(feed())
    await asyncio.sleep(5)  # ramp up

    def window(name: str, lat0: int, done0: int, w0: float, cpu0: float) -> None:
        span = time.perf_counter() - w0
        lat = swarm.turn_lat[lat0:]
        out[name] = {
            "seconds": round(span, 2),
            "turns": len(lat),
            "turn_p50": round(pct(lat, 0.5), 1),
            "turn_p99": round(pct(lat, 0.99), 1),
            "turn_max": round(max(lat) * 1000 if lat else float("nan"), 1),
            "jobs_per_s": round((swarm.completed - done0) / span, 1),
            "pool_cpu_frac": round((cpu_seconds(pid) - cpu0) / span, 2),
            "load": round(os.getloadavg()[0], 2),
        }

    marks = (len(swarm.turn_lat), swarm.completed, time.perf_counter(), cpu_seconds(pid))
    await asyncio.sleep(args.baseline)
    window("baseline", *marks)
    headers = {"Authorization": f"Bearer {user}"}
    async with httpx.AsyncClient(base_url=f"{url}/api/v1", headers=headers, timeout=3600) as http:
        for action in ("hold", "release"):
            marks = (len(swarm.turn_lat), swarm.completed, time.perf_counter(), cpu_seconds(pid))
            r = await http.post(
                f"/jobs/{action}",
                json={"constraint": constraint, "reason": "bench"},
            )
            r.raise_for_status()
            window(action, *marks)
            out[action]["changed"] = len(r.json()["changed"])
    out["rss_end_mb"] = rss_mb(pid)
    out["errors"] = len(swarm.errors)
    out["error_samples"] = sorted({e[:120] for e in swarm.errors})[:3]
    feeder.cancel()
    swarm.stop = True
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, feeder, return_exceptions=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200_000)
    parser.add_argument("--pilots", type=int, default=200)
    parser.add_argument("--rate", type=float, default=200.0, help="small jobs/s submitted")
    parser.add_argument("--baseline", type=float, default=10.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        inst = Installation(Options(state_dir=Path(tmp) / "state"))
        inst.prepare()
        inst.path("run").mkdir(parents=True, exist_ok=True)
        inst.path("logs").mkdir(parents=True, exist_ok=True)
        inst._spawn("pool")
        try:
            inst._await_url("pool", 60)
            url = inst.services["pool"].url
            issuer = TokenIssuer.from_file(inst.path("keys", "issuer.key"))
            token = issuer.issue("swarm", ["pilot"], 3600, fe="frontend", group="main")
            user_token = inst.token_file("user").read_text().strip()
            client = PoolClient(ClientSettings(url, inst.token_file("user")))
            pid = inst.services["pool"].process.pid
            out = asyncio.run(run(args, url, token, user_token, client, pid, Path(tmp)))
        finally:
            inst.stop()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
