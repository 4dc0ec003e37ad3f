"""Leases without idle heartbeats, against a real `glidewms pool` process.

A pilot inside a long-poll is connected: the pool keeps it alive without a
heartbeat, past its lease; a pilot whose long-poll connection drops is lost
one lease after the drop (not when its poll would have ended); a busy
pilot's heartbeats renew its claims (a read: the renewals are written in one
batch per expiry pass); and a turn's answer carries a heartbeat's (kill,
drain), a drain waking the pilot's long-poll. Leases are short (LEASE) and
every wait is a polled condition with a deadline: the clock itself where
the point is that time passed.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import sqlalchemy as sa
import yaml

from glidewms.security.tokens import TokenIssuer
from tests.harness import wait_for
from tests.integration.test_pool_durability import FREE, SLOT, PoolProcess

LEASE = 1.5  # pilot and claim leases, seconds
LONG = 60.0  # a long-poll that outlasts every deadline below


class Pool:
    def __init__(self, process: PoolProcess, tmp: Path) -> None:
        self.process = process
        self.url = process.url
        issuer = TokenIssuer.from_file(process.keys[0])
        self.pilot_token = issuer.issue("p", ["pilot"], 3600, fe="fe1", group="main")
        self.user = {"Authorization": f"Bearer {issuer.issue('alice', ['user'])}"}
        self.admin = {"Authorization": f"Bearer {issuer.issue('root', ['admin'])}"}
        self.pilot = {"Authorization": f"Bearer {self.pilot_token}"}
        self.db = sa.create_engine(f"sqlite:///{tmp / 'pool' / 'pool.sqlite'}")

    def post(self, path: str, headers: dict[str, str], body: dict[str, Any]) -> httpx.Response:
        return httpx.post(f"{self.url}/api/v1{path}", json=body, headers=headers, timeout=LONG + 30)

    def register(self) -> str:
        r = self.post("/pilots", self.pilot, {"slot": SLOT, "glidein_id": "g"})
        assert r.status_code == 201, r.text
        assert r.json()["turns_renew_leases"] is True
        return str(r.json()["pilot_id"])

    def pilot_row(self, pilot_id: str) -> Any:
        with self.db.connect() as conn:
            return conn.execute(
                sa.text("SELECT state, last_seen, registered_at FROM pilots WHERE pilot_id = :p"),
                {"p": pilot_id},
            ).one()

    def job_state(self, job_id: str) -> str:
        r = httpx.get(f"{self.url}/api/v1/jobs/{job_id}", headers=self.user, timeout=10)
        return str(r.json()["state"])

    def submit(self, n: int) -> None:
        jobs = [{"ad": '[ Cmd = "/bin/true"; RequestCpus = 1 ]'} for _ in range(n)]
        assert self.post("/jobs", self.user, {"jobs": jobs}).status_code == 201


@pytest.fixture
def pool(tmp_path: Path) -> Iterator[Pool]:
    process = PoolProcess(tmp_path, None)
    values = yaml.safe_load(process.config.read_text())
    values.update(
        pilot_lease_seconds=LEASE,
        claim_lease_seconds=LEASE,
        lease_check_seconds=0.1,
        max_claim_wait=LONG,
        heartbeat_seconds=0.5,
    )
    process.config.write_text(yaml.safe_dump(values))
    try:
        process.start()
        p = Pool(process, tmp_path)
        yield p
        p.db.dispose()
    finally:
        process.stop()


def long_poll(pool: Pool, pilot_id: str, body: dict[str, Any]) -> dict[str, Any]:
    """A cycle call in a thread; the dict gets its response when it ends."""
    result: dict[str, Any] = {}

    def run() -> None:
        result["response"] = pool.post(f"/pilots/{pilot_id}/cycle", pool.pilot, body)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    result["thread"] = thread
    return result


def seen_after_registering(pool: Pool, pilot_id: str) -> bool:
    """The pool wrote a renewal of this pilot: its turn has begun."""
    row = pool.pilot_row(pilot_id)
    return bool(row.last_seen > row.registered_at)


def test_a_long_polling_pilot_without_heartbeats_outlives_its_lease(pool: Pool) -> None:
    waiting, silent = pool.register(), pool.register()
    poll = long_poll(pool, waiting, {"free": FREE, "wait": LONG, "claims": []})
    wait_for(lambda: seen_after_registering(pool, waiting), "the long-poll to begin", 30)
    start = time.time()
    # the silent pilot (no call at all) is lost: expiry runs with this lease...
    wait_for(lambda: pool.pilot_row(silent).state == "lost", "the silent pilot to be lost", 30)
    # ...and well past its lease the long-polling one, which sent no heartbeat, is not
    wait_for(lambda: time.time() > start + 3 * LEASE, "three leases to pass", 30)
    assert pool.pilot_row(waiting).state == "active"
    assert "response" not in poll  # still in its long-poll
    # it is answered (not 410) once work comes: alive, as the pool treated it
    pool.submit(1)
    poll["thread"].join(30)
    assert poll["response"].status_code == 200, poll["response"].text
    assert len(poll["response"].json()["claims"]) == 1


def test_a_pilot_whose_long_poll_drops_is_lost(pool: Pool) -> None:
    pilot_id = pool.register()
    url = urlsplit(pool.url)
    body = json.dumps({"free": FREE, "wait": LONG, "claims": []}).encode()
    request = (
        f"POST /api/v1/pilots/{pilot_id}/cycle HTTP/1.1\r\nHost: {url.netloc}\r\n"
        f"Authorization: Bearer {pool.pilot_token}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    with socket.create_connection((url.hostname, url.port), timeout=10) as sock:
        sock.sendall(request)
        wait_for(lambda: seen_after_registering(pool, pilot_id), "the long-poll to begin", 30)
    # the client is gone mid-wait: lost one lease later, not when the poll would end (LONG)
    wait_for(lambda: pool.pilot_row(pilot_id).state == "lost", "the dropped pilot lost", LONG / 3)


def test_a_busy_pilots_heartbeats_renew_its_claims(pool: Pool) -> None:
    pool.submit(1)
    pilot_id = pool.register()
    r = pool.post(f"/pilots/{pilot_id}/cycle", pool.pilot, {"free": FREE, "wait": 0, "claims": []})
    [claim] = r.json()["claims"]
    end = time.time() + 4 * LEASE

    def beat() -> bool:
        answer = pool.post(
            f"/pilots/{pilot_id}/heartbeat", pool.pilot, {"claims": [claim["claim_id"]]}
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["kill"] == []
        return time.time() > end

    wait_for(beat, "four leases of heartbeats", 60, interval=0.2)
    assert pool.job_state(claim["job_id"]) == "running"
    assert pool.pilot_row(pilot_id).state == "active"
    # heartbeats stop: the claim (and the pilot) run out, the job is idle again
    wait_for(lambda: pool.job_state(claim["job_id"]) == "idle", "the job requeued", 30)


def test_kill_and_drain_reach_a_pilot_through_its_cycle_answer(pool: Pool) -> None:
    pool.submit(2)
    pilot_id = pool.register()
    r = pool.post(f"/pilots/{pilot_id}/cycle", pool.pilot, {"free": FREE, "wait": 0, "max_jobs": 2})
    assert "kill" not in r.json()  # a pilot that lists no claims gets the old answer
    a, b = r.json()["claims"]
    removed = pool.post("/jobs/remove", pool.user, {"job_ids": [a["job_id"]]})
    assert removed.status_code == 200, removed.text

    listed = [a["claim_id"], b["claim_id"]]
    turn = pool.post(
        f"/pilots/{pilot_id}/cycle", pool.pilot, {"free": FREE, "max_jobs": 0, "claims": listed}
    ).json()
    assert (turn["kill"], turn["drain"]) == ([a["claim_id"]], False)

    # an idle long-poll is woken by its pilot's drain, and answers it
    poll = long_poll(pool, pilot_id, {"free": FREE, "wait": LONG, "claims": [b["claim_id"]]})
    wait_for(lambda: seen_after_registering(pool, pilot_id), "the long-poll to begin", 30)
    drained = pool.post("/drains", pool.admin, {"pilot": pilot_id})
    assert drained.status_code == 200, drained.text
    poll["thread"].join(LONG / 3)
    assert "response" in poll, "the drain did not wake the long-poll"
    answer = poll["response"].json()
    assert (answer["drain"], answer["kill"], answer["claims"]) == (True, [], [])
    assert pool.job_state(b["job_id"]) == "running"  # a gentle drain: it finishes
