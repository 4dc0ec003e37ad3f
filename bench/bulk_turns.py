"""Pilot turns during a bulk action: hold, edit, release, remove a huge idle queue.

A real pool process (as `glidewms up` starts it) holds `--jobs` idle jobs
that no pilot matches (clusters waiting for a site that is not there yet);
meanwhile `--pilots` simulated pilots (bench/pilot_swarm.py's client) run a
steady stream of small jobs. Then the user acts on all the idle jobs by
constraint (`--actions`, default hold, edit, release, remove): actions.py
does it in batches of `bulk_batch_size`, taking the store lock per batch, so
turns should keep being served. Reports the turn latency p50/p99/max before
(`baseline`), during each action, and after the last one, and how long each
took.

Loading the queue (`--load`):
- `direct` (default): before the pool process starts, the bench opens the
  pool's database itself (a PoolStore, as the pool would) and queues the
  jobs with Queue.submit in clusters of 100k; the pool then starts on that
  queue as after a restart (it rebuilds its idle index from the database).
  No HTTP body (`max_submit_bytes` caps one at ~130k such jobs), no JSON of
  a million ads, no uploads: 1M jobs load in about a minute on the 2-core
  VM, where submits over HTTP took minutes and GBs. What is measured (the
  actions and the turns) happens in the pool process either way.
- `submit`: POST /jobs of 100k jobs each, against the running pool.

`--constraint column` selects the jobs by ClusterId (SQL does it);
`--constraint ad` by an attribute of their ads (`BenchBig`), which the pool
evaluates as a ClassAd (once per distinct stored ad text).
`--postgres` runs the pool on a throwaway PostgreSQL (tests/components/
postgres.py), a separate server process.

Run:  .venv/bin/python bench/bulk_turns.py [--jobs 200000] [--pilots 200] [--rate 200]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from pilot_swarm import Swarm, cpu_seconds, pct, rss_mb

from glidewms.client import ClientSettings, PoolClient
from glidewms.db import make_engine, sqlite_url
from glidewms.launcher import Installation, Options
from glidewms.pool.jobs import NewJob
from glidewms.pool.store import PoolStore
from glidewms.security.tokens import TokenIssuer
from glidewms.submit import parse_submit

CHUNK = 100_000  # jobs per cluster (one submit body stays under max_submit_bytes)


def big_jobs(tmp: Path, chunk: int) -> Any:
    return parse_submit(
        "executable = /bin/true\ntransfer_executable = false\nrequest_memory = 100\n"
        'requirements = TARGET.GLIDEIN_Site == "NOWHERE"\n+BenchBig = true\n'
        f"queue {chunk}\n",
        "big.sub",
        tmp,
    )


def load_direct(
    database_url: str, owner: str, n: int, chunk: int, tmp: Path
) -> tuple[list[int], float]:
    """Queue `n` jobs in clusters of `chunk` straight into the pool's
    database, before the pool process starts (see the module docstring)."""
    t0 = time.perf_counter()
    store = PoolStore(make_engine(database_url))
    try:
        template = big_jobs(tmp, 1).jobs[0]
        job = NewJob(ad_text=template.ad_text(), sandbox=[], args=template.args, env=template.env)
        clusters = [store.queue.submit(owner, [job] * chunk)[0] for _ in range(n // chunk)]
    finally:
        store.close()
    return clusters, time.perf_counter() - t0


async def run(
    args: argparse.Namespace,
    loaded: list[int],
    url: str,
    token: str,
    user: str,
    client: PoolClient,
    pid: int,
    tmp: Path,
) -> dict[str, Any]:
    out: dict[str, Any] = {"jobs": args.jobs, "pilots": args.pilots}
    chunk = min(args.jobs, CHUNK)
    if args.load == "submit":
        t0 = time.perf_counter()
        clusters = [
            (await asyncio.to_thread(client.submit, big_jobs(tmp, chunk)))["cluster_id"]
            for _ in range(args.jobs // chunk)
        ]
        out["submit_s"] = time.perf_counter() - t0
    else:
        clusters = loaded
    if args.constraint == "column":
        constraint = f"ClusterId >= {min(clusters)} && ClusterId <= {max(clusters)}"
    else:
        constraint = "BenchBig =?= true"
    out["constraint"] = constraint
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
        for action in args.actions.split(","):
            marks = (len(swarm.turn_lat), swarm.completed, time.perf_counter(), cpu_seconds(pid))
            if action == "edit":
                body = {"constraint": constraint, "attribute": "BenchNote", "value": '"edited"'}
            else:
                body = {"constraint": constraint, "reason": "bench"}
            r = await http.post(f"/jobs/{action}", json=body)
            r.raise_for_status()
            window(action, *marks)
            out[action]["changed"] = len(r.json()["changed"])
            out[action]["jobs_acted_per_s"] = round(out[action]["changed"] / out[action]["seconds"])
    marks = (len(swarm.turn_lat), swarm.completed, time.perf_counter(), cpu_seconds(pid))
    await asyncio.sleep(args.baseline)
    window("baseline_after", *marks)
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
    parser.add_argument("--actions", default="hold,edit,release,remove")
    parser.add_argument("--load", choices=("direct", "submit"), default="direct")
    parser.add_argument("--constraint", choices=("column", "ad"), default="column")
    parser.add_argument("--batch", type=int, default=0, help="bulk_batch_size (0: default)")
    parser.add_argument("--postgres", action="store_true")
    args = parser.parse_args()
    if args.jobs % CHUNK and args.jobs > CHUNK:
        parser.error(f"--jobs: a multiple of {CHUNK}")
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        inst = Installation(Options(state_dir=Path(tmp) / "state"))
        inst.prepare()
        config_path = inst.path("config", "pool.yaml")
        config = yaml.safe_load(config_path.read_text())
        if args.postgres:
            sys.path.insert(0, str(Path(__file__).parent.parent))
            from tests.components.postgres import PostgresCluster

            cluster = PostgresCluster()
            stack.callback(cluster.stop)
            config["database_url"] = cluster.database()
        if args.batch:
            config["bulk_batch_size"] = args.batch
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        loaded: list[int] = []
        load_s = None
        if args.load == "direct":
            state = Path(config["state_dir"])
            state.mkdir(parents=True, exist_ok=True)
            db = config.get("database_url") or sqlite_url(state / "pool.sqlite")
            chunk = min(args.jobs, CHUNK)
            loaded, load_s = load_direct(db, inst.options.user, args.jobs, chunk, Path(tmp))
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
            print(f"pool pid {pid}", file=sys.stderr, flush=True)  # for a profiler
            out = asyncio.run(run(args, loaded, url, token, user_token, client, pid, Path(tmp)))
            out["load"], out["load_s"], out["postgres"] = args.load, load_s, args.postgres
            log = inst.path("logs", "pool.log").read_text(errors="replace").splitlines()
            out["pool_log"] = [line[-200:] for line in log if "bulk " in line]
        finally:
            inst.stop()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
