"""Self-checkpointing jobs and streamed stdout/stderr, in-process against the
real pool app (real tokens, real ClassAd library), on SQLite and PostgreSQL.

A checkpoint (an exit with SuccessCheckpointExitCode) is kept as the job's
files, granted to its owner, handed to the next run in its sandbox, counted
as NumCkpts and not as a completion. Streams: only the pilot identity whose
pilot holds the claim writes, only the job's owner (or an admin) reads,
within the bounds (401/403/409/413/422 as the rest of the API answers).
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from glidewms.config.pool import PoolConfig
from glidewms.pool.schema import stream_chunks
from glidewms.pool.streams import CHUNK_BYTES, KEEP_BYTES
from glidewms.security.tokens import TokenIssuer
from tests.components.postgres import database_url, postgres_cluster  # noqa: F401
from tests.integration.conftest import bearer

AD = (
    '[ Cmd = "/bin/echo"; RequestCpus = 1; RequestMemory = 100; RequestDisk = 10; '
    "Requirements = TARGET.Cpus >= RequestCpus{extra} ]"
)
CHECKPOINTING = '; SuccessCheckpointExitCode = 85; TransferCheckpoint = "state.txt"'
STREAMING = "; StreamOut = true; StreamErr = true"
SLOT = {"Cpus": 2, "Memory": 1000, "Disk": 100000, "GLIDEIN_Site": "SA"}
FREE = {"cpus": 2, "memory": 1000, "disk": 100000}
OWNER = {"fe": "fe1", "group": "main", "entry": "A", "site": "SA"}
API = "/api/v1"


@pytest.fixture
def pool_config(pool_config: PoolConfig, database_url: str | None) -> PoolConfig:  # noqa: F811
    pool_config.database_url = database_url
    return pool_config


def pilot_token(issuer: TokenIssuer, **claims: str) -> dict[str, str]:
    return bearer(issuer.issue("pilot", ["pilot"], 600, **{**OWNER, **claims}))


def register(pool: TestClient, auth: dict[str, str], glidein: str = "A-1") -> str:
    r = pool.post(f"{API}/pilots", json={"slot": SLOT, "glidein_id": glidein}, headers=auth)
    assert r.status_code == 201, r.text
    return str(r.json()["pilot_id"])


def submit(pool: TestClient, who: dict[str, str], extra: str) -> str:
    r = pool.post(f"{API}/jobs", json={"jobs": [{"ad": AD.format(extra=extra)}]}, headers=who)
    assert r.status_code == 201, r.text
    [jid] = r.json()["job_ids"]
    return str(jid)


def turn(
    pool: TestClient,
    pid: str,
    auth: dict[str, str],
    completions: tuple[dict[str, Any], ...] | list[dict[str, Any]] = (),
) -> dict[str, Any]:
    completions = list(completions)
    body = {"free": FREE, "max_jobs": 0 if completions else 1, "completions": completions}
    r = pool.post(f"{API}/pilots/{pid}/cycle", json=body, headers=auth)
    assert r.status_code == 200, r.text
    return dict(r.json())


def upload(pool: TestClient, data: bytes, who: dict[str, str]) -> str:
    digest = hashlib.sha256(data).hexdigest()
    assert pool.put(f"{API}/files/{digest}", content=data, headers=who).status_code == 201
    return digest


def ended(claim: str, code: int, **extra: Any) -> dict[str, Any]:
    return {"claim_id": claim, "exit_code": code, "wall_seconds": 1.0, **extra}


def job(pool: TestClient, jid: str, who: dict[str, str]) -> dict[str, Any]:
    return dict(pool.get(f"{API}/jobs/{jid}", headers=who).json())


def test_a_checkpoint_is_kept_handed_to_the_next_run_and_counted(pool, issuer, auth):
    alice, pilot = auth("alice"), pilot_token(issuer)
    pid = register(pool, pilot)
    jid = submit(pool, alice, CHECKPOINTING)
    [claim] = turn(pool, pid, pilot)["claims"]
    spec = claim["job"]
    assert spec["checkpoint_exit_code"] == 85 and spec["checkpoint_files"] == ["state.txt"]
    assert spec["sandbox"] == []

    first = upload(pool, b"count=1\n", pilot)
    done = turn(
        pool,
        pid,
        pilot,
        [ended(claim["claim_id"], 85, checkpoint=[{"name": "state.txt", "sha256": first}])],
    )
    assert done["completed"] == {claim["claim_id"]: True}
    view = job(pool, jid, alice)
    assert view["state"] == "idle" and view["exit_code"] is None
    assert "NumCkpts = 1" in view["ad_long"] and "NumJobCompletions = 0" in view["ad_long"]
    events = pool.get(f"{API}/jobs/{jid}/events", headers=alice).json()
    [checkpointed] = [e for e in events if e["type"] == "checkpointed"]
    assert checkpointed["detail"]["num_checkpoints"] == 1
    assert "failure" not in checkpointed["detail"]

    # the next run starts with the checkpoint in its sandbox, and may read it
    [again] = turn(pool, pid, pilot)["claims"]
    assert again["job"]["sandbox"] == [{"name": "state.txt", "sha256": first}]
    assert pool.get(f"{API}/files/{first}", headers=pilot).content == b"count=1\n"
    # a second checkpoint replaces the file of its name and adds a new one
    second, extra = upload(pool, b"count=2\n", pilot), upload(pool, b"more\n", pilot)
    turn(
        pool,
        pid,
        pilot,
        [
            ended(
                again["claim_id"],
                85,
                checkpoint=[
                    {"name": "state.txt", "sha256": second},
                    {"name": "b.dat", "sha256": extra},
                ],
            )
        ],
    )
    [third] = turn(pool, pid, pilot)["claims"]
    assert {f["name"]: f["sha256"] for f in third["job"]["sandbox"]} == {
        "state.txt": second,
        "b.dat": extra,
    }
    # the final exit completes it as usual, its outputs its own
    out = upload(pool, b"total 3\n", pilot)
    turn(
        pool,
        pid,
        pilot,
        [ended(third["claim_id"], 0, outputs=[{"name": "out.txt", "sha256": out}])],
    )
    view = job(pool, jid, alice)
    assert view["state"] == "completed" and view["exit_code"] == 0
    assert view["outputs"] == [{"name": "out.txt", "sha256": out}]
    assert "NumCkpts = 2" in view["ad_long"] and "NumJobCompletions = 1" in view["ad_long"]
    # the checkpoint is the owner's to read (referenced by the job), no one else's
    assert pool.get(f"{API}/files/{second}", headers=alice).content == b"count=2\n"
    assert pool.get(f"{API}/files/{second}", headers=auth("bob")).status_code == 404
    counters = pool.get(f"{API}/stats", headers=alice).json()["counters"]
    assert counters["job_failures"] == 0 and counters["jobs_completed"] == 1


def test_an_exit_code_other_than_the_checkpoint_code_is_an_exit(pool, issuer, auth):
    alice, pilot = auth("alice"), pilot_token(issuer)
    pid = register(pool, pilot)
    jid = submit(pool, alice, CHECKPOINTING)
    [claim] = turn(pool, pid, pilot)["claims"]
    digest = upload(pool, b"x", pilot)
    # a checkpoint list without the checkpoint code is not a checkpoint
    turn(
        pool,
        pid,
        pilot,
        [ended(claim["claim_id"], 3, checkpoint=[{"name": "state.txt", "sha256": digest}])],
    )
    view = job(pool, jid, alice)
    assert view["state"] == "completed" and view["exit_code"] == 3
    assert "NumCkpts = 0" in view["ad_long"]


def chunk(claim: str, which: str, offset: int, data: bytes) -> tuple[str, dict[str, Any]]:
    body = {"which": which, "offset": offset, "data": base64.b64encode(data).decode()}
    return f"{API}/claims/{claim}/stream", body


def read(pool: TestClient, jid: str, who: dict[str, str], **params: Any) -> Any:
    return pool.get(f"{API}/jobs/{jid}/stream", params=params, headers=who)


def test_streams_are_written_by_the_claims_pilot_and_read_by_the_owner(pool, issuer, auth):
    alice, pilot = auth("alice"), pilot_token(issuer)
    pid = register(pool, pilot)
    jid = submit(pool, alice, STREAMING)
    [claim] = turn(pool, pid, pilot)["claims"]
    cid = claim["claim_id"]
    assert claim["job"]["stream_out"] is True and claim["job"]["stream_err"] is True

    r = read(pool, jid, alice)  # nothing yet
    assert r.status_code == 200 and r.content == b""
    assert r.headers["Glidewms-Stream-End"] == "0"
    assert r.headers["Glidewms-Job-State"] == "running"
    url, body = chunk(cid, "out", 0, b"line 1\n")
    assert pool.post(url, json=body, headers=pilot).json() == {"start": 0, "end": 7}
    assert pool.post(url, json=body, headers=pilot).json() == {"start": 0, "end": 7}  # a retry
    url, body = chunk(cid, "out", 5, b"1\nline 2\n")  # overlaps what is kept
    assert pool.post(url, json=body, headers=pilot).json() == {"start": 0, "end": 14}
    url, body = chunk(cid, "err", 0, b"oops\n")
    assert pool.post(url, json=body, headers=pilot).status_code == 200

    assert read(pool, jid, alice).content == b"line 1\nline 2\n"
    assert read(pool, jid, alice, offset=7).content == b"line 2\n"
    assert read(pool, jid, alice, which="err").content == b"oops\n"
    last = read(pool, jid, alice, limit=3)
    assert last.content == b" 2\n"
    assert last.headers["Glidewms-Stream-Offset"] == "11"
    assert read(pool, jid, auth("root", "admin")).content == b"line 1\nline 2\n"

    # only the owner reads; only a token reads at all; unknown jobs are 404
    assert read(pool, jid, auth("bob")).status_code == 403
    assert pool.get(f"{API}/jobs/{jid}/stream").status_code == 401
    assert read(pool, "999.0", alice).status_code == 404
    assert read(pool, jid, alice, which="in").status_code == 422
    assert read(pool, jid, alice, limit=0).status_code == 422

    # only the pilot identity holding the claim writes; a user token is not a pilot's
    url, body = chunk(cid, "out", 14, b"forged\n")
    assert pool.post(url, json=body, headers=pilot_token(issuer, fe="fe2")).status_code == 409
    assert pool.post(url, json=body, headers=pilot_token(issuer, entry="B")).status_code == 409
    assert pool.post(url, json=body, headers=alice).status_code == 403
    assert pool.post(url, json=body).status_code == 401
    forged_claim, forged = chunk("0" * 32 + ".1.0", "out", 0, b"x")
    assert pool.post(forged_claim, json=forged, headers=pilot).status_code == 409
    # bounds: a chunk over CHUNK_BYTES is 413, a bad offset or text 422
    url, body = chunk(cid, "out", 14, b"x" * (CHUNK_BYTES + 1))
    assert pool.post(url, json=body, headers=pilot).status_code == 413
    url, body = chunk(cid, "out", -1, b"x")
    assert pool.post(url, json=body, headers=pilot).status_code == 422
    url, body = chunk(cid, "out", 14, b"x")
    assert pool.post(url, json={**body, "data": "not base64!"}, headers=pilot).status_code == 422
    assert pool.post(url, json={**body, "which": "in"}, headers=pilot).status_code == 422
    assert read(pool, jid, alice).content == b"line 1\nline 2\n"

    # after completion the text stays readable, and nothing more is taken
    turn(pool, pid, pilot, [ended(cid, 0)])
    url, body = chunk(cid, "out", 14, b"late\n")
    assert pool.post(url, json=body, headers=pilot).status_code == 409
    r = read(pool, jid, alice)
    assert r.content == b"line 1\nline 2\n" and r.headers["Glidewms-Job-State"] == "completed"


def test_a_new_run_streams_after_the_earlier_runs(pool, issuer, auth):
    alice, pilot = auth("alice"), pilot_token(issuer)
    pid = register(pool, pilot)
    jid = submit(pool, alice, STREAMING + CHECKPOINTING)
    [claim] = turn(pool, pid, pilot)["claims"]
    url, body = chunk(claim["claim_id"], "out", 0, b"run 1\n")
    pool.post(url, json=body, headers=pilot)
    turn(pool, pid, pilot, [ended(claim["claim_id"], 85, checkpoint=[])])
    [again] = turn(pool, pid, pilot)["claims"]
    url, body = chunk(again["claim_id"], "out", 0, b"run 2\n")
    assert pool.post(url, json=body, headers=pilot).json() == {"start": 0, "end": 12}
    assert read(pool, jid, alice).content == b"run 1\nrun 2\n"


def test_the_pool_keeps_the_newest_bytes_in_few_rows(pool, issuer, auth):
    """Past KEEP_BYTES the oldest bytes go (a reader is told where the kept
    text starts); however small the chunks, a stream is a few rows."""
    alice, pilot = auth("alice"), pilot_token(issuer)
    pid = register(pool, pilot)
    jid = submit(pool, alice, STREAMING)
    [claim] = turn(pool, pid, pilot)["claims"]
    text = bytes(i % 251 for i in range(KEEP_BYTES + 5 * CHUNK_BYTES + 123))
    offset = 0
    for size in [1, 2, 3] * 50:  # small chunks first
        url, body = chunk(claim["claim_id"], "out", offset, text[offset : offset + size])
        assert pool.post(url, json=body, headers=pilot).status_code == 200
        offset += size
    while offset < len(text):
        piece = text[offset : offset + CHUNK_BYTES]
        url, body = chunk(claim["claim_id"], "out", offset, piece)
        kept = pool.post(url, json=body, headers=pilot).json()
        offset += len(piece)
    assert kept == {"start": len(text) - KEEP_BYTES, "end": len(text)}
    r = read(pool, jid, alice, offset=0)
    assert r.headers["Glidewms-Stream-Offset"] == str(len(text) - KEEP_BYTES)
    assert r.headers["Glidewms-Stream-Start"] == str(len(text) - KEEP_BYTES)
    assert r.content == text[-KEEP_BYTES:]
    middle = read(pool, jid, alice, offset=len(text) - 1000, limit=10)
    assert middle.content == text[-1000:-990]
    store = pool.app.state.pool.store
    with store.engine.connect() as conn:
        rows = conn.execute(sa.select(sa.func.count()).select_from(stream_chunks)).scalar()
    assert rows <= KEEP_BYTES // CHUNK_BYTES + 2
