"""The frontend in the whole system on loopback: pool, factory and frontend as
separate processes, pilots started by the factory's local backend as real
processes, three entries of different sizes.

The GPU entry is a stand-in: no GPU exists here, so the entry advertises
`GPUs = 1` as an attribute, which its pilots publish in their slot ad; GPU jobs
select it with `requirements = TARGET.GPUs >= 1`, as they would a real one.

Waits poll a condition with a deadline (the services are other processes);
no assertion is about timing.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from glidewms.cli.main import app
from tests.harness import System, systems, wait_for

pytestmark = pytest.mark.e2e


def local_entry(name: str, site: str, cpus: int, memory: int, **attributes: Any) -> dict:
    return {
        "name": name,
        "site": site,
        "backend": "local",
        "cpus": cpus,
        "memory": memory,
        "disk": "auto",
        "walltime": 3600,
        "idle_timeout": 3,
        "max_pilots": 2,
        "max_idle": 2,
        "max_per_cycle": 2,
        "attributes": attributes,
    }


ENTRIES = [
    local_entry("big", "BIG", 8, 16000),
    local_entry("small", "SMALL", 1, 2048),
    local_entry("gpu", "GPU", 2, 4096, GPUs=1),
]


@pytest.fixture
def system(tmp_path: Path) -> Iterator[System]:
    with systems(tmp_path, http_timeout=10) as start:
        yield start(entries=ENTRIES, claim_lease=10.0, max_pilots=10)


SUB = """executable = /bin/sleep
transfer_executable = false
arguments = 1
request_memory = {memory}
{extra}
queue {n}
"""


def test_pilots_go_only_where_jobs_fit_ramp_up_and_scale_to_zero(system, tmp_path):
    s = system
    wait_for(lambda: s.get("frontend", "status")["cycles"] >= 3, "three frontend cycles")
    assert s.get("factory", "glideins") == [], "pilots requested for an empty queue"
    # 6 jobs of 6 GB: only the 16 GB entry fits them (2 per pilot: 3 pilots' worth)
    high_mem = s.submit(SUB.format(memory=6000, extra="", n=6), tmp_path)
    # 2 GPU jobs: only the entry advertising GPUs
    gpu = s.submit(SUB.format(memory=100, extra="requirements = TARGET.GPUs >= 1", n=2), tmp_path)
    wait_for(
        lambda: all(s.pool.job(j)["state"] == "completed" for j in high_mem),
        "the high-memory jobs to complete",
        timeout=180,
    )
    # GPU demand brings pilots to the GPU entry only (whether the stand-in pilot then
    # publishes GPUs = 1 is the glidein's business: the frontend's part ends here)
    wait_for(
        lambda: any(g["entry"] == "gpu" for g in s.get("factory", "glideins")),
        "pilots at the GPU entry",
    )
    [gpu_view] = s.explain("gpu")
    assert gpu_view["demand"]["unique_jobs"] == 2
    s.pool.act("remove", gpu)  # empty the queue

    entries = {g["entry"] for g in s.get("factory", "glideins")}
    assert "small" not in entries, "pilots were sent where no job fits"
    assert "big" in entries
    # ramp-up: the first request at big was a fraction of its demand, not all of it
    history = s.explain("big", history=True)
    first = next(r for r in history if r.get("request") and r["request"]["idle"] > 0)
    assert first["pressure"]["demand_units"] == pytest.approx(3)
    assert first["request"]["idle"] < 3
    assert first["pressure"]["attenuated"] == pytest.approx(1)
    # and where nothing fits, nothing was ever asked
    assert all(
        (r.get("request") or {}).get("idle", 0) == 0 for r in s.explain("small", history=True)
    )

    # queue empty: requests fall to zero, removal escalates only after confirmation
    def settled() -> bool:
        latest = s.explain()
        return bool(latest) and all(
            r["request"]["idle"] == 0 and r["removal"]["stage"] in ("WAIT", "IDLE")
            for r in latest
            if r.get("request")
        )

    wait_for(settled, "zero requests and a confirmed removal stage")
    big = s.explain("big", history=True)
    stages = [r["removal"]["stage"] for r in big if r.get("removal")]
    assert "NO" in stages
    wait_for(
        lambda: all(
            g["state"] in ("finished", "failed", "removed") for g in s.get("factory", "glideins")
        ),
        "pilots to leave",
    )
    assert s.get("pool", "pilots") == []

    # the operator's view of the same explanation
    result = CliRunner().invoke(
        app,
        [
            "frontend",
            "explain",
            "big",
            "--url",
            s.inst.services["frontend"].url,
            "--token-file",
            str(s.inst.token_file("admin")),
        ],
    )
    assert result.exit_code == 0, result.output
    assert result.output.startswith("factory/big  group main")
    assert "removal  | " in result.output and "request  | idle " in result.output


def test_pool_failure_never_removes_pilots(system, tmp_path):
    s = system
    [jid] = s.submit(SUB.format(memory=100, extra="", n=1), tmp_path)
    wait_for(lambda: s.pool.job(jid)["state"] == "completed", "the job to complete")
    # zero demand confirmed and escalated: the request allows removing queued excess
    wait_for(
        lambda: any(r.get("removal", {}).get("stage") == "IDLE" for r in s.explain()),
        "removal to reach IDLE",
    )
    assert any(
        r["remove"] not in (False, "NO")
        for req in s.get("factory", "requests")
        for r in req["entries"].values()
    )

    pool = s.inst.services["pool"].process
    pool.send_signal(signal.SIGTERM)
    pool.wait(30)

    def frozen() -> bool:
        reqs = s.get("factory", "requests")
        return bool(reqs) and all(
            r["remove"] in (False, "NO") for req in reqs for r in req["entries"].values()
        )

    wait_for(frozen, "the stored request to stop any removal")
    status = s.get("frontend", "status")
    assert any("pool" in e and "failed" in e for e in status["last_cycle"]["errors"])
    latest = s.explain()
    assert latest and all("frozen" in r for r in latest)
    assert not [g for g in s.get("factory", "glideins") if g["state"] == "removed"]
