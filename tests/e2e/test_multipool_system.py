"""Pilots that serve two pools (docs/glidein.md, "Several pools"), end to end.

Two real pool processes (A on SQLite, started by the installation; B on
PostgreSQL, started here), one frontend whose group names both with shares
2:1, one factory (local backend) and real pilots serving both. The pools
share the installation's keys; each has a `name`, so the pilot tokens each
mints are valid there only.

Waits poll a condition with a deadline; nothing asserts on timing. The share
check counts completed jobs when pool A has completed a fixed number, not
after a time.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from glidewms.client import ClientSettings, PoolClient
from glidewms.submit import parse_submit
from tests.components.postgres import postgres_cluster  # noqa: F401  (fixture)
from tests.harness import System, systems, wait_for

pytestmark = pytest.mark.e2e

CORES = 3  # one pilot of 3 cores: the shares 2:1 are 2 cores and 1
SHARES = [2, 1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PoolB:
    """The second pool: the installation's pool config, its own state, PostgreSQL."""

    def __init__(self, s: System, port: int, database_url: str) -> None:
        inst = s.inst
        data = yaml.safe_load(inst.path("config", "pool.yaml").read_text())
        data.update(
            name="b",
            listen_port=port,
            state_dir=str(inst.path("poolb")),
            url_file=str(inst.path("run", "poolb.url")),
            database_url=database_url,
        )
        self.config = inst.path("config", "poolb.yaml")
        self.config.write_text(yaml.safe_dump(data))
        self.url = f"http://127.0.0.1:{port}"
        self.log = inst.path("logs", "poolb.log")
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "glidewms", "pool", "--config", str(self.config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_for(
            lambda: inst.path("run", "poolb.url").is_file() or self.process.poll() is not None,
            "pool B to listen",
            120,
        )
        assert self.process.poll() is None, self.log.read_text()[-3000:]
        self.user = PoolClient(ClientSettings(self.url, inst.token_file("user")))

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)


@pytest.fixture
def two_pools(
    tmp_path: Path,
    postgres_cluster: Any,  # noqa: F811
) -> Iterator[tuple[System, PoolB]]:
    port_a, port_b = free_port(), free_port()
    url_a, url_b = f"http://127.0.0.1:{port_a}", f"http://127.0.0.1:{port_b}"
    entry = {
        "name": "shared",
        "site": "SHARED",
        "backend": "local",
        "cpus": CORES,
        "memory": 4096,
        "disk": "auto",
        "walltime": 3600,
        "idle_timeout": 600,
        "max_pilots": 1,
        "max_idle": 1,
        "max_per_cycle": 1,
    }
    token = str(tmp_path / "state" / "tokens" / "frontend.token")
    frontend = {
        "pools": [
            {"name": "a", "url": url_a, "token_file": token},
            {"name": "b", "url": url_b, "token_file": token},
        ],
        "groups": [{"name": "main", "pools": ["a", "b"], "pool_shares": SHARES}],
    }
    with systems(tmp_path, http_timeout=10) as start:
        s = None
        b = None
        try:
            s = start(
                entries=[entry],
                claim_lease=10.0,
                extra_pool={"listen_port": port_a, "name": "a"},
                extra_frontend=frontend,
            )
            b = PoolB(s, port_b, postgres_cluster.database())
            yield s, b
        finally:
            if b is not None:
                b.stop()


SLEEP = """executable = /bin/sleep
transfer_executable = false
arguments = {seconds}
request_cpus = 1
request_memory = 100
queue {n}
"""


def submit(client: PoolClient, n: int, seconds: float, base: Path) -> list[str]:
    text = SLEEP.format(seconds=seconds, n=n)
    return list(client.submit(parse_submit(text, "test.sub", base))["job_ids"])


def admin_get(s: System, url: str, path: str) -> Any:
    r = httpx.get(f"{url}/api/v1/{path}", headers=s.admin, timeout=10)
    r.raise_for_status()
    return r.json()


def glidein_of(s: System, url: str, client: PoolClient, job_id: str) -> str:
    """The GLIDEIN id of the pilot that ran `job_id`, from that pool's records."""
    pilot = client.job(job_id)["pilot_id"]
    pilots = {p["pilot_id"]: p["glidein_id"] for p in admin_get(s, url, "pilots")}
    return str(pilots[pilot])


def completed(client: PoolClient, jobs: list[str]) -> list[str]:
    return [j for j in jobs if client.job(j)["state"] == "completed"]


def test_one_pilot_serves_two_pools_by_share_and_survives_one(two_pools, tmp_path):
    s, b = two_pools
    a_url = s.inst.services["pool"].url
    a = s.pool

    # Pool A's pilot token is refused by pool B (and taken by A).
    frontend = {"Authorization": "Bearer " + s.inst.token_file("frontend").read_text().strip()}
    minted = httpx.post(
        f"{a_url}/api/v1/tokens/pilot", json={"group": "probe"}, headers=frontend, timeout=10
    )
    minted.raise_for_status()
    pilot_a = {"Authorization": f"Bearer {minted.json()['token']}"}
    body = {"slot": {"Cpus": 1, "Memory": 100}, "glidein_id": "probe-1"}
    refused = httpx.post(f"{b.url}/api/v1/pilots", json=body, headers=pilot_a, timeout=10)
    assert refused.status_code == 403, refused.text
    taken = httpx.post(f"{a_url}/api/v1/pilots", json=body, headers=pilot_a, timeout=10)
    assert taken.status_code == 201, taken.text
    httpx.post(
        f"{a_url}/api/v1/pilots/{taken.json()['pilot_id']}/deregister",
        json={"reason": "signal"},
        headers=pilot_a,
        timeout=10,
    )

    # Jobs of A and of B complete on the same pilot.
    first_a, first_b = submit(a, 2, 1, tmp_path), submit(b.user, 2, 1, tmp_path)
    wait_for(lambda: len(completed(a, first_a)) == 2, "A's first jobs", 180)
    wait_for(lambda: len(completed(b.user, first_b)) == 2, "B's first jobs", 180)
    ids = {glidein_of(s, a_url, a, j) for j in first_a} | {
        glidein_of(s, b.url, b.user, j) for j in first_b
    }
    assert len(ids) == 1, f"jobs of A and B ran on several pilots: {ids}"
    (glidein,) = ids
    assert [g["glidein_id"] for g in s.glideins()] == [glidein]

    # Both queues full: the pilot's cores split 2:1. Counted when A has completed
    # 24 jobs: B should then have about 12 (share 1/3 of the completed jobs).
    many_a, many_b = submit(a, 40, 1, tmp_path), submit(b.user, 40, 1, tmp_path)
    wait_for(lambda: len(completed(a, many_a)) >= 24, "A to complete 24 jobs", 240)
    done_a, done_b = len(completed(a, many_a)), len(completed(b.user, many_b))
    b_fraction = done_b / (done_a + done_b)
    # share 1/3, tolerance +-0.12: the jobs running at the count (3 cores) and
    # the turn granularity (one job is 1/36 of the count)
    assert 0.21 <= b_fraction <= 0.45, (done_a, done_b)
    for client, jobs in ((a, many_a), (b.user, many_b)):
        done = set(completed(client, jobs))
        if len(done) < len(jobs):
            client.act("remove", [j for j in jobs if j not in done])

    # Idle and long-polling A in turns: B does not declare the pilot lost over
    # more than B's pilot lease (10 s), checked on every look.
    pb = next(p for p in admin_get(s, b.url, "pilots") if p["glidein_id"] == glidein)
    seen = 0

    def still_alive_after_lease() -> bool:
        nonlocal seen
        rows = [p for p in admin_get(s, b.url, "pilots") if p["pilot_id"] == pb["pilot_id"]]
        assert rows and rows[0]["state"] not in ("lost", "gone"), rows
        seen += 1
        return seen >= 120  # 120 looks at 0.1 s: beyond B's lease

    wait_for(still_alive_after_lease, "B to keep the pilot over its lease", 120)

    # Pool A killed: the pilot keeps serving B.
    [pa] = [p["pilot_id"] for p in admin_get(s, a_url, "pilots") if p["glidein_id"] == glidein]
    pool_a = s.inst.services["pool"].process
    os.killpg(pool_a.pid, signal.SIGKILL)
    pool_a.wait(10)
    during = submit(b.user, 3, 1, tmp_path)
    wait_for(lambda: len(completed(b.user, during)) == 3, "B's jobs while A is down", 180)
    assert {glidein_of(s, b.url, b.user, j) for j in during} == {glidein}

    # A back: the same pilot turns with A again (no new pilot, same pilot id).
    assert s.inst.restart_dead() == ["pool"]
    after = submit(a, 2, 1, tmp_path)
    wait_for(lambda: len(completed(a, after)) == 2, "A's jobs after its restart", 180)
    assert {glidein_of(s, a_url, a, j) for j in after} == {glidein}
    assert {a.job(j)["pilot_id"] for j in after} == {pa}, "the pilot registered with A again"
    assert [g["glidein_id"] for g in s.glideins()] == [glidein]
