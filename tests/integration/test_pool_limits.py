"""The pool's caps on what one request, one job or one upload may make it
keep (docs/security.md), with small limits configured so that the tests are
quick: each is refused with the cap named, and nothing partial is kept.
Store-level caps on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from glidewms.config.pool import PoolConfig
from glidewms.db import make_engine, sqlite_url
from glidewms.pool.api import create_app
from glidewms.pool.checks import StoreLimits
from glidewms.pool.exit import Completion
from glidewms.pool.jobs import NewJob
from glidewms.pool.pilots import PilotOwner
from glidewms.pool.schema import events
from glidewms.pool.store import PoolStore
from tests.components.postgres import database_url, postgres_cluster  # noqa: F401

AD = '[ Cmd = "/bin/true"; RequestCpus = 1; RequestMemory = 10; Requirements = true ]'
SLOT = {"Cpus": 1, "Memory": 100, "Disk": 100}
FREE = {"cpus": 1, "memory": 100, "disk": 100, "gpus": 0}


@pytest.fixture
def small(pool_config: PoolConfig) -> Iterator[TestClient]:
    pool_config.max_jobs_per_request = 3
    pool_config.max_attribute_bytes = 1024
    pool_config.max_ad_bytes = 4096
    pool_config.max_upload_bytes = 1000
    pool_config.max_body_bytes = 1 << 16
    pool_config.max_submit_bytes = 1 << 16
    with TestClient(create_app(pool_config)) as client:
        yield client


@pytest.fixture
def alice(auth: Any) -> dict[str, str]:
    return auth("alice")  # type: ignore[no-any-return]


def submit(pool: TestClient, who: dict[str, str], *jobs: dict[str, Any]) -> Any:
    return pool.post("/api/v1/jobs", json={"jobs": list(jobs)}, headers=who)


def test_what_one_submit_may_carry(small: TestClient, alice: dict[str, str]) -> None:
    r = submit(small, alice, *[{"ad": AD}] * 4)
    assert r.status_code == 422 and "at most 3" in r.json()["detail"]
    r = submit(small, alice, {"ad": AD, "args": ["a" * 2000]})
    assert r.status_code == 422 and "'args'" in r.json()["detail"]
    r = submit(small, alice, {"ad": AD, "env": {f"V{i}": "x" * 900 for i in range(5)}})
    assert r.status_code == 422 and "at most 4096" in r.json()["detail"]
    big = AD[:-1] + f'; Note = "{"x" * 2000}" ]'
    r = submit(small, alice, {"ad": big})
    assert r.status_code == 422 and "Note" in r.json()["detail"]
    # jobs of one kind still each have their own arguments checked
    r = submit(small, alice, {"ad": AD}, {"ad": AD, "args": ["a" * 2000]})
    assert r.status_code == 422 and r.json()["detail"].startswith("jobs[1]")
    assert small.get("/api/v1/jobs", headers=alice).json() == []


def test_an_upload_is_refused_once_it_passes_its_cap_and_leaves_nothing(
    small: TestClient, alice: dict[str, str], pool_config: PoolConfig
) -> None:
    data = b"x" * 5000
    digest = hashlib.sha256(data).hexdigest()

    def chunks() -> Iterator[bytes]:  # no Content-Length: read until the cap
        for start in range(0, len(data), 500):
            yield data[start : start + 500]

    r = small.put(f"/api/v1/files/{digest}", content=chunks(), headers=alice)
    assert r.status_code == 413, r.text
    r = small.put(f"/api/v1/files/{digest}", content=data, headers=alice)
    assert r.status_code == 413 and "5000" in r.json()["detail"]
    files = pool_config.state_dir / "files"
    assert [p for p in files.rglob("*") if p.is_file()] == []
    small_enough = b"y" * 1000
    r = small.put(
        f"/api/v1/files/{hashlib.sha256(small_enough).hexdigest()}",
        content=small_enough,
        headers=alice,
    )
    assert r.status_code == 201


def test_a_request_body_is_capped_while_it_streams(
    small: TestClient, alice: dict[str, str]
) -> None:
    body = b'{"jobs": [' + b", ".join([b'{"ad": "[ A = 1 ]"}'] * 5000) + b"]}"

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), 4096):
            yield body[start : start + 4096]

    headers = {**alice, "Content-Type": "application/json"}
    assert small.post("/api/v1/jobs", content=chunks(), headers=headers).status_code == 413
    assert small.post("/api/v1/jobs", content=body, headers=headers).status_code == 413
    assert small.get("/api/v1/jobs", headers=alice).status_code == 200


def test_edits_are_held_to_what_a_submit_is(small: TestClient, alice: dict[str, str]) -> None:
    [jid] = submit(small, alice, {"ad": AD}).json()["job_ids"]

    def edit(attribute: str, value: str) -> Any:
        body = {"job_ids": [jid], "attribute": attribute, "value": value}
        return small.post("/api/v1/jobs/edit", json=body, headers=alice)

    for attribute, value in (("RequestCpus", "-5"), ("JobPrio", "1e30"), ("ExitCode", "0")):
        r = edit(attribute, value)
        assert r.status_code == 422 and attribute in r.json()["detail"], r.text
    note = '"' + "x" * 1000 + '"'  # within an attribute's 1024 bytes
    for n in range(3):
        assert edit(f"Note{n}", note).json()["changed"] == [jid]
    r = edit("Note3", note)  # past the ad's 4096
    assert r.status_code == 200 and r.json()["changed"] == []
    assert "4096" in r.json()["skipped"][jid]
    r = small.post("/api/v1/jobs/hold", json={"constraint": "1 + " * 2000 + "1"}, headers=alice)
    assert r.status_code == 422 and "constraint" in r.json()["detail"]


@pytest.fixture
def store(tmp_path: Path, database_url: str | None) -> Iterator[PoolStore]:  # noqa: F811
    url = database_url or sqlite_url(tmp_path / "pool.sqlite")
    store = PoolStore(
        make_engine(url), limits=StoreLimits(max_events_per_job=10, max_outputs_per_job=3)
    )
    yield store
    store.close()


def kinds(store: PoolStore, jid: str) -> list[str]:
    return [e["type"] for e in store.queue.job_events(jid)]


def test_a_jobs_events_are_trimmed_to_the_first_and_the_latest(store: PoolStore) -> None:
    _, [jid] = store.queue.submit("alice", [NewJob(AD, [], [], {})])
    for _ in range(10):
        for action in ("hold", "release"):
            assert store.actions.act(action, [store.queue.get_job(jid)], "", "alice") == [jid]
    assert kinds(store, jid) == ["submitted"] + ["released", "held"] * 4 + ["released"]
    changed, _ = store.actions.edit([store.queue.get_job(jid)], "Note", "1", "alice")
    assert changed == [jid] and kinds(store, jid)[-1] == "edited"
    assert len(kinds(store, jid)) == 10


def test_a_job_that_runs_again_forever_keeps_a_bounded_log(store: PoolStore) -> None:
    """on_exit_remove = false: back to idle after every run."""
    looping = AD[:-1] + "; OnExitRemove = false ]"
    _, [jid] = store.queue.submit("alice", [NewJob(looping, [], [], {})])
    pilot = store.pilots.register(dict(SLOT), "g1", PilotOwner("pilot", "fe", "main"), 3600)
    for _ in range(12):
        _, [c], _ = store.turns.cycle(pilot, [], dict(FREE), 60, 1, 0.0)
        store.turns.cycle(pilot, [Completion(c["claim_id"], 0)], dict(FREE), 60, 0, 0.0)
    found = kinds(store, jid)
    assert len(found) <= 10 and found[0] == "submitted" and found[-1] == "requeued"


def test_only_safe_output_paths_are_kept_and_at_most_the_cap(store: PoolStore) -> None:
    _, [jid] = store.queue.submit("alice", [NewJob(AD, [], [], {})])
    pilot = store.pilots.register(dict(SLOT), "g1", PilotOwner("pilot", "fe", "main"), 3600)
    _, [c], _ = store.turns.cycle(pilot, [], dict(FREE), 60, 1, 0.0)
    sha = "0" * 64
    names = ("..", "a/../b", "/etc/x", "a//b", "one", "d/two", "three", "four")
    outputs = [{"name": n, "sha256": sha} for n in names]
    store.turns.cycle(pilot, [Completion(c["claim_id"], 0, outputs)], dict(FREE), 60, 0, 0.0)
    row = store.queue.get_job(jid)
    assert [o["name"] for o in row.outputs] == ["one", "d/two", "three"]
    with store.engine.connect() as conn:
        detail = conn.execute(
            sa.select(events.c.detail).where(events.c.type == "completed")
        ).scalar_one()
    assert detail["outputs_dropped"] == 5
