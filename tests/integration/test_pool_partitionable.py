"""Partitionable pilots: the demand summary (from the in-memory index) and
large jobs not starved by small ones, on SQLite and PostgreSQL.

A "GPU" here is the slot attribute GPUs and the job's RequestGPUs, matched by
the real ClassAd library: no GPU exists on this machine, and the pool only
ever sees the numbers a pilot publishes, so the numbers are the stand-in.
"""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from glidewms.config.pool import PoolConfig
from glidewms.pool.api import create_app
from tests.components.postgres import database_url, postgres_cluster  # noqa: F401

REQ = "Requirements = TARGET.Cpus >= RequestCpus && TARGET.Memory >= RequestMemory"
SMALL = f'[ Cmd = "/bin/true"; RequestCpus = 1; RequestMemory = 100; {REQ} ]'
BIG = f'[ Cmd = "/bin/true"; RequestCpus = 4; RequestMemory = 3000; {REQ} ]'
GPU = (
    '[ Cmd = "/bin/true"; RequestCpus = 1; RequestMemory = 100; RequestGPUs = 1; '
    f"{REQ} && TARGET.GPUs >= RequestGPUs ]"
)
NODE = {"Cpus": 4, "Memory": 4000, "Disk": 100000, "GPUs": 0, "GLIDEIN_Site": "LOCAL"}


@pytest.fixture
def pool_config(pool_config: PoolConfig, database_url: str | None) -> PoolConfig:  # noqa: F811
    pool_config.database_url = database_url
    return pool_config


def submit(pool: TestClient, who: dict, ad: str, n: int = 1) -> list[str]:
    r = pool.post("/api/v1/jobs", json={"jobs": [{"ad": ad}] * n}, headers=who)
    assert r.status_code == 201, r.text
    return r.json()["job_ids"]


def register(pool: TestClient, pilot: dict, slot: dict) -> str:
    r = pool.post("/api/v1/pilots", json={"slot": slot, "glidein_id": "g"}, headers=pilot)
    assert r.status_code == 201, r.text
    return r.json()["pilot_id"]


class Node:
    """A partitionable pilot that tracks its free resources like the agent does."""

    def __init__(self, pool: TestClient, pilot: dict, slot: dict = NODE) -> None:
        self.pool, self.pilot = pool, pilot
        self.pid = register(pool, pilot, slot)
        self.free = {
            "cpus": slot["Cpus"],
            "memory": slot["Memory"],
            "disk": slot["Disk"],
            "gpus": slot.get("GPUs", 0),
        }
        self.running: dict[str, dict] = {}

    def claim(self) -> str | None:
        r = self.pool.post(
            f"/api/v1/pilots/{self.pid}/claim",
            json={"free": self.free, "wait": 0},
            headers=self.pilot,
        )
        assert r.status_code in (200, 204), r.text
        if r.status_code == 204:
            return None
        got = r.json()
        request = got["job"]["request"]
        self.free["cpus"] -= request["cpus"]
        self.free["memory"] -= request["memory"]
        self.running[got["job_id"]] = got
        return got["job_id"]

    def complete(self, jid: str) -> None:
        got = self.running.pop(jid)
        r = self.pool.post(
            f"/api/v1/claims/{got['claim_id']}/complete", json={"exit_code": 0}, headers=self.pilot
        )
        assert r.status_code == 200, r.text
        self.free["cpus"] += got["job"]["request"]["cpus"]
        self.free["memory"] += got["job"]["request"]["memory"]


def demand(pool: TestClient, fe: dict) -> dict[str, dict]:
    r = pool.get("/api/v1/demand", headers=fe)
    assert r.status_code == 200, r.text
    return {
        ("gpu" if "RequestGPUs" in ac["ad"] else "small"): ac for ac in r.json()["autoclusters"]
    }


def test_demand_summary_counts_owners_dates_resources_and_matching_pilots(pool_config, auth):
    alice, bob, fe = auth("alice"), auth("bob"), auth("fe1", "frontend")
    pilot = auth("pilot", "pilot", fe="fe1")
    with TestClient(create_app(pool_config)) as pool:
        submit(pool, alice, SMALL, 3)
        submit(pool, bob, SMALL, 2)
        submit(pool, alice, GPU)
        first = pool.get("/api/v1/jobs", headers=alice).json()[0]["q_date"]
        node = Node(pool, pilot)
        assert node.claim() is not None  # alice's (names break the tie), her oldest
        d = demand(pool, fe)
        small, gpu = d["small"], d["gpu"]
        assert (small["idle"], small["running"]) == (4, 1)
        assert small["owners"] == {"alice": 2, "bob": 2}
        assert small["oldest_idle"] == pytest.approx(first)
        assert small["request"] == {"cpus": 1, "memory": 100, "disk": 0, "gpus": 0}
        assert small["matching_pilots"] == 1
        # the GPU job fits no registered pilot, and the summary says so
        assert (gpu["idle"], gpu["request"]["gpus"], gpu["matching_pilots"]) == (1, 1, 0)
        gpu_node = Node(pool, pilot, {**NODE, "GPUs": 1, "GLIDEIN_Site": "GPUSITE"})
        d = demand(pool, fe)
        assert (d["gpu"]["matching_pilots"], d["small"]["matching_pilots"]) == (1, 2)
        # a retiring pilot will run nothing more: it is not counted
        r = pool.post(
            f"/api/v1/pilots/{gpu_node.pid}/heartbeat",
            json={"claims": [], "retiring": True},
            headers=pilot,
        )
        assert r.status_code == 200, r.text
        assert demand(pool, fe)["gpu"]["matching_pilots"] == 0
    with TestClient(create_app(pool_config)) as pool:  # rebuilt from the database
        d = demand(pool, fe)
        assert (d["small"]["idle"], d["small"]["running"]) == (4, 1)
        assert d["small"]["owners"] == {"alice": 2, "bob": 2}
        assert d["small"]["oldest_idle"] == pytest.approx(first)
        assert d["small"]["matching_pilots"] == 1 and d["gpu"]["matching_pilots"] == 0


@pytest.mark.parametrize("reserve", [True, False])
def test_a_large_job_is_not_starved_by_small_ones(pool_config, auth, reserve):
    """alice keeps a 4-core pilot full of 1-core jobs; bob (who runs nothing,
    so his priority is better) queues a 4-core job. With reservations the
    pilot takes no more small jobs and runs bob's job once it is empty; without
    them (the control) every freed core goes to another small job."""
    pool_config.reserve_for_large_jobs = reserve
    alice, bob, pilot = auth("alice"), auth("bob"), auth("pilot", "pilot", fe="fe1")
    with TestClient(create_app(pool_config)) as pool:
        submit(pool, alice, SMALL, 20)
        node = Node(pool, pilot)
        for _ in range(4):
            assert node.claim() is not None
        assert node.claim() is None  # full
        [big] = submit(pool, bob, BIG)
        got = []
        for _ in range(8):
            node.complete(next(iter(node.running)))
            while (jid := node.claim()) is not None:
                got.append(jid)
            if big in got:
                break
        if reserve:
            assert got == [big]  # nothing small in between
            assert node.running.keys() == {big}
        else:
            assert big not in got and len(got) == 8  # starved


def test_no_more_pilots_wait_than_large_jobs(pool_config, auth):
    alice, bob, pilot = auth("alice"), auth("bob"), auth("pilot", "pilot", fe="fe1")
    with TestClient(create_app(pool_config)) as pool:
        submit(pool, alice, SMALL, 20)
        a, b = Node(pool, pilot), Node(pool, pilot)
        for node in (a, b):
            for _ in range(4):
                node.claim()
        [big] = submit(pool, bob, BIG)
        a.complete(next(iter(a.running)))
        assert a.claim() is None  # a waits for bob's job
        b.complete(next(iter(b.running)))
        small = b.claim()  # b need not: one job, one pilot
        assert small is not None and small != big
        while a.running:
            a.complete(next(iter(a.running)))
        assert a.claim() == big


def test_a_large_job_of_a_worse_priority_does_not_hold_a_pilot(pool_config, auth):
    """bob's factor makes his one running core weigh more than alice's four:
    alice's small jobs come first, so the pilot is not reserved for bob."""
    pool_config.priority_factors = {"bob": 1000.0}
    alice, bob, pilot = auth("alice"), auth("bob"), auth("pilot", "pilot", fe="fe1")
    with TestClient(create_app(pool_config)) as pool:
        submit(pool, bob, SMALL)
        other = Node(pool, pilot)
        assert other.claim() is not None  # bob runs one core elsewhere
        submit(pool, alice, SMALL, 10)
        node = Node(pool, pilot)
        for _ in range(4):
            node.claim()
        [big] = submit(pool, bob, BIG)
        node.complete(next(iter(node.running)))
        got = node.claim()
        assert got is not None and got != big


def test_a_pilot_that_keeps_resources_for_itself_is_not_reserved_beyond_them(pool_config, auth):
    """The pilot publishes 4000 MB but offers 2000 when empty: bob's 3000 MB
    job can never run there, so the pilot is not held for it."""
    alice, bob, pilot = auth("alice"), auth("bob"), auth("pilot", "pilot", fe="fe1")
    with TestClient(create_app(pool_config)) as pool:
        submit(pool, alice, SMALL, 10)
        [big] = submit(pool, bob, BIG)
        node = Node(pool, pilot)
        node.free["memory"] = 2000
        first = node.claim()  # empty: learns its real offer
        node.complete(first)
        got = [node.claim(), node.claim()]
        node.complete(got[0])  # busy now: bob is better, but
        got.append(node.claim())  # his job cannot fit 2000 MB
        assert None not in got and big not in got
