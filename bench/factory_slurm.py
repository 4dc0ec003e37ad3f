"""Factory benchmarks: bulk submission into a real local Slurm, and the converge loop.

1. `slurm`: a private slurmctld + slurmd (tests/components/slurm_cluster.py)
   and the real factory loop (store, planner, Slurm backend) with one entry
   allowed 1000 pilots in one cycle: seconds from the request until all 1000
   are known to the factory (a Slurm job ref and a state seen by squeue).
   Pilots are `sleep` stand-ins; all are cancelled at the end.
2. `converge`: 10k tracked pilots across 100 entries (2 frontends), backend
   answers from memory, so what is measured is the factory's own cycle:
   status refresh, planning for every (request, entry), state writes.

Run (as root, for the Slurm daemons):
    .venv/bin/python bench/factory_slurm.py [--pilots 1000] [--tracked 10000] [--entries 100]
Results go to stdout as Markdown; record them in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.components.slurm_cluster import slurm_cluster

from glidewms.config.factory import EntryConfig, FactoryConfig
from glidewms.db import make_engine, sqlite_url
from glidewms.factory.backends import (
    Backend,
    BackendContext,
    PilotLogs,
    PilotState,
    PilotSubmission,
)
from glidewms.factory.backends.slurm import SlurmBackend
from glidewms.factory.service import Factory
from glidewms.factory.stage import build_stage
from glidewms.factory.store import FactoryStore, Glidein, GlideinState


def make_factory(root: Path, entries: list[EntryConfig], backends: dict[str, Backend]) -> Factory:
    config = FactoryConfig(state_dir=root / "state", entries=entries, cycle_seconds=1)
    config.state_dir.mkdir(parents=True)
    (config.state_dir / "credentials").mkdir()
    store = FactoryStore(make_engine(sqlite_url(config.state_dir / "factory.db")))
    agent = root / "agent"
    agent.mkdir()
    (agent / "__main__.py").write_text("pass\n")
    stage = build_stage(config.state_dir, agent)
    return Factory(
        config, public_url="http://127.0.0.1:9", store=store, stage=stage, backends=backends
    )


def request(factory: Factory, frontend: str, wanted: dict[str, dict[str, object]]) -> None:
    token = factory.token_file(frontend, "main")
    token.parent.mkdir(parents=True, exist_ok=True)
    token.write_text("not-a-real-token\n")
    token.chmod(0o600)
    factory.store.put_request(frontend, "main", "http://127.0.0.1:8", wanted, time.time() + 86400)


async def bench_slurm(pilots: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        with slurm_cluster(root / "slurm", cpus=64) as slurm:
            bootstrap = root / "boot.sh"
            bootstrap.write_text("#!/bin/bash\nsleep 300\n")
            entry = EntryConfig(
                name="bench",
                site="BENCH",
                backend="slurm",
                cpus=1,
                memory=10,
                walltime=600,
                max_pilots=pilots,
                max_idle=pilots,
                max_per_cycle=pilots,
                batch={"env": slurm.env, "array_size": 1000},
            )
            context = BackendContext(
                state_dir=root / "state", bootstrap=bootstrap, entries={"bench": entry}
            )
            backend = SlurmBackend(context)
            factory = make_factory(root, [entry], {"slurm": backend})
            request(factory, "fe", {"bench": {"idle": pilots, "max_running": pilots}})
            start = time.perf_counter()
            await factory.converge()
            submitted = time.perf_counter() - start
            await factory.refresh()
            known = time.perf_counter() - start
            rows = factory.store.active()
            assert len(rows) == pilots, len(rows)
            assert all(g.backend_id for g in rows)
            status_start = time.perf_counter()
            seen = await backend.status([g.backend_id for g in rows if g.backend_id])
            status = time.perf_counter() - status_start
            unknown = sum(s is PilotState.unknown for s in seen.values())
            assert unknown == 0, f"{unknown} pilots unknown to squeue"
            slurm.run("scancel", "--name=glidewms-bench", timeout=60)
            return {
                "submit": submitted,
                "known": known,
                "status": status,
                "arrays": len(
                    {
                        g.backend_id.split("/")[1].split("_")[0]  # type: ignore[union-attr]
                        for g in rows
                    }
                ),
            }


class MemoryBackend(Backend):
    """Answers from a dict: the batch system is not what is measured here."""

    kind = "memory"

    def __init__(self) -> None:
        super().__init__(BackendContext(state_dir=Path("/nonexistent"), bootstrap=Path("/x")))
        self.jobs: dict[str, PilotState] = {}

    async def submit(self, entry: EntryConfig, pilots: Sequence[PilotSubmission]) -> list[str]:
        ids = [f"{entry.name}/{p.glidein_id}" for p in pilots]
        self.jobs.update(dict.fromkeys(ids, PilotState.queued))
        return ids

    async def status(self, backend_ids: Sequence[str]) -> dict[str, PilotState]:
        return {b: self.jobs.get(b, PilotState.unknown) for b in backend_ids}

    async def remove(self, backend_ids: Sequence[str]) -> None:
        for b in backend_ids:
            self.jobs[b] = PilotState.removed

    async def logs(self, backend_id: str) -> PilotLogs:
        return PilotLogs("", "")


async def bench_converge(tracked: int, n_entries: int, cycles: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        per_entry = tracked // n_entries
        entries = [
            EntryConfig(
                name=f"e{i}",
                site=f"S{i % 20}",
                backend="local",
                max_pilots=per_entry * 2,
                max_idle=per_entry * 2,
                max_per_cycle=10,
            )
            for i in range(n_entries)
        ]
        backend = MemoryBackend()
        factory = make_factory(root, entries, {"local": backend})
        now = time.time()
        rows = []
        for i, entry in enumerate(entries):
            for j in range(per_entry):
                frontend = "fe1" if j % 2 else "fe2"
                state = GlideinState.running if j % 3 else GlideinState.queued
                gid = f"{entry.name}-x-{j}"
                backend_id = f"{entry.name}/{gid}"
                backend.jobs[backend_id] = PilotState(state.value)
                rows.append(
                    Glidein(
                        glidein_id=gid,
                        entry=entry.name,
                        backend="local",
                        frontend=frontend,
                        group="main",
                        backend_id=backend_id,
                        state=state,
                        submitted_at=now - i,
                        updated_at=now - i,
                        exit_reason=None,
                        exit_code=None,
                        report=None,
                    )
                )
        factory.store.add_glideins(rows)
        for frontend in ("fe1", "fe2"):
            # Each frontend wants what it has (steady state) plus a little churn.
            request(
                factory,
                frontend,
                {
                    e.name: {"idle": per_entry // 6, "max_running": per_entry, "remove": "IDLE"}
                    for e in entries
                },
            )
        times = []
        for k in range(cycles):
            # Churn: a few pilots end every cycle, so refresh writes and planning submits.
            ended = [b for b in list(backend.jobs)[k * 50 : k * 50 + 50]]
            for b in ended:
                backend.jobs[b] = PilotState.finished
            start = time.perf_counter()
            await factory.cycle()
            times.append(time.perf_counter() - start)
        active = len(factory.store.active())
        return {
            "p50": statistics.median(times),
            "max": max(times),
            "active": active,
            "cycles": cycles,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pilots", type=int, default=1000)
    parser.add_argument("--tracked", type=int, default=10000)
    parser.add_argument("--entries", type=int, default=100)
    parser.add_argument("--cycles", type=int, default=10)
    parser.add_argument("--skip-slurm", action="store_true")
    args = parser.parse_args()
    print(f"machine: {platform.node()} {platform.platform()}, Python {platform.python_version()}")
    print("\n| measure | value |\n|---|---|")
    if not args.skip_slurm:
        s = asyncio.run(bench_slurm(args.pilots))
        print(
            f"| {args.pilots} pilots into Slurm: sbatch of {s['arrays']} array(s) | "
            f"{s['submit']:.2f} s |"
        )
        print(
            f"| {args.pilots} pilots: request → all known (ref + squeue state) | "
            f"{s['known']:.2f} s |"
        )
        print(f"| one status refresh of {args.pilots} pilots (squeue) | {s['status']:.2f} s |")
    c = asyncio.run(bench_converge(args.tracked, args.entries, args.cycles))
    print(
        f"| converge cycle, {c['active']} tracked pilots / {args.entries} entries / "
        f"2 frontends, p50 of {c['cycles']} | {c['p50']:.2f} s |"
    )
    print(f"| same, slowest cycle | {c['max']:.2f} s |")


if __name__ == "__main__":
    main()
