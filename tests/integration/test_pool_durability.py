"""A real pool process killed with SIGKILL at random instants under load.

`glidewms pool` runs as a subprocess; threads submit clusters, claim jobs and
complete them while the test kills the process at a random instant and starts
it again, several times. Then every job is driven to completion and the
database is checked: no acknowledged job lost, no cluster queued twice, no
partial cluster, no job completed twice, every acknowledged completion kept.
On SQLite and on PostgreSQL.
"""

from __future__ import annotations

import contextlib
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
import yaml

from glidewms.security.tokens import TokenIssuer, generate_keypair
from tests.components.postgres import database_url, postgres_cluster  # noqa: F401

GLIDEWMS = str(Path(sys.executable).parent / "glidewms")
KILLS = 6
CLUSTER_SIZE = 20
JOB = '[ Cmd = "/bin/true"; RequestCpus = 1; RequestMemory = 10; Batch = "{batch}" ]'
SLOT = {"Cpus": 64, "Memory": 64000, "Disk": 100000}
FREE = {"cpus": 64, "memory": 64000, "disk": 100000}


class PoolProcess:
    """`glidewms pool --config F` as a child process; `url` once it listens."""

    def __init__(self, directory: Path, database: str | None) -> None:
        self.dir = directory
        self.keys = generate_keypair(directory / "keys")
        self.config = directory / "pool.yaml"
        values = {
            "listen_port": 0,
            "url_file": str(directory / "pool.url"),
            "state_dir": str(directory / "pool"),
            "issuer_public_key": str(self.keys[1]),
            "claim_lease_seconds": 2.0,
            "pilot_lease_seconds": 600.0,
            "lease_check_seconds": 0.2,
        }
        if database:
            values["database_url"] = database
        self.config.write_text(yaml.safe_dump(values))
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self, deadline: float = 60.0) -> str:
        url_file = self.dir / "pool.url"
        url_file.unlink(missing_ok=True)
        log = open(self.dir / "pool.log", "ab")  # noqa: SIM115 (the child keeps it)
        self.proc = subprocess.Popen(
            [GLIDEWMS, "pool", "--config", str(self.config)], stdout=log, stderr=log
        )
        log.close()
        end = time.monotonic() + deadline
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"pool exited with {self.proc.returncode}: "
                    + (self.dir / "pool.log").read_text()[-2000:]
                )
            if url_file.is_file() and url_file.read_text().strip():
                url = url_file.read_text().strip()
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                        self.url = url
                        return url
            if time.monotonic() > end:
                raise TimeoutError("the pool did not come up")
            time.sleep(0.05)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def pool_process(tmp_path: Path, database_url: str | None) -> Iterator[PoolProcess]:  # noqa: F811
    process = PoolProcess(tmp_path, database_url)
    try:
        yield process
    finally:
        process.stop()


class Load:
    """Submitter and pilot threads that note what the pool acknowledged."""

    def __init__(self, pool: PoolProcess) -> None:
        issuer = TokenIssuer.from_file(pool.keys[0])
        self.pool = pool
        self.user = {"Authorization": f"Bearer {issuer.issue('alice', ['user'])}"}
        self.pilot = {
            "Authorization": f"Bearer {issuer.issue('pilot', ['pilot'], fe='fe1', group='main')}"
        }
        self.stop = threading.Event()
        self.acked_batches: set[str] = set()
        self.tried_batches: set[str] = set()
        self.acked_completions: set[str] = set()
        self.pilot_id: str | None = None
        self.errors: list[str] = []

    def _post(self, path: str, headers: dict[str, str], body: dict) -> httpx.Response:
        return httpx.post(f"{self.pool.url}/api/v1{path}", json=body, headers=headers, timeout=10)

    def submitter(self) -> None:
        n = 0
        while not self.stop.is_set():
            batch = f"b{n}"
            n += 1
            self.tried_batches.add(batch)
            try:
                r = self._post(
                    "/jobs", self.user, {"jobs": [{"ad": JOB.format(batch=batch)}] * CLUSTER_SIZE}
                )
                if r.status_code == 201:
                    self.acked_batches.add(batch)
                else:
                    self.errors.append(f"submit {r.status_code}: {r.text}")
                self.stop.wait(0.05)  # pace: enough load to be killed in, little to drain
            except httpx.HTTPError:
                time.sleep(0.02)  # the pool is down: this batch is uncertain, never resent

    def pilot_loop(self) -> None:
        while not self.stop.is_set():
            try:
                if self.pilot_id is None:
                    r = self._post("/pilots", self.pilot, {"slot": SLOT, "glidein_id": "g"})
                    self.pilot_id = r.json()["pilot_id"]
                self.claim_and_complete()
            except httpx.HTTPError:
                time.sleep(0.02)

    def claim_and_complete(self) -> bool:
        r = self._post(f"/pilots/{self.pilot_id}/claim", self.pilot, {"free": FREE, "wait": 0})
        if r.status_code == 204:
            return False
        if r.status_code != 200:
            self.errors.append(f"claim {r.status_code}: {r.text}")
            return False
        got = r.json()
        done = self._post(f"/claims/{got['claim_id']}/complete", self.pilot, {"exit_code": 0})
        if done.status_code == 200:
            self.acked_completions.add(got["job_id"])
        elif done.status_code != 409:
            self.errors.append(f"complete {done.status_code}: {done.text}")
        return True


def test_sigkill_under_load_loses_and_duplicates_nothing(pool_process: PoolProcess):
    rng = random.Random()
    pool_process.start()
    load = Load(pool_process)
    threads = [threading.Thread(target=load.submitter), threading.Thread(target=load.pilot_loop)]
    for t in threads:
        t.start()
    try:
        for _ in range(KILLS):
            time.sleep(rng.uniform(0.05, 0.6))  # a random instant, not a synchronisation
            pool_process.kill()
            pool_process.start()
    finally:
        load.stop.set()
        for t in threads:
            t.join(30)
    assert not any(t.is_alive() for t in threads)
    assert not load.errors, load.errors[:5]
    assert load.acked_batches, "no submit ever succeeded: the test measured nothing"

    # drain: every queued job must complete exactly once (expired claims come back)
    deadline = time.monotonic() + 120
    while True:
        while load.claim_and_complete():
            pass
        with pool_process_db(pool_process) as conn:
            left = conn.execute(
                sa.text("SELECT count(*) FROM jobs WHERE state NOT IN ('completed', 'removed')")
            ).scalar_one()
        if left == 0:
            break
        assert time.monotonic() < deadline, f"{left} jobs never completed"
        time.sleep(0.2)  # claims of killed work come back when their lease runs out

    with pool_process_db(pool_process) as conn:
        jobs = conn.execute(sa.text("SELECT cluster_id, proc_id, state, ad FROM jobs")).all()
        completions = conn.execute(
            sa.text(
                "SELECT cluster_id, proc_id, count(*) FROM events WHERE type = 'completed' "
                "GROUP BY cluster_id, proc_id"
            )
        ).all()
    by_batch: dict[str, set[tuple[int, int]]] = {}
    for cluster_id, proc_id, _, ad in jobs:
        batch = ad.split('Batch = "', 1)[1].split('"', 1)[0]
        by_batch.setdefault(batch, set()).add((cluster_id, proc_id))
    lost = load.acked_batches - set(by_batch)
    assert not lost, f"acknowledged clusters lost: {sorted(lost)}"
    assert set(by_batch) <= load.tried_batches
    for batch, members in by_batch.items():
        clusters = {c for c, _ in members}
        assert len(clusters) == 1, f"{batch} queued in several clusters {clusters}"
        assert sorted(p for _, p in members) == list(range(CLUSTER_SIZE)), (
            f"{batch} is a partial cluster"
        )
    assert all(state == "completed" for *_, state, _ in jobs)
    twice = [(c, p) for c, p, n in completions if n != 1]
    assert not twice, f"completed more than once: {twice}"
    assert len(completions) == len(jobs)
    done = {f"{c}.{p}" for c, p, *_ in jobs}
    assert load.acked_completions <= done


@contextlib.contextmanager
def pool_process_db(pool: PoolProcess) -> Iterator[sa.Connection]:
    """A direct look at the pool's database, as an operator would take it."""
    config = yaml.safe_load(pool.config.read_text())
    url = config.get("database_url") or f"sqlite:///{Path(config['state_dir']) / 'pool.sqlite'}"
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            yield conn
    finally:
        engine.dispose()
