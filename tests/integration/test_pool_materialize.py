"""Late materialisation (pool/materialize.py) through the pool's API: a
cluster sent as proto + chunks of deltas, its jobs written as
max_materialize / max_idle allow while pilots (driven by hand) run them;
rm, hold, ownership, all-or-nothing. On SQLite and PostgreSQL."""

from __future__ import annotations

import re
import textwrap
import time
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from glidewms.config.pool import PoolConfig
from glidewms.db import make_engine, sqlite_url
from glidewms.pool.api import create_app
from glidewms.pool.jobs import NewJob
from glidewms.pool.materialize import Proto
from glidewms.pool.schema import jobs as jobs_table
from glidewms.pool.store import PoolStore
from glidewms.submit import parse_submit
from glidewms.submit.compact import delta, wire_job
from tests.components.postgres import database_url, postgres_cluster  # noqa: F401
from tests.unit.test_submit_compact import FILES as COMPACT_FILES

SLOT = {"Cpus": 64, "Memory": 64000, "Disk": 1000000}
PROTO = {
    "attrs": {"Cmd": '"/bin/true"', "RequestCpus": "1", "RequestMemory": "10", "Out": '"o.0"'},
    "args": ["0"],
}


@pytest.fixture
def pool_config(pool_config: PoolConfig, database_url: str | None) -> PoolConfig:  # noqa: F811
    pool_config.database_url = database_url
    return pool_config


def deltas(first: int, n: int) -> list[dict[str, Any]]:
    return [{"ad": {"Out": f'"o.{p}"'}, "args": [str(p)]} for p in range(first, first + n)]


def late(
    pool: TestClient,
    who: dict,
    total: int,
    max_materialize: int | None = None,
    max_idle: int | None = None,
    chunk: int = 7,
) -> int:
    r = pool.post(
        "/api/v1/clusters",
        json={"proto": PROTO, "max_materialize": max_materialize, "max_idle": max_idle},
        headers=who,
    )
    assert r.status_code == 201, r.text
    cid = r.json()["cluster_id"]
    for first in range(0, total, chunk):
        n = min(chunk, total - first)
        body = {"first": first, "procs": deltas(first, n)}
        r = pool.post(f"/api/v1/clusters/{cid}/procs", json=body, headers=who)
        assert r.status_code == 200, r.text
    r = pool.post(f"/api/v1/clusters/{cid}/commit", json={"total": total}, headers=who)
    assert r.status_code == 200, r.text
    return int(cid)


def queued(pool: TestClient, who: dict, cid: int) -> dict[str, str]:
    r = pool.get("/api/v1/jobs", params={"constraint": f"ClusterId == {cid}"}, headers=who)
    assert r.status_code == 200, r.text
    return {j["job_id"]: j["state"] for j in r.json()}


def history(pool: TestClient, who: dict, cid: int) -> dict[str, dict]:
    r = pool.get(
        "/api/v1/jobs", params={"constraint": f"ClusterId == {cid}", "history": True}, headers=who
    )
    return {j["job_id"]: j for j in r.json()}


def until(check: Callable[[], Any], what: str, seconds: float = 30.0) -> Any:
    end = time.monotonic() + seconds
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def register(pool: TestClient, pilot: dict) -> str:
    r = pool.post("/api/v1/pilots", json={"slot": SLOT}, headers=pilot)
    assert r.status_code == 201, r.text
    return str(r.json()["pilot_id"])


def turn(pool: TestClient, pilot: dict, pid: str, done: list[str], max_jobs: int) -> list[dict]:
    body = {"completions": [{"claim_id": c, "exit_code": 0} for c in done], "max_jobs": max_jobs}
    r = pool.post(f"/api/v1/pilots/{pid}/cycle", json=body, headers=pilot)
    assert r.status_code == 200, r.text
    return list(r.json()["claims"])


def test_never_more_than_max_materialize_in_the_queue_and_all_run_once(pool_config, auth):
    alice, pilot = auth("alice"), auth("pilot", "pilot", fe="fe1")
    with TestClient(create_app(pool_config)) as pool:
        cid = late(pool, alice, 23, max_materialize=4)
        assert sorted(queued(pool, alice, cid)) == [f"{cid}.{p}" for p in range(4)]
        pid = register(pool, pilot)
        claims: list[str] = []
        ran: list[str] = []
        while len(ran) < 23:
            got = turn(pool, pilot, pid, claims, max_jobs=3)
            claims = [c["claim_id"] for c in got]
            ran += [c["job_id"] for c in got]
            assert len(queued(pool, alice, cid)) <= 4  # the limit holds at every step
            if not got:
                until(lambda: queued(pool, alice, cid), "the next jobs to materialise")
        turn(pool, pilot, pid, claims, max_jobs=0)
        assert sorted(ran) == sorted(f"{cid}.{p}" for p in range(23))  # each once, none lost
        done = until(lambda: len(history(pool, alice, cid)) == 23 and history(pool, alice, cid), "")
        job = done[f"{cid}.17"]
        assert job["args"] == ["17"] and 'Out = "o.17"' in job["ad"] and "ProcId = 17" in job["ad"]
        r = pool.get(f"/api/v1/clusters/{cid}/events", headers=alice)
        assert r.json()["done"] is True
        types = [e["type"] for e in r.json()["events"]]
        assert types.count("submitted") == 23


def test_max_idle_counts_idle_and_held_jobs_and_running_ones_make_room(pool_config, auth):
    alice, pilot = auth("alice"), auth("pilot", "pilot", fe="fe1")
    with TestClient(create_app(pool_config)) as pool:
        cid = late(pool, alice, 30, max_idle=3)
        assert len(queued(pool, alice, cid)) == 3
        pid = register(pool, pilot)
        started = turn(pool, pilot, pid, [], max_jobs=2)
        assert len(started) == 2
        # 2 running: room for 2 more idle ones
        states = until(lambda: len(queued(pool, alice, cid)) == 5 and queued(pool, alice, cid), "")
        assert sorted(states.values()) == ["idle"] * 3 + ["running"] * 2
        # hold the idle ones: held jobs are not running, so nothing more comes
        idle = [j for j, s in states.items() if s == "idle"]
        r = pool.post("/api/v1/jobs/hold", json={"job_ids": idle}, headers=alice)
        assert sorted(r.json()["changed"]) == sorted(idle)
        pool.app.state.pool.store.materializer.materialize()  # a pass, now
        assert len(queued(pool, alice, cid)) == 5
        r = pool.get("/api/v1/clusters", headers=alice)
        (row,) = r.json()
        assert (row["cluster_id"], row["total"], row["materialized"]) == (cid, 30, 5)


def test_rm_of_the_cluster_removes_the_jobs_still_to_materialise(pool_config, auth):
    alice = auth("alice")
    with TestClient(create_app(pool_config)) as pool:
        cid = late(pool, alice, 50, max_materialize=5)
        r = pool.post(f"/api/v1/clusters/{cid}/remove", json={"reason": "enough"}, headers=alice)
        assert r.status_code == 200, r.text
        assert r.json()["pending"] == 45 and len(r.json()["changed"]) == 5
        pool.app.state.pool.store.materializer.materialize()
        assert queued(pool, alice, cid) == {}
        assert pool.get("/api/v1/clusters", headers=alice).json() == []
        assert pool.get(f"/api/v1/clusters/{cid}/events", headers=alice).json()["done"] is True


def test_one_bad_proc_refuses_the_whole_cluster_which_no_one_ever_sees(pool_config, auth):
    alice = auth("alice")
    with TestClient(create_app(pool_config)) as pool:
        r = pool.post("/api/v1/clusters", json={"proto": PROTO, "max_idle": 2}, headers=alice)
        cid = r.json()["cluster_id"]
        ok = pool.post(
            f"/api/v1/clusters/{cid}/procs", json={"first": 0, "procs": deltas(0, 3)}, headers=alice
        )
        assert ok.status_code == 200, ok.text
        for bad, why in (
            ({"ad": {"RequestMemory": '1; Owner = "bob"'}}, "RequestMemory"),
            ({"ad": {"Owner": '"bob"'}}, "Owner"),
            ({"ad": {"ProcId": "7"}}, "ProcId"),
            ({"ad": {"RequestCpus": "-4"}}, "RequestCpus"),
        ):
            r = pool.post(
                f"/api/v1/clusters/{cid}/procs", json={"first": 3, "procs": [bad]}, headers=alice
            )
            assert r.status_code == 422, (bad, r.text)
            assert "jobs[3]" in r.text and why in r.text
        # a chunk out of order, a commit that does not count what was sent
        r = pool.post(
            f"/api/v1/clusters/{cid}/procs", json={"first": 5, "procs": deltas(5, 1)}, headers=alice
        )
        assert r.status_code == 409
        assert (
            pool.post(
                f"/api/v1/clusters/{cid}/commit", json={"total": 4}, headers=alice
            ).status_code
            == 409
        )
        assert queued(pool, alice, cid) == {}
        assert pool.get("/api/v1/clusters", headers=alice).json() == []
        # a retried chunk is answered, not taken twice
        r = pool.post(
            f"/api/v1/clusters/{cid}/procs", json={"first": 0, "procs": deltas(0, 3)}, headers=alice
        )
        assert r.json()["staged"] == 3
        # never committed: dropped by the upkeep once stale
        store = pool.app.state.pool.store
        assert store.materializer.drop_stale(time.time() + 7200) == 1


def test_another_user_can_neither_see_nor_touch_the_cluster(pool_config, auth):
    alice, bob = auth("alice"), auth("bob")
    with TestClient(create_app(pool_config)) as pool:
        r = pool.post("/api/v1/clusters", json={"proto": PROTO, "max_idle": 2}, headers=alice)
        cid = r.json()["cluster_id"]
        body = {"first": 0, "procs": deltas(0, 3)}
        assert pool.post(f"/api/v1/clusters/{cid}/procs", json=body, headers=bob).status_code == 404
        assert (
            pool.post(f"/api/v1/clusters/{cid}/procs", json=body, headers=alice).status_code == 200
        )
        commit = {"total": 3}
        assert (
            pool.post(f"/api/v1/clusters/{cid}/commit", json=commit, headers=bob).status_code == 404
        )
        assert (
            pool.post(f"/api/v1/clusters/{cid}/commit", json=commit, headers=alice).status_code
            == 200
        )
        assert pool.get("/api/v1/clusters", headers=bob).json() == []
        assert pool.get("/api/v1/clusters", params={"mine": False}, headers=bob).json() == []
        r = pool.post(f"/api/v1/clusters/{cid}/remove", json={}, headers=bob)
        assert r.json() == {"pending": 0, "changed": []}  # bob's own jobs of it: none
        assert len(queued(pool, alice, cid)) == 2
        assert pool.get("/api/v1/clusters", headers=alice).json()[0]["materialized"] == 2


def test_a_user_may_be_sending_only_a_few_clusters_at_once(pool_config, auth):
    """Each staging cluster may grow to max_procs_per_cluster procs before its
    commit: without a bound per user, clusters that never commit fill the disk."""
    pool_config.max_staging_clusters = 2
    alice, bob = auth("alice"), auth("bob")
    with TestClient(create_app(pool_config)) as pool:
        opened = []
        for _ in range(2):
            r = pool.post("/api/v1/clusters", json={"proto": PROTO}, headers=alice)
            assert r.status_code == 201, r.text
            opened.append(r.json()["cluster_id"])
        r = pool.post("/api/v1/clusters", json={"proto": PROTO}, headers=alice)
        assert r.status_code == 409 and "max_staging_clusters" in r.text
        # another user's limit is their own
        assert pool.post("/api/v1/clusters", json={"proto": PROTO}, headers=bob).status_code == 201
        # a commit frees a place
        cid = opened[0]
        body = {"first": 0, "procs": deltas(0, 1)}
        assert (
            pool.post(f"/api/v1/clusters/{cid}/procs", json=body, headers=alice).status_code == 200
        )
        commit = pool.post(f"/api/v1/clusters/{cid}/commit", json={"total": 1}, headers=alice)
        assert commit.status_code == 200, commit.text
        assert (
            pool.post("/api/v1/clusters", json={"proto": PROTO}, headers=alice).status_code == 201
        )


@pytest.mark.parametrize("name", sorted(COMPACT_FILES))
def test_materialised_rows_equal_the_plain_paths(tmp_path, name):
    """The same jobs, queued plainly and materialised from proto + deltas
    (most by the Form, without a parse): the same rows but for ClusterId and
    QDate."""
    base = tmp_path / "files"
    base.mkdir()
    for f in ("run.sh", "common.dat", "other.dat", *(f"in.{p}" for p in range(5))):
        (base / f).write_text(f)
    (base / "rows.txt").write_text("a\nb\nc\n")
    jobs = parse_submit(textwrap.dedent(COMPACT_FILES[name]), "t.sub", base).jobs
    store = PoolStore(make_engine(sqlite_url(tmp_path / "pool.sqlite")))
    try:
        new = [NewJob(j.ad_text(), [], j.args, j.env) for j in jobs]
        plain_cid, _ = store.queue.submit("alice", new)
        proto = wire_job(jobs[0], [])
        m = store.materializer
        cid = m.create("alice", Proto(proto["attrs"], [], proto["args"], proto["env"]), None, None)
        deltas = [delta(proto, wire_job(j, [])) for j in jobs]
        m.append("alice", cid, 0, deltas, 100)
        m.commit("alice", cid, len(jobs))
        form = m._form(Proto.of(proto), cid, "alice", time.time())
        if name == "process":  # the usual case goes by the Form
            assert form is not None and all(
                form[0].fits(d, cid, store.shared.limits.ads) is not None for d in deltas
            )
        with store.engine.connect() as conn:
            rows = {(r.cluster_id, r.proc_id): r for r in conn.execute(sa.select(jobs_table)).all()}
        norm = re.compile(r"(ClusterId|QDate) = \d+|out\.\d+\.")  # where the cluster id shows
        for p in range(len(jobs)):
            a, b = rows[(plain_cid, p)], rows[(cid, p)]
            assert norm.sub("", a.ad) == norm.sub("", b.ad)
            assert (a.autocluster_id, a.prio, a.cpus, a.submitter, a.periodic) == (
                b.autocluster_id,
                b.prio,
                b.cpus,
                b.submitter,
                b.periodic,
            )
            assert a.sandbox["args"] == b.sandbox["args"] and a.sandbox["cmd"] == b.sandbox["cmd"]
            assert a.sandbox["env"] == b.sandbox["env"]
    finally:
        store.close()
