"""A real pool process killed with SIGKILL while it materialises a large
late cluster, several times: once it has finished, every proc is a job
exactly once, with one `submitted` event each, and nothing is left staged.
On SQLite and on PostgreSQL."""

from __future__ import annotations

import contextlib
import threading
import time

import httpx
import sqlalchemy as sa

from glidewms.security.tokens import TokenIssuer
from tests.components.postgres import database_url, postgres_cluster  # noqa: F401
from tests.integration.test_pool_durability import (
    PoolProcess,
    pool_process,  # noqa: F401
    pool_process_db,
)

PROCS = 30_000
KILLS = 3
PROTO = {"attrs": {"Cmd": '"/bin/true"', "RequestCpus": "1", "RequestMemory": "10"}}


def count(pool: PoolProcess, sql: str) -> int:
    with pool_process_db(pool) as conn:
        return int(conn.execute(sa.text(sql)).scalar_one())


def until(check, what: str, seconds: float = 120.0):  # type: ignore[no-untyped-def]
    end = time.monotonic() + seconds
    while not (got := check()):
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)
    return got


def test_sigkill_mid_materialisation_loses_and_duplicates_nothing(
    pool_process: PoolProcess,  # noqa: F811
):
    pool_process.start()
    user = {
        "Authorization": "Bearer "
        + TokenIssuer.from_file(pool_process.keys[0]).issue("alice", ["user"])
    }
    api = f"{pool_process.url}/api/v1"
    r = httpx.post(f"{api}/clusters", json={"proto": PROTO}, headers=user, timeout=30)
    cid = r.json()["cluster_id"]
    for first in range(0, PROCS, 10_000):  # plain procs: no limits, so it materialises all
        body = {"first": first, "procs": [{"args": [str(p)]} for p in range(first, first + 10_000)]}
        assert httpx.post(f"{api}/clusters/{cid}/procs", json=body, headers=user, timeout=60)
    # the commit materialises the first batches in its request: kill during it too
    commit = threading.Thread(
        target=lambda: _quietly(
            httpx.post, f"{api}/clusters/{cid}/commit", json={"total": PROCS}, headers=user
        )
    )
    commit.start()
    jobs_sql = f"SELECT count(*) FROM jobs WHERE cluster_id = {cid}"
    seen = 0
    for _ in range(KILLS):
        # a kill while jobs are being written, each time further on
        got = until(lambda s=seen: (n := count(pool_process, jobs_sql)) > s and n, "progress")
        assert got < PROCS, "materialised before the kill: make the cluster larger"
        pool_process.kill()
        seen = count(pool_process, jobs_sql)
        pool_process.start()
    commit.join(60)
    until(lambda: count(pool_process, jobs_sql) == PROCS, "every proc to materialise", 300)
    with pool_process_db(pool_process) as conn:
        procs = [
            r[0]
            for r in conn.execute(sa.text(f"SELECT proc_id FROM jobs WHERE cluster_id = {cid}"))
        ]
        submitted = conn.execute(
            sa.text(
                "SELECT count(*), count(DISTINCT proc_id) FROM events "
                f"WHERE cluster_id = {cid} AND type = 'submitted'"
            )
        ).one()
        late = conn.execute(
            sa.text(f"SELECT state, next_proc FROM late_clusters WHERE cluster_id = {cid}")
        ).one()
        staged = conn.execute(sa.text(f"SELECT count(*) FROM late_procs WHERE cluster_id = {cid}"))
        left = staged.scalar_one()
    assert sorted(procs) == list(range(PROCS))  # every proc once
    assert tuple(submitted) == (PROCS, PROCS)  # one submitted event each
    assert tuple(late) == ("done", PROCS) and left == 0
    api = f"{pool_process.url}/api/v1"  # its port changes with each start
    args = httpx.get(f"{api}/jobs/{cid}.{PROCS - 1}", headers=user, timeout=30).json()["args"]
    assert args == [str(PROCS - 1)]


def _quietly(post, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
    with contextlib.suppress(httpx.HTTPError):  # killed under it
        post(*args, timeout=120, **kwargs)
