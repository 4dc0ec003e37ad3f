"""Pilot swarm: thousands of simulated pilots against one real pool process.

Each pilot is a coroutine of a client process (`--procs` of them, forked:
one event loop cannot carry 20,000 pilots next to the pool on two cores)
with its own keep-alive HTTP/1.1 connection (a minimal asyncio client: the
figure is the pool's, so the client must stay cheap) speaking the real
protocol (docs/protocol.md, as glidein/agent/exchange.py does): register
with a slot ad over many sites and entries, long-poll `cycle` for claims,
report completions in the next turn, and heartbeat over a small shared set
of connections (as the agent's heartbeat thread has its own). Heartbeats
follow the agent (`--heartbeats agent`): with a pool that renews leases in
turns (`turns_renew_leases`), only with claims and no turn for a period, so
an idle long-polling pilot sends none; with an older pool (main), every
`heartbeat_seconds`. `--heartbeats always` sends them every period anyway
(the cost of a heartbeat itself). The pool runs as `glidewms up` starts it
(its own process); the parent process only orchestrates and submits.

Phases, for each pilot count:
  idle    every pilot long-polls, no job: pool CPU per idle pilot per second,
          heartbeats/s and their latency, RSS, open connections;
  single  one job submitted at a time while all pilots wait: time until a
          pilot holds its claim, and the pool CPU it cost (the herd);
  steady  a steady job load (`rate` jobs/s submitted in batches every 0.1 s,
          each "running" 1-3 s): turn latency (a cycle that carries
          completions) p50/p99, jobs/s completed, pool CPU per job.

Run:  .venv/bin/python bench/pilot_swarm.py --pilots 1000 [--steady 20] [--idle 15]
      [--procs 2] [--heartbeats agent|always]
      [--postgres]   (the pool on a PostgreSQL server of its own, a separate process)
Baseline: `env -u PYTHONPATH /work/main/.venv/bin/python bench/pilot_swarm.py ...`
runs this script against main's installed package (its pool heartbeats as before).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import queue
import random
import resource
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from glidewms.client import ClientSettings, PoolClient
from glidewms.launcher import Installation, Options
from glidewms.security.tokens import TokenIssuer
from glidewms.submit import parse_submit

SITES = [f"T{tier}_XX_Site{i:03d}" for i, tier in zip(range(120), [1, 2, 2, 3] * 30, strict=True)]
ENTRIES_PER_SITE = 4


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def open_sockets(pid: int) -> int:
    n = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:"):
                n += 1
        except OSError:
            pass
    return n


def slot_ad(i: int, rng: random.Random) -> dict[str, Any]:
    """A pilot's slot as a real one looks: site, entry, cores, memory..."""
    site = SITES[i % len(SITES)]
    cpus = rng.choice([1, 1, 4, 8, 8])
    return {
        "Cpus": cpus,
        "Memory": 2000 * cpus,
        "Disk": 20_000_000 * cpus,
        "GLIDEIN_Site": site,
        "GLIDEIN_Entry_Name": f"{site}_ce{i % ENTRIES_PER_SITE}",
        "GLIDEIN_ResourceName": site,
        "GLIDEIN_CPUS": cpus,
        "OpSys": "LINUX",
        "Arch": "X86_64",
        "OpSysAndVer": "AlmaLinux9",
        "HAS_SINGULARITY": True,
        "HAS_CVMFS_cms_cern_ch": True,
        "GLIDEIN_MaxMemMBs": 2000 * cpus,
    }


class Conn:
    """One keep-alive HTTP/1.1 connection (Content-Length bodies only)."""

    def __init__(self, host: str, port: int, token: str) -> None:
        self.host, self.port = host, port
        self.auth = f"Authorization: Bearer {token}\r\n"
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def call(self, path: str, body: Any) -> tuple[int, Any]:
        """One request; a kept connection the pool closed meanwhile (uvicorn
        drops one idle for 5 s) is opened anew and the request sent again,
        as the agent's HTTP client does."""
        try:
            return await self._call(path, body)
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            self.close()
            return await self._call(path, body)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def _call(self, path: str, body: Any) -> tuple[int, Any]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        data = json.dumps(body).encode()
        head = (
            f"POST /api/v1/{path} HTTP/1.1\r\nHost: {self.host}\r\n{self.auth}"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
        )
        self.writer.write(head.encode() + data)
        await self.writer.drain()
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionError("the pool closed the connection")
        status = int(status_line.split()[1])
        length = 0
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.decode().partition(":")
            if name.lower() == "content-length":
                length = int(value)
        payload = await self.reader.readexactly(length) if length else b""
        return status, json.loads(payload) if payload else None


class Swarm:
    """The pilots of one worker process (indices `first`..`first + n - 1`)."""

    def __init__(
        self,
        host: str,
        port: int,
        token: str,
        heartbeat_conns: int,
        heartbeats: str,
        claims_out: Any,
    ) -> None:
        self.host, self.port, self.token = host, port, token
        self.hb = [Conn(host, port, token) for _ in range(heartbeat_conns)]
        self.hb_locks = [asyncio.Lock() for _ in self.hb]
        self.heartbeats = heartbeats  # "agent": as the agent does now; "always": every period
        self.claims_out = claims_out  # a queue the single phase's claims go to (or None)
        self.report_claims = False
        self.wait = 60.0  # seconds an idle pilot's long-poll asks for (--wait)
        self.run_seconds = 0.0  # how long a claimed job "runs"
        self.turn_lat: list[float] = []  # cycles that carried completions
        self.hb_lat: list[float] = []
        self.completed = 0
        self.registered = 0
        self.errors: list[str] = []
        self.stop = False

    async def pilot(self, i: int) -> None:
        rng = random.Random(i)
        conn = Conn(self.host, self.port, self.token)
        slot = slot_ad(i, rng)
        cpus = slot["Cpus"]
        status, answer = await conn.call(
            "pilots", {"slot": slot, "glidein_id": f"{slot['GLIDEIN_Entry_Name']}-{i}"}
        )
        if status != 201:
            self.errors.append(f"register {status} {answer}")
            return
        self.registered += 1
        pid, period = answer["pilot_id"], float(answer["heartbeat_seconds"])
        # a pool that renews leases in turns: heartbeat only as the agent does
        # (exchange.heartbeat_delay); an older one (main): every period
        renews = bool(answer.get("turns_renew_leases")) and self.heartbeats == "agent"
        held: list[str] = []
        state = {"in_turn": False, "contact": time.monotonic()}
        hb = (
            asyncio.create_task(self.heartbeat_loop(pid, period, held, rng, renews, state))
            if self.hb
            else None
        )
        try:
            while not self.stop:
                if held and self.run_seconds:
                    await asyncio.sleep(self.run_seconds * rng.uniform(0.5, 1.5))
                done = [
                    {"claim_id": c, "exit_code": 0, "outputs": [], "wall_seconds": 1.0}
                    for c in held
                ]
                body: dict[str, Any] = {
                    "completions": done,
                    "max_jobs": cpus,
                    "free": {"cpus": cpus, "memory": 2000 * cpus},
                    "wait": 0 if done else self.wait,
                }
                if renews:
                    body["claims"] = []  # all it held are in `completions`
                t0 = time.perf_counter()
                state["in_turn"] = True
                try:
                    status, answer = await conn.call(f"pilots/{pid}/cycle", body)
                finally:
                    state["in_turn"] = False
                now = time.perf_counter()
                if status != 200:
                    self.errors.append(f"cycle {status} {answer}")
                    return
                state["contact"] = time.monotonic()
                if done:
                    self.turn_lat.append(now - t0)
                    self.completed += sum(1 for ok in answer["completed"].values() if ok)
                held[:] = [c["claim_id"] for c in answer["claims"]]
                if self.report_claims and self.claims_out is not None:
                    for c in answer["claims"]:
                        self.claims_out.put((c["job_id"], now))
        except (ConnectionError, OSError, asyncio.IncompleteReadError) as exc:
            self.errors.append(f"pilot {i}: {exc!r}")
        finally:
            if hb is not None:
                hb.cancel()

    async def heartbeat_loop(
        self,
        pid: str,
        period: float,
        held: list[str],
        rng: random.Random,
        renews: bool,
        state: dict[str, Any],
    ) -> None:
        await asyncio.sleep(rng.uniform(0, period))  # pilots start at different times
        k = rng.randrange(len(self.hb))
        while not self.stop:
            if renews:  # exchange.heartbeat_delay: held claims, no turn for a period
                holds = bool(held)
                if state["in_turn"] and not holds:
                    await asyncio.sleep(period)
                    continue
                wait = state["contact"] + period - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                    continue
            state["contact"] = time.monotonic()
            async with self.hb_locks[k]:
                t0 = time.perf_counter()
                try:
                    status, _ = await self.hb[k].call(f"pilots/{pid}/heartbeat", {"claims": held})
                except (ConnectionError, OSError, asyncio.IncompleteReadError) as exc:
                    self.hb[k].close()
                    self.errors.append(f"heartbeat: {exc!r}")
                    status = 0
                self.hb_lat.append(time.perf_counter() - t0)
            if status != 200:
                self.errors.append(f"heartbeat {status}")
            if not renews:
                await asyncio.sleep(period)


def worker(
    host: str,
    port: int,
    token: str,
    first: int,
    n: int,
    heartbeat_conns: int,
    heartbeats: str,
    wait: float,
    pipe: Any,
    claims_out: Any,
) -> None:
    """One client process: `n` pilots in one event loop; answers the parent's
    commands on `pipe` (stats, marks, the job run time, stop)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    async def main() -> None:
        swarm = Swarm(host, port, token, heartbeat_conns, heartbeats, claims_out)
        swarm.wait = wait
        tasks: list[asyncio.Task[None]] = []

        async def register() -> None:
            for i in range(first, first + n):
                tasks.append(asyncio.create_task(swarm.pilot(i)))
                if (i - first) % 100 == 99:  # do not overrun the listen backlog
                    while swarm.registered < i - first - 200 and not swarm.errors:
                        await asyncio.sleep(0.01)

        starter = asyncio.create_task(register())
        loop = asyncio.get_running_loop()
        marks = (0, 0, 0)
        while True:
            command, arg = await loop.run_in_executor(None, pipe.recv)
            if command == "stats":
                reply: Any = {
                    "registered": swarm.registered,
                    "errors": len(swarm.errors),
                    "error_samples": swarm.errors[:3],
                }
            elif command == "mark":
                marks = (len(swarm.turn_lat), len(swarm.hb_lat), swarm.completed)
                reply = None
            elif command == "since_mark":
                reply = {
                    "turn_lat": swarm.turn_lat[marks[0] :],
                    "hb_lat": swarm.hb_lat[marks[1] :],
                    "completed": swarm.completed - marks[2],
                    "errors": len(swarm.errors),
                    "error_samples": sorted({e[:120] for e in swarm.errors})[:3],
                    "error_kinds": dict(Counter(kind(e) for e in swarm.errors)),
                }
            elif command == "report_claims":
                swarm.report_claims = bool(arg)
                reply = None
            elif command == "run_seconds":
                swarm.run_seconds = float(arg)
                reply = None
            else:  # stop
                swarm.stop = True
                starter.cancel()
                for t in tasks:
                    t.cancel()
                await asyncio.gather(starter, *tasks, return_exceptions=True)
                pipe.send(None)
                return
            pipe.send(reply)

    asyncio.run(main())


class Workers:
    """The client processes, asked together."""

    def __init__(self, args: argparse.Namespace, host: str, port: int, token: str) -> None:
        ctx = multiprocessing.get_context("fork")
        self.claims: Any = ctx.Queue()
        self.pipes = []
        self.procs = []
        per = [
            args.pilots // args.procs + (k < args.pilots % args.procs) for k in range(args.procs)
        ]
        hb_conns = max(1, args.heartbeat_conns // args.procs) if args.heartbeat_conns else 0
        first = 0
        for n in per:
            mine, theirs = ctx.Pipe()
            proc = ctx.Process(
                target=worker,
                args=(
                    host,
                    port,
                    token,
                    first,
                    n,
                    hb_conns,
                    args.heartbeats,
                    args.wait,
                    theirs,
                    self.claims,
                ),
                daemon=True,
            )
            proc.start()
            self.pipes.append(mine)
            self.procs.append(proc)
            first += n

    def ask(self, command: str, arg: Any = None) -> list[Any]:
        for pipe in self.pipes:
            pipe.send((command, arg))
        return [pipe.recv() for pipe in self.pipes]

    def stop(self) -> None:
        try:
            self.ask("stop")
        finally:
            for proc in self.procs:
                proc.join(10)
                if proc.is_alive():
                    proc.kill()


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] * 1000


def window(workers: Workers) -> dict[str, Any]:
    """What every worker saw since the last mark, together."""
    parts = workers.ask("since_mark")
    return {
        "turn_lat": [x for p in parts for x in p["turn_lat"]],
        "hb_lat": [x for p in parts for x in p["hb_lat"]],
        "completed": sum(p["completed"] for p in parts),
        "errors": sum(p["errors"] for p in parts),
        "error_samples": [e for p in parts for e in p["error_samples"]][:3],
        "error_kinds": dict(sum((Counter(p["error_kinds"]) for p in parts), Counter())),
    }


def kind(error: str) -> str:
    """An error without its pilot: `cycle 410`, `pilot: ConnectionResetError`..."""
    words = error.replace("(", " ").split()
    if words[0] == "pilot" and len(words) > 2:
        return f"pilot: {words[2]}"
    return " ".join(words[:2])


def run(
    args: argparse.Namespace, url: str, token: str, client: PoolClient, pool_pid: int, tmp: Path
) -> dict[str, Any]:
    host, port = url.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)
    out: dict[str, Any] = {"pilots": args.pilots, "procs": args.procs, "load_start": loadavg()}
    t0 = time.perf_counter()
    workers = Workers(args, host, int(port), token)
    try:
        return phases(args, workers, client, pool_pid, tmp, out, t0)
    finally:
        workers.stop()


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def phases(
    args: argparse.Namespace,
    workers: Workers,
    client: PoolClient,
    pool_pid: int,
    tmp: Path,
    out: dict[str, Any],
    t0: float,
) -> dict[str, Any]:
    last_report = time.monotonic()
    while True:
        stats = workers.ask("stats")
        registered = sum(s["registered"] for s in stats)
        errors = [e for s in stats for e in s["error_samples"]]
        if errors:
            raise SystemExit(f"at {registered} pilots: {errors[:3]}")
        if registered >= args.pilots:
            break
        if time.monotonic() - last_report > 10:
            last_report = time.monotonic()
            print(f"  {registered} registered, load {loadavg()}", file=sys.stderr, flush=True)
        time.sleep(0.2)
    out["register_s"] = time.perf_counter() - t0
    out["register_per_s"] = args.pilots / out["register_s"]
    time.sleep(3)  # every pilot in its long-poll

    # idle: long-polls (and heartbeats, if any) only
    workers.ask("mark")
    cpu0, w0 = cpu_seconds(pool_pid), time.perf_counter()
    time.sleep(args.idle)
    span = time.perf_counter() - w0
    idle_cpu = cpu_seconds(pool_pid) - cpu0
    seen = window(workers)
    hbs = seen["hb_lat"]
    out.update(
        idle_cpu_per_pilot_s_us=idle_cpu / span / args.pilots * 1e6,
        idle_cpu_frac=idle_cpu / span,
        heartbeats_per_s=len(hbs) / span,
        pool_cpu_per_heartbeat_ms=idle_cpu / len(hbs) * 1000 if hbs else None,
        hb_p50=pct(hbs, 0.5),
        hb_p99=pct(hbs, 0.99),
        rss_mb=rss_mb(pool_pid),
        sockets=open_sockets(pool_pid),
        idle_load=loadavg(),
        idle_errors=seen["errors"],
        idle_error_kinds=seen["error_kinds"],
    )

    # single: one job at a time, all pilots idle
    desc = parse_submit(
        "executable = /bin/true\ntransfer_executable = false\nrequest_memory = 100\nqueue 1\n",
        "one.sub",
        tmp,
    )
    claimed: dict[str, float] = {}
    workers.ask("report_claims", True)
    starts = []
    single_cpu0, single_w0 = cpu_seconds(pool_pid), time.perf_counter()
    for _ in range(args.singles):
        t_submit = time.perf_counter()
        [jid] = client.submit(desc)["job_ids"]
        deadline = time.monotonic() + 60
        while jid not in claimed:
            try:
                got, at = workers.claims.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise SystemExit(f"job {jid} did not start within 60 s") from None
            claimed[got] = at
        starts.append(claimed[jid] - t_submit)
        time.sleep(0.3)  # the pilot reports it; the others settle
    workers.ask("report_claims", False)
    single_cpu = (cpu_seconds(pool_pid) - single_cpu0) - idle_cpu / span * (
        time.perf_counter() - single_w0
    )
    out.update(
        start_p50=statistics.median(starts) * 1000,
        start_max=max(starts) * 1000,
        single_cpu_ms=single_cpu / args.singles * 1000,
    )
    if args.steady <= 0:
        return out

    # steady: `rate` jobs/s arrive (a submit every 0.1 s), each "runs" 1-3 s
    workers.ask("run_seconds", 2.0)
    batch = max(1, int(args.rate / 10))
    many = parse_submit(
        "executable = /bin/true\ntransfer_executable = false\nrequest_memory = 100\n"
        f"queue {batch}\n",
        "many.sub",
        tmp,
    )
    submitted = 0
    stop = threading.Event()

    def feed() -> None:
        nonlocal submitted
        next_at = time.monotonic()
        while not stop.is_set():
            client.submit(many)
            submitted += batch
            next_at += 0.1
            stop.wait(max(0.0, next_at - time.monotonic()))

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    try:
        time.sleep(5.0)  # ramp up
        workers.ask("mark")
        cpu0, w0, sub0 = cpu_seconds(pool_pid), time.perf_counter(), submitted
        time.sleep(args.steady)
        span = time.perf_counter() - w0
        steady_cpu = cpu_seconds(pool_pid) - cpu0
        seen = window(workers)
        submitted_per_s = (submitted - sub0) / span
    finally:
        stop.set()
        feeder.join(30)
    jobs = seen["completed"]
    out.update(
        jobs_per_s=jobs / span,
        submitted_per_s=submitted_per_s,
        turn_p50=pct(seen["turn_lat"], 0.5),
        turn_p99=pct(seen["turn_lat"], 0.99),
        cpu_per_job_ms=steady_cpu / max(1, jobs) * 1000,
        steady_cpu_frac=steady_cpu / span,
        steady_heartbeats_per_s=len(seen["hb_lat"]) / span,
        steady_hb_p99=pct(seen["hb_lat"], 0.99),
        steady_rss_mb=rss_mb(pool_pid),
        steady_load=loadavg(),
        errors=seen["errors"],
        error_samples=seen["error_samples"],
        error_kinds=seen["error_kinds"],
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pilots", type=int, default=1000)
    parser.add_argument("--idle", type=float, default=15.0, help="seconds of the idle phase")
    parser.add_argument("--singles", type=int, default=10, help="single jobs, one at a time")
    parser.add_argument(
        "--steady", type=float, default=20.0, help="seconds measured under load (0: none)"
    )
    parser.add_argument("--rate", type=float, default=600.0, help="offered jobs/s")
    parser.add_argument(
        "--wait",
        type=float,
        default=60.0,
        help="an idle pilot's long-poll (the pool's max_claim_wait caps it: --pool-config)",
    )
    parser.add_argument(
        "--postgres",
        action="store_true",
        help="the pool on a PostgreSQL server of its own (tests/components/postgres.py)",
    )
    parser.add_argument("--heartbeat-conns", type=int, default=32, help="0: no heartbeats")
    parser.add_argument(
        "--heartbeats",
        choices=("agent", "always"),
        default="agent",
        help="agent: as the agent does (with a pool that renews leases in turns, only "
        "with claims and no turn for a period); always: every period (the old agent)",
    )
    parser.add_argument(
        "--procs", type=int, default=2, help="client processes the pilots are spread over"
    )
    parser.add_argument(
        "--pool-config",
        action="append",
        default=[],
        metavar="'KEY: VALUE'",
        help="a line added to the pool's configuration (repeatable)",
    )
    keep = os.environ.get("PILOT_SWARM_KEEP")
    parser.add_argument(
        "--keep",
        type=Path,
        default=Path(keep) if keep else None,
        help="copy the pool's log here at the end (default: $PILOT_SWARM_KEEP)",
    )
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = args.pilots + 100  # the pool: one socket per pilot, and its own
    if need > hard:
        print(f"the pool needs ~{need} fds, the hard limit is {hard}: expect failures")
    # the pool (a child) inherits it; each worker sets its own to the hard limit
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    cluster = None
    with tempfile.TemporaryDirectory() as tmp:
        inst = Installation(Options(state_dir=Path(tmp) / "state"))
        inst.prepare()
        inst.path("run").mkdir(parents=True, exist_ok=True)
        inst.path("logs").mkdir(parents=True, exist_ok=True)
        if args.postgres:
            sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
            from tests.components.postgres import PostgresCluster

            cluster = PostgresCluster()
            with open(inst.path("config", "pool.yaml"), "a") as config:
                config.write(f"\ndatabase_url: {cluster.database()}\n")
        if args.pool_config:
            with open(inst.path("config", "pool.yaml"), "a") as config:
                config.write("\n" + "".join(f"{line}\n" for line in args.pool_config))
        inst._spawn("pool")  # the pool only: no factory, frontend or real pilots
        try:
            inst._await_url("pool", 60)
            url = inst.services["pool"].url
            issuer = TokenIssuer.from_file(inst.path("keys", "issuer.key"))
            token = issuer.issue("swarm", ["pilot"], 3600, fe="frontend", group="main")
            client = PoolClient(ClientSettings(url, inst.token_file("user")))
            pid = inst.services["pool"].process.pid
            out = run(args, url, token, client, pid, Path(tmp))
        finally:
            inst.stop()
            if args.keep is not None:
                args.keep.mkdir(parents=True, exist_ok=True)
                for log in inst.path("logs").glob("*"):
                    (args.keep / log.name).write_bytes(log.read_bytes())
            if cluster is not None:
                cluster.stop()
    out["database"] = "PostgreSQL (own server, fsync off)" if args.postgres else "SQLite"
    out["machine"] = (
        f"{platform.node()} {platform.machine()} {os.cpu_count()} cores, "
        f"{platform.python_implementation()} {platform.python_version()}"
    )
    out["load_end"] = loadavg()
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in out.items()}))


if __name__ == "__main__":
    main()
