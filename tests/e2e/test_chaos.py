"""Chaos: a scaled-down version of issue 13's operator scenario, in CI.

The whole installation as `glidewms up` runs it (pool, factory, frontend as
processes, restarted in place by `Installation.restart_dead`), four entries:

- `slurm`: a REAL Slurm (slurmctld + slurmd started here), real pilots as array tasks;
- `good`: local pilots (real processes: bootstrap, signed stage, validation, agent);
- `broken`: every pilot fails validation (it requires an OS this node lacks);
- `hole`: a black-hole node (every job fails at once with exit 127 there).

Three users submit 60 jobs of 5 s (some for `slurm` or `good` only). During the
run: the pool AND the factory are killed with SIGKILL while a pilot is on its
way in (submitted, not yet registered) and kept down for OUTAGE seconds (the
outage is the scenario: waiting on the clock there is the point, not
synchronisation); later, under load, the pool, the factory and the frontend
are each killed with SIGKILL once more and restarted, and two running pilots
are killed with SIGKILL.

At the end, from the pool's and the factory's databases and APIs: every job
completed exactly once (0 lost, 0 duplicated), the broken entry paused after
its N failures, the black hole's victims were requeued as site failures and
completed at another entry, and the pilots caught on their way in by the
outage registered afterwards and ran jobs. The pool's restart time after
SIGKILL under load is printed (bench/RESULTS.md). Waits poll with a deadline.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from glidewms.client import ClientSettings, PoolClient
from glidewms.security.tokens import TokenIssuer, write_secret
from glidewms.submit import parse_submit
from tests.components.slurm_cluster import SlurmCluster
from tests.components.slurm_cluster import slurm as slurm  # the session fixture
from tests.e2e.test_glidein_system import entry
from tests.harness import System, systems, wait_for

pytestmark = pytest.mark.e2e

N = 2  # the broken entry's pause_after_pilot_failures
OUTAGE = 60.0  # seconds the pool and the factory stay down while pilots come in

JOB = """#!/bin/sh
if [ "$GLIDEIN_Entry_Name" = hole ]; then echo "broken node" >&2; exit 127; fi
echo "job $1 of $USER_TAG on $GLIDEIN_Entry_Name" > result.txt
sleep 5
"""


def _submit_text(user: str, count: int, requirements: str | None = None) -> str:
    lines = [
        "executable = job.sh",
        "arguments = $(Process)",
        f"environment = USER_TAG={user}",
        "transfer_output_files = result.txt",
        "request_memory = 32",
    ]
    if requirements:
        lines.append(f"requirements = {requirements}")
    return "\n".join([*lines, f"queue {count}", ""])


@pytest.fixture
def chaos(slurm: SlurmCluster, tmp_path: Path) -> Iterator[tuple[System, SlurmCluster]]:
    entries = [
        {
            "name": "slurm",
            "site": "SLURM",
            "backend": "slurm",
            "cpus": 1,
            "memory": "auto",
            "walltime": 600,
            "max_pilots": 2,
            "max_idle": 2,
            "max_per_cycle": 2,
            "batch": {"env": slurm.env},
        },
        entry(name="good", site="GOOD", max_pilots=2, max_idle=2, max_per_cycle=2),
        entry(
            name="broken",
            site="BROKEN",
            attributes={"GLIDEIN_Required_OS": "NoSuchOS1"},
            recovery={"pause_after_pilot_failures": N, "probe_interval": 3600},
        ),
        entry(
            name="hole",
            site="HOLE",
            attributes={
                "GLIDEIN_Black_Hole_Jobs": 2,
                "GLIDEIN_Black_Hole_Window": 600,
                "GLIDEIN_Black_Hole_Hold": 2,
            },
            # one black hole is enough: paused after it, never a second chance to eat a job
            recovery={"pause_after_pilot_failures": 1, "probe_interval": 3600},
        ),
    ]
    try:
        with systems(tmp_path, http_timeout=30, entries=entries, claim_lease=10.0) as start:
            yield start(), slurm
    finally:
        slurm.run("scancel", "--name=glidewms-slurm")


def _kill9(system: System, name: str) -> None:
    process = system.inst.services[name].process
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(10)


def _rows(db: Path, query: str, *args: Any) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(query, args).fetchall()


def _user_client(system: System, user: str) -> PoolClient:
    """A second or third user of the pool: a token from the installation's issuer."""
    issuer = TokenIssuer.from_file(system.inst.path("keys", "issuer.key"))
    token = system.inst.path("tokens", f"{user}.token")
    write_secret(token, issuer.issue(user, ["user"], 3600.0))
    return PoolClient(ClientSettings(system.inst.services["pool"].url, token))


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_chaos(chaos: tuple[System, SlurmCluster], tmp_path: Path) -> None:
    s, cluster = chaos
    inst = s.inst
    pool_db, factory_db = inst.path("pool", "pool.sqlite"), inst.path("factory", "factory.db")
    script = tmp_path / "job.sh"
    script.write_text(JOB)
    script.chmod(0o755)

    users = {"alice": s.pool, "bob": _user_client(s, "bob"), "carol": _user_client(s, "carol")}
    # demand that lasts at the broken entry until it pauses (removed then, never run)
    [only_broken] = s.submit(
        _submit_text("alice", 1, 'TARGET.GLIDEIN_Entry_Name == "broken"'), tmp_path
    )
    jobs: dict[str, str] = {}  # job id -> user
    for user, count, req in (
        ("alice", 24, None),
        ("bob", 18, 'TARGET.GLIDEIN_Entry_Name == "slurm"'),
        ("carol", 18, 'TARGET.GLIDEIN_Entry_Name == "good"'),
    ):
        desc = parse_submit(_submit_text(user, count, req), "job.sub", tmp_path)
        jobs |= {j: user for j in users[user].submit(desc)["job_ids"]}
    assert len(jobs) == 60

    # ---- outage of the pool AND the factory while pilots are on their way in
    def on_the_way() -> list[str]:
        registered = {p["glidein_id"] for p in s.pilots()}
        return [
            g["glidein_id"]
            for g in s.glideins()
            if g["entry"] != "broken" and g["state"] == "running"
            if g["glidein_id"] not in registered
        ]

    wait_for(on_the_way, "a pilot submitted and not yet registered")
    _kill9(s, "pool")
    _kill9(s, "factory")
    # from the databases, now that nothing writes them: who was on the way in
    registered = {g for (g,) in _rows(pool_db, "SELECT glidein_id FROM pilots")}
    caught = {
        gid: entry_name
        for gid, entry_name, state in _rows(
            factory_db, "SELECT glidein_id, entry, state FROM glideins"
        )
        # started at the site (a pilot still queued there is not on its way in yet)
        if entry_name != "broken" and state == "running" and gid not in registered
    }
    assert caught, "no pilot was on its way in when the outage began"
    print(f"\nCHAOS outage of {OUTAGE:.0f} s caught on their way in: {sorted(caught.items())}")
    time.sleep(OUTAGE)  # the outage itself
    # the local ones are still there, waiting for the factory or the pool
    for gid, entry_name in caught.items():
        if entry_name != "slurm":
            assert _alive(s.pilot_pid(gid)), f"{gid} died in the outage"
    assert inst.restart_dead() == ["pool", "factory"]

    # ---- the broken entry pauses after N failures; its only job goes
    def ad(name: str) -> dict[str, Any]:
        return next(e for e in s.factory("entries") if e["name"] == name)

    paused = wait_for(lambda: ad("broken")["paused"], "the broken entry to pause", timeout=120)
    assert paused["by"] == "pilots"
    assert paused["reason"].startswith(f"{N} pilots failed (streak); last: validation failed")
    assert s.pool.act("remove", [only_broken]) == [only_broken]

    # ---- under load: SIGKILL two running pilots, then the pool, the factory, the frontend
    def running_local() -> list[str]:
        busy = {
            g
            for (g,) in _rows(
                pool_db,
                "SELECT DISTINCT p.glidein_id FROM jobs j JOIN pilots p ON j.pilot_id = p.pilot_id"
                " WHERE j.state = 'running'",
            )
        }
        return [
            g["glidein_id"]
            for g in s.glideins()
            if g["entry"] == "good" and g["state"] == "running" and g["glidein_id"] in busy
        ]

    # pilots that came in after the outage first, if any (the others are checked below)
    victims = sorted(wait_for(running_local, "good pilots running jobs"), key=caught.__contains__)
    victims = victims[:2]
    for gid in victims:
        os.killpg(s.pilot_pid(gid), signal.SIGKILL)

    queued = len(s.pool.jobs())
    load = os.getloadavg()
    _kill9(s, "pool")
    t0 = time.monotonic()
    assert inst.restart_dead() == ["pool"]
    wait_for(lambda: _healthy(inst.services["pool"].url), "the pool's healthz", interval=0.02)
    restart = time.monotonic() - t0
    record = {"pool_restart_s": round(restart, 2), "queue": queued, "loadavg": load}
    print(f"\nCHAOS pool restart after kill -9: {json.dumps(record)}")
    (tmp_path / "pool_restart.json").write_text(json.dumps(record))

    for name in ("factory", "frontend"):
        _kill9(s, name)
        assert inst.restart_dead() == [name]

    # ---- every job completed, exactly once
    def all_done() -> bool:
        states = _rows(pool_db, "SELECT cluster_id, proc_id, state FROM jobs")
        done = {f"{c}.{p}" for c, p, st in states if st == "completed"}
        return set(jobs) <= done

    wait_for(all_done, "every job to complete", timeout=240)
    events: dict[str, list[tuple[str, dict[str, Any]]]] = {j: [] for j in [*jobs, only_broken]}
    for c, p, kind, detail in _rows(
        pool_db, "SELECT cluster_id, proc_id, type, detail FROM events ORDER BY id"
    ):
        if f"{c}.{p}" in events:
            events[f"{c}.{p}"].append((kind, json.loads(detail) if detail else {}))
    for jid, user in jobs.items():
        job = users[user].job(jid)
        kinds = [k for k, _ in events[jid]]
        assert job["state"] == "completed" and job["exit_code"] == 0, (jid, job)
        assert kinds.count("completed") == 1, (jid, kinds)  # 0 lost, 0 duplicated
        assert kinds.count("started") >= 1
        got = {f.name: f for f in users[user].fetch_outputs(jid, tmp_path / "out" / jid)}
        n = jid.split(".")[1]
        assert got["result.txt"].read_text().startswith(f"job {n} of {user} on ")
    assert "started" not in [k for k, _ in events[only_broken]]
    assert _rows(
        pool_db, "SELECT state FROM jobs WHERE cluster_id || '.' || proc_id = ?", only_broken
    ) == [("removed",)]

    # ---- the broken entry: N pilots, all failed validation, nothing more sent
    broken = [g for g in s.glideins() if g["entry"] == "broken"]
    assert len(broken) == N, broken
    assert {g["exit_reason"] for g in broken} == {"validation_failed"}

    # ---- the black hole's victims: requeued as site failures, completed elsewhere
    entry_of = {g["glidein_id"]: g["entry"] for g in s.glideins()}
    victims_of_hole = {
        jid: [d for k, d in evs if k == "evicted" and d.get("failure") == "site"]
        for jid, evs in events.items()
    }
    victims_of_hole = {
        j: e for j, e in victims_of_hole.items() if any("black hole" in d["reason"] for d in e)
    }
    assert len(victims_of_hole) >= 2, "the hole ate no job"
    for jid in victims_of_hole:
        done = [d for k, d in events[jid] if k == "started"][-1]  # the run that completed
        assert entry_of[done["glidein"]] != "hole", (jid, events[jid])
        assert "exited 127" in str(victims_of_hole[jid])
    assert ad("hole")["paused"] is not None

    # ---- the pilots caught by the outage registered afterwards and ran jobs
    ran = {d["glidein"] for evs in events.values() for k, d in evs if k == "started"}
    registered = {g for (g,) in _rows(pool_db, "SELECT glidein_id FROM pilots")}
    for gid, entry_name in caught.items():
        seen = s.glidein(gid)
        assert gid in registered, f"{gid} at {entry_name} never registered after the outage: {seen}"
        assert gid in ran, f"{gid} at {entry_name} ran no job: {seen}"
    # and ended as pilots end, not in an error (the ones killed above left no word)
    spared = set(caught) - set(victims)

    def ended() -> list[dict[str, Any]]:
        got = [x for x in s.glideins() if x["glidein_id"] in spared]
        return got if len(got) == len(spared) and all(x["exit_reason"] for x in got) else []

    ends = wait_for(ended, "the caught pilots to end", timeout=120) if spared else []
    for g in ends:
        assert g["exit_reason"] in ("idle_timeout", "black_hole"), g
    # Slurm ran its share: the `slurm` entry's pilots ran bob's jobs
    assert any(
        entry_of.get(d["glidein"]) == "slurm"
        for evs in events.values()
        for k, d in evs
        if k == "started"
    )
    # ... and Slurm's own records show the arrays the factory submitted there
    seen = cluster.run("squeue", "-h", "-r", "-t", "all", "-o", "%j", "--name=glidewms-slurm")
    assert "glidewms-slurm" in seen.stdout.split(), seen
