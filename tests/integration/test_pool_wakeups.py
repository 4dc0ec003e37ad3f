"""No thundering herd: one submitted job wakes one long-polling pilot, not all.

Many pilots long-poll one pool in one event loop (httpx over ASGI, real
tokens and store); wake-ups are counted by the pool's own `WorkSignal`, not
timed. A job that only the last waiter can run still reaches it: a woken
pilot that finds nothing hands its wake on.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

from glidewms.config.pool import PoolConfig
from glidewms.pool.api import create_app
from glidewms.security.tokens import TokenIssuer
from tests.integration.conftest import bearer

WAITERS = 40
AD = (
    '[ Cmd = "/bin/true"; RequestCpus = 1; RequestMemory = 100; RequestDisk = 10; '
    "Requirements = TARGET.Cpus >= RequestCpus && TARGET.Memory >= RequestMemory ]"
)
RARE_AD = (
    '[ Cmd = "/bin/true"; RequestCpus = 1; RequestMemory = 100; RequestDisk = 10; '
    'Requirements = TARGET.GLIDEIN_Site == "RARE" ]'
)


def slot(site: str) -> dict[str, Any]:
    return {"Cpus": 1, "Memory": 1000, "Disk": 100000, "GLIDEIN_Site": site}


async def until(condition: Any, what: str, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def scenario(config: PoolConfig, issuer: TokenIssuer) -> None:
    app = create_app(config, "http://testserver")
    signal = app.state.pool.signal
    user = bearer(issuer.issue("alice", ["user"]))
    pilot = bearer(issuer.issue("pilot", ["pilot"], fe="fe1", group="main"))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        # the last pilot to wait is the only one at site RARE
        sites = ["COMMON"] * (WAITERS - 1) + ["RARE"]
        ids = []
        for i, site in enumerate(sites):
            r = await client.post(
                "/api/v1/pilots", json={"slot": slot(site), "glidein_id": f"g{i}"}, headers=pilot
            )
            assert r.status_code == 201, r.text
            ids.append(r.json()["pilot_id"])

        def turn(pid: str) -> asyncio.Task[httpx.Response]:
            body = {"wait": 30, "max_jobs": 1, "free": {"cpus": 1, "memory": 1000}}
            return asyncio.create_task(
                client.post(f"/api/v1/pilots/{pid}/cycle", json=body, headers=pilot, timeout=60)
            )

        tasks = {}
        for pid in ids:  # in order: the RARE pilot waits last, at the back of the queue
            tasks[pid] = turn(pid)
            await until(lambda n=len(tasks): signal.waiting == n, f"{len(tasks)} waiters")

        async def submit(ad: str) -> str:
            r = await client.post("/api/v1/jobs", json={"jobs": [{"ad": ad}]}, headers=user)
            assert r.status_code == 201, r.text
            return str(r.json()["job_ids"][0])

        try:
            # one ordinary job: one wake-up, and it starts
            before = signal.wakeups
            jid = await submit(AD)
            done, _ = await asyncio.wait(tasks.values(), timeout=20, return_when="FIRST_COMPLETED")
            assert len(done) == 1, "no pilot (or more than one) answered the one job"
            [(pid, task)] = [(p, t) for p, t in tasks.items() if t in done]
            claims = task.result().json()["claims"]
            assert [c["job_id"] for c in claims] == [jid]
            assert signal.wakeups - before == 1, "one job woke more than one waiting pilot"
            del tasks[pid]
            await until(lambda: signal.waiting == len(tasks), "the others back to waiting")
            assert sum(t.done() for t in tasks.values()) == 0

            # a job only the pilot at the back of the queue can run still reaches it
            before = signal.wakeups
            rare = await submit(RARE_AD)
            answer = await asyncio.wait_for(tasks[ids[-1]], 20)
            assert [c["job_id"] for c in answer.json()["claims"]] == [rare]
            woken = signal.wakeups - before
            assert 1 <= woken <= len(tasks), f"{woken} wake-ups for {len(tasks)} waiters"
            del tasks[ids[-1]]
            await until(lambda: signal.waiting == len(tasks), "the others back to waiting")
            assert sum(t.done() for t in tasks.values()) == 0, "a pilot got a job it cannot run"
        finally:
            for t in tasks.values():
                t.cancel()
            await asyncio.gather(*tasks.values(), return_exceptions=True)


def test_one_job_wakes_one_pilot_and_a_rare_one_reaches_its_pilot(
    pool_config: PoolConfig, issuer: TokenIssuer
) -> None:
    asyncio.run(scenario(pool_config, issuer))
