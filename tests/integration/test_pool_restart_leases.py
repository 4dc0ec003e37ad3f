"""A pool down longer than its leases does not disown the pilots that waited for it.

`glidewms pool` as a process, killed with SIGKILL while a pilot holds a
running job; the pool stays down past both the pilot's and the claim's
lease, then starts again. The pilot (the test, speaking the protocol) then
heartbeats: the pool still knows it and its job is still running (before,
the first expiry pass after the start declared it lost and requeued the
job, and the pilot, told it was unknown, killed it). A pilot that stays
silent after the restart is lost one lease later, as always.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import sqlalchemy as sa
import yaml

from glidewms.security.tokens import TokenIssuer
from tests.harness import wait_for
from tests.integration.test_pool_durability import FREE, SLOT, PoolProcess

LEASE = 2.0


def test_leases_that_ran_out_while_the_pool_was_down_are_renewed(tmp_path: Path) -> None:
    pool = PoolProcess(tmp_path, None)
    values = yaml.safe_load(pool.config.read_text())
    values.update(pilot_lease_seconds=LEASE, claim_lease_seconds=LEASE, heartbeat_seconds=0.5)
    pool.config.write_text(yaml.safe_dump(values))
    issuer = TokenIssuer.from_file(pool.keys[0])
    user = {"Authorization": f"Bearer {issuer.issue('alice', ['user'])}"}
    pilot = {"Authorization": f"Bearer {issuer.issue('p', ['pilot'], fe='fe1', group='main')}"}

    def post(path: str, headers: dict[str, str], body: dict) -> httpx.Response:
        return httpx.post(f"{pool.url}/api/v1{path}", json=body, headers=headers, timeout=10)

    try:
        pool.start()
        assert post("/jobs", user, {"jobs": [{"ad": '[ Cmd = "/bin/true" ]'}]}).status_code == 201
        pilot_id = post("/pilots", pilot, {"slot": SLOT, "glidein_id": "g"}).json()["pilot_id"]
        claim = post(f"/pilots/{pilot_id}/claim", pilot, {"free": FREE, "wait": 0})
        assert claim.status_code == 200, claim.text
        job_id = claim.json()["job_id"]

        pool.kill()
        engine = sa.create_engine(f"sqlite:///{tmp_path / 'pool' / 'pool.sqlite'}")
        with engine.connect() as conn:
            (pilot_lease,) = conn.execute(
                sa.text("SELECT lease_expires FROM pilots WHERE pilot_id = :p"), {"p": pilot_id}
            ).one()
        engine.dispose()
        # down past the leases: the condition is the clock itself
        wait_for(lambda: time.time() > pilot_lease + LEASE, "the leases to run out", 30)

        pool.start()
        beat = post(f"/pilots/{pilot_id}/heartbeat", pilot, {"claims": [claim.json()["claim_id"]]})
        assert beat.status_code == 200, beat.text
        job = httpx.get(f"{pool.url}/api/v1/jobs/{job_id}", headers=user, timeout=10).json()
        assert job["state"] == "running", job
        assert "renewed" in (tmp_path / "pool.log").read_text()

        # silent from now on: lost one lease later, and its job requeued
        wait_for(
            lambda: (
                httpx.get(f"{pool.url}/api/v1/jobs/{job_id}", headers=user, timeout=10).json()[
                    "state"
                ]
                == "idle"
            ),
            "the silent pilot's job to be requeued",
            60,
        )
    finally:
        pool.stop()
