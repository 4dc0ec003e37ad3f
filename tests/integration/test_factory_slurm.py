"""The factory against a real Slurm (slurmctld + slurmd on localhost, started here).

The cluster comes from tests/components/slurm_cluster.py (a session fixture;
`scontrol shutdown` at the end). The pilot is a stand-in bootstrap that
records its argv and environment checks, then waits for a release file: the
point here is the factory and Slurm, not the pilot (tests/e2e and the
launcher test below run the real one). Every wait polls with a deadline.
"""

from __future__ import annotations

import asyncio
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from glidewms.config.factory import EntryConfig
from glidewms.factory.backends import BackendContext, PilotState, PilotSubmission
from glidewms.factory.backends.slurm import SlurmBackend
from glidewms.submit import parse_submit
from tests.components.slurm_cluster import SlurmCluster
from tests.components.slurm_cluster import slurm as slurm  # the session fixture
from tests.harness import systems
from tests.integration.factory_harness import FactoryFiles, Frontend, stand_in, wait_for

STAND_IN = stand_in(
    ", run by Slurm from the factory's job script.",
    'echo "site said ${SITE_SAYS:-nothing}"\necho "pilot $gid started"',
)


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[dict[str, Any]]:
    out = tmp_path / "out"
    out.mkdir()
    files = FactoryFiles.create(tmp_path, STAND_IN, out)
    yield {
        "issuer": files.issuer,
        "public": files.public,
        "out": out,
        "bootstrap": files.bootstrap,
        "agent": files.agent,
        "tmp": tmp_path,
        "files": files,
    }
    (out / "release").touch()


def slurm_entry(cluster: SlurmCluster, **values: Any) -> EntryConfig:
    base: dict[str, Any] = {
        "name": "slurm1",
        "site": "LOCAL_SLURM",
        "backend": "slurm",
        "cpus": 30,
        "memory": 100,
        "walltime": 600,
        "max_pilots": 10,
        "max_idle": 10,
        "max_per_cycle": 10,
        "batch": {"queue": "debug", "env": cluster.env},
        "environment": {"SITE_SAYS": "hello"},
    }
    base.update(values)
    return EntryConfig(**base)


def test_factory_submits_an_array_tracks_and_removes(
    slurm: SlurmCluster, setup: dict[str, Any]
) -> None:
    """4 pilots in one sbatch; 64 CPUs / 30 per pilot: 2 run, 2 wait; the waiting ones go."""
    files: FactoryFiles = setup["files"]
    config = files.config(slurm_entry(slurm), cycle_seconds=0.2)
    app = files.app(config)
    factory = app.state.factory
    pilot_token = files.pilot_token()

    with TestClient(app) as client:
        fe1 = Frontend(client, "slurm1", files.headers("fe1", ["frontend"]), pilot_token)
        put, pilots, states = fe1.put, fe1.glideins, fe1.states
        put(4, 4, "NO")
        wait_for(
            lambda: states() == ["queued", "queued", "running", "running"],
            "two running and two queued pilots",
        )
        rows = factory.store.glideins()
        jobs = {r.backend_id.split("/")[1].split("_")[0] for r in rows}
        assert len(rows) == 4 and len(jobs) == 1, "one array for the whole submission"
        [job] = jobs
        assert sorted(r.backend_id for r in rows) == [f"slurm1/{job}_{i}" for i in range(4)]
        squeue = slurm.run("squeue", "-h", "-r", "-o", "%i %T %j", "-j", job).stdout
        assert sorted(squeue.split()[i] for i in range(2, 12, 3)) == ["glidewms-slurm1"] * 4

        running = [r for r in rows if r.state.value == "running"]
        for r in running:
            wait_for(lambda r=r: (setup["out"] / f"{r.glidein_id}.args").exists(), "pilot argv")
            args = (setup["out"] / f"{r.glidein_id}.args").read_text().splitlines()
            assert args[args.index("--glidein-id") + 1] == r.glidein_id
            assert args[args.index("--entry") + 1] == "slurm1"
            assert not any(pilot_token in a for a in args)
        token_file = config.state_dir.resolve() / "credentials" / "fe1" / "main.token"
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600

        # The script given to Slurm holds the token's path, never the token.
        script = slurm.run("scontrol", "write", "batch_script", f"{job}_0", "-").stdout
        assert str(token_file) in script and pilot_token not in script

        # Nothing more is submitted while the request is met (several cycles).
        settled = factory.cycles
        wait_for(lambda: factory.cycles >= settled + 5, "five more cycles")
        assert len(pilots()) == 4

        # WAIT and NO never remove; IDLE removes the queued ones only.
        put(0, 4, "WAIT")
        settled = factory.cycles
        wait_for(lambda: factory.cycles >= settled + 3, "three more cycles")
        assert states() == ["queued", "queued", "running", "running"]
        put(0, 4, "IDLE")
        wait_for(
            lambda: states() == ["removed", "removed", "running", "running"],
            "queued pilots removed",
        )
        queue = slurm.run("squeue", "-h", "-r", "-t", "all", "-o", "%i %T", "-j", job).stdout
        assert "CANCELLED" in queue and queue.count("RUNNING") == 2
        removed = [r.backend_id for r in factory.store.glideins(state="removed")]
        seen = asyncio.run(factory.backends["slurm"].status(removed))
        assert seen == dict.fromkeys(removed, PilotState.removed)

        # The running pilots end by themselves: tracked to finished, logs archived.
        (setup["out"] / "release").touch()
        wait_for(
            lambda: states() == ["finished", "finished", "removed", "removed"],
            "running pilots finished",
        )
        first = running[0]
        wait_for(
            lambda: factory.archive.read("slurm1", "fe1", first.glidein_id)["archived"],
            "logs archived",
        )
        archived = factory.archive.read("slurm1", "fe1", first.glidein_id)
        assert f"pilot {first.glidein_id} started" in archived["stdout"]
        assert "site said hello" in archived["stdout"]
        assert pilot_token not in archived["stdout"] + archived["stderr"]


def test_slurm_backend_states_and_failures(slurm: SlurmCluster, tmp_path: Path) -> None:
    """The backend alone: exit codes map to finished/failed, a held job to held,
    arrays larger than array_size are split, and sbatch errors name the cause."""
    bootstrap = tmp_path / "boot.sh"
    bootstrap.write_text(
        '#!/bin/bash\ncase "$4" in *-1) exit 3 ;; *-2) sleep 600 ;; esac\necho "ok $4"\n'
    )
    token = tmp_path / "token"
    token.write_text("secret\n")
    token.chmod(0o600)
    entry = slurm_entry(slurm, cpus=1, batch={"env": slurm.env, "array_size": 2})
    context = BackendContext(
        state_dir=tmp_path / "state", bootstrap=bootstrap, entries={"slurm1": entry}
    )

    async def scenario() -> None:
        backend = SlurmBackend(context)
        pilots = [
            PilotSubmission(f"g-{i}", ("--x", "y", "--glidein-id", f"g-{i}"), token)
            for i in range(3)
        ]
        ids = await backend.submit(entry, pilots)
        assert len({i.split("_")[0] for i in ids}) == 2, "array_size 2: two arrays for three"
        deadline = time.monotonic() + 60
        while True:
            seen = await backend.status(ids)
            if seen[ids[0]] is PilotState.finished and seen[ids[1]] is PilotState.failed:
                break
            assert time.monotonic() < deadline, f"states: {seen}"
            await asyncio.sleep(0.2)
        assert seen[ids[2]] in (PilotState.queued, PilotState.running)
        logs = await backend.logs(ids[0])
        assert "ok g-0" in logs.stdout and "glidein g-0" in logs.stdout

        ref = ids[2].split("/")[1]
        await backend.remove([ids[2]])
        while (await backend.status([ids[2]]))[ids[2]] is not PilotState.removed:
            assert time.monotonic() < deadline, "not removed"
            await asyncio.sleep(0.2)

        held = await backend.submit(entry, pilots[2:])
        assert slurm.run("scontrol", "hold", held[0].split("/")[1]).returncode == 0
        while (await backend.status(held))[held[0]] is not PilotState.held:
            assert time.monotonic() < deadline, "not held"
            await asyncio.sleep(0.2)
        await backend.remove(held)

        unknown = await backend.status(["slurm1/999999_0", "nowhere/1_0", "garbage"])
        assert unknown == {
            "slurm1/999999_0": PilotState.finished,
            "nowhere/1_0": PilotState.unknown,
            "garbage": PilotState.unknown,
        }
        bad = entry.model_copy(
            update={"batch": entry.batch.model_copy(update={"queue": "nosuchpartition"})}
        )
        with pytest.raises(Exception, match=r"sbatch failed.*[Pp]artition"):
            await backend.submit(bad, pilots[:1])
        assert ref.endswith("_0")
        await backend.close()

    asyncio.run(scenario())


JOB = """#!/bin/sh
echo "job $1 in slurm job ${SLURM_JOB_ID:-(the agent gives jobs a clean environment)}"
"""


def test_real_pilots_through_slurm_run_jobs(slurm: SlurmCluster, tmp_path: Path) -> None:
    """The whole installation (launcher: pool, factory, frontend as processes) with one
    Slurm entry: the real bootstrap and agent start as Slurm array tasks, register in
    the pool, run the jobs, and leave when idle; the factory sees them finish."""
    entry = {
        "name": "slurm",
        "site": "LOCAL_SLURM",
        "backend": "slurm",
        "cpus": 1,
        "memory": "auto",
        "walltime": 600,
        "idle_timeout": 3,
        "max_pilots": 2,
        "max_idle": 2,
        "max_per_cycle": 2,
        "batch": {"env": slurm.env},
    }
    try:
        with systems(tmp_path, entries=[entry], max_pilots=2, claim_lease=10.0) as start:
            s = start()
            glideins, pool = s.glideins, s.pool
            script = tmp_path / "job.sh"
            script.write_text(JOB)
            script.chmod(0o755)
            text = "executable = job.sh\narguments = $(Process)\noutput = out_$(Process).txt\n"
            text += "request_memory = 32\nqueue 3\n"
            ids = pool.submit(parse_submit(text, "job.sub", tmp_path))["job_ids"]
            wait_for(
                lambda: all(pool.job(j)["state"] == "completed" for j in ids),
                "all jobs completed on Slurm pilots",
                timeout=120,
            )
            for jid in ids:
                files = {p.name: p.read_text() for p in pool.fetch_outputs(jid, tmp_path / jid)}
                n = jid.split(".")[1]
                assert files[f"out_{n}.txt"].startswith(f"job {n} in slurm job ")
            pilots = glideins()
            assert pilots and {g["entry"] for g in pilots} == {"slurm"}
            # Slurm ran them: its own records of the arrays the factory submitted.
            queue = slurm.run(
                "squeue", "-h", "-r", "-t", "all", "-o", "%j %T", "--name=glidewms-slurm"
            ).stdout.split("\n")
            assert len([line for line in queue if line.strip()]) == len(pilots)
            done = wait_for(
                lambda: (g := glideins()) and all(p["state"] == "finished" for p in g) and g,
                "pilots to leave when idle",
                timeout=120,
            )
            assert {g["exit_reason"] for g in done} == {"idle_timeout"}
    finally:
        slurm.run("scancel", "--name=glidewms-slurm")
