"""A site whose pilots all fail validation, in the whole system: pool, factory and
frontend as processes, pilots started by the local backend as real processes
(bootstrap, signed stage, the standard validation scripts, the agent).

The broken entry requires an OS this node does not have, so the standard
os_arch check fails on every pilot there; a job only it matches keeps the
frontend asking for pilots there. The factory pauses the entry after
`pause_after_pilot_failures` of them, says why in its ad, its stats and the
frontend's explain, and sends nothing more there; the job runs at the entry
whose pilots work, which is never paused. Waits poll with a deadline.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_glidein_system import entry, one_job
from tests.harness import System, systems, wait_for

pytestmark = pytest.mark.e2e
N = 2


@pytest.fixture
def system(tmp_path: Path) -> Iterator[Callable[..., System]]:
    with systems(tmp_path, http_timeout=30, claim_lease=60.0) as start:
        yield start


def test_an_entry_whose_pilots_fail_validation_is_paused_and_the_job_runs_elsewhere(
    system: Callable[..., System], tmp_path: Path
) -> None:
    broken = entry(
        name="broken",
        site="BROKEN",
        attributes={"GLIDEIN_Required_OS": "NoSuchOS1"},
        recovery={"pause_after_pilot_failures": N, "probe_interval": 3600},
    )
    s = system(entries=[broken, entry(name="good", site="GOOD")])

    def ad(name: str) -> dict[str, Any]:
        return next(e for e in s.factory("entries") if e["name"] == name)

    def at(name: str) -> list[dict[str, Any]]:
        return [g for g in s.glideins() if g["entry"] == name]

    # Demand that lasts at the broken entry (a job only it matches), and a job for any.
    only_broken = one_job(tmp_path, ticks=1).replace(
        "queue", 'requirements = TARGET.GLIDEIN_Entry_Name == "broken"\nqueue'
    )
    s.submit(only_broken, tmp_path)
    [jid] = s.submit(one_job(tmp_path, ticks=1), tmp_path)
    paused = wait_for(lambda: ad("broken")["paused"], "the broken entry to pause")
    assert paused["by"] == "pilots"
    assert paused["reason"].startswith(
        f"{N} pilots failed (streak); last: validation failed: factory/os_arch: WN_Resource: "
    )
    assert len(at("broken")) == N, "nothing sent after the pause"
    assert all(g["exit_reason"] == "validation_failed" for g in at("broken"))
    job = wait_for(
        lambda: (j := s.job(jid))["state"] == "completed" and j, "the job to run at good"
    )
    assert job["exit_code"] == 0
    assert len(at("broken")) == N, "still nothing sent while paused"
    assert ad("good")["paused"] is None and ad("good")["pilot_failures"] == 0
    [row] = [r for r in s.factory("stats")["rows"] if r["entry"] == "broken"]
    assert row["paused"]["reason"] == paused["reason"]
    why = wait_for(
        lambda: [
            r
            for rec in s.explain("broken")
            for r in rec.get("reasons", [])
            if r.startswith("entry paused at the factory (by pilots)")
        ],
        "the frontend to explain the pause",
    )
    assert paused["reason"] in why[0]
    log = s.inst.path("logs", "factory.log").read_text()
    assert "failed validation at factory/os_arch (WN_Resource)" in log
    assert f"entry broken paused: {N} pilots failed" in log
