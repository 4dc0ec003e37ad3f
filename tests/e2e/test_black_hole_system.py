"""A black-hole node in the whole system: pool, factory and frontend as processes,
pilots started by the local backend as real processes (bootstrap, signed stage,
validation, the agent).

At the `hole` entry every job fails at once (exit 127, as on a node whose
software area is broken: the job sees `GLIDEIN_Entry_Name` and fails there).
Its pilot holds the quick failures back, declares a black hole after two, hands
them back to the pool, which requeues them as site failures, and keeps its node
a few seconds. The factory charges the entry (paused after that one black
hole), and the jobs run at the `good` entry and complete there, once. To make
the order certain, `good` is in a downtime until `hole` is paused: the jobs
meet the black hole first, and no second pilot at `hole` takes them again.
The factory's stats show the goodput in core-seconds and its fraction, and the
hold as badput. Waits poll with a deadline.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.test_glidein_system import entry
from tests.harness import System, systems, wait_for

pytestmark = pytest.mark.e2e
HOLD = 4

BROKEN_ON_HOLE = """#!/bin/sh
echo done > result.txt
if [ "$GLIDEIN_Entry_Name" = hole ]; then echo "broken node" >&2; exit 127; fi
sleep 1
"""


@pytest.fixture
def system(tmp_path: Path) -> Iterator[Callable[..., System]]:
    with systems(tmp_path, http_timeout=30, claim_lease=60.0) as start:
        yield start


def test_black_hole_victims_rerun_as_site_failures_and_complete_at_a_good_entry(
    system: Callable[..., System], tmp_path: Path
) -> None:
    hole = entry(
        name="hole",
        site="HOLE",
        attributes={
            "GLIDEIN_Black_Hole_Jobs": 2,
            "GLIDEIN_Black_Hole_Window": 600,
            "GLIDEIN_Black_Hole_Hold": HOLD,
        },
        recovery={"pause_after_pilot_failures": 1, "probe_interval": 3600},
    )
    s = system(entries=[hole, entry(name="good", site="GOOD")])
    factory = s.inst.services["factory"].url
    r = httpx.post(
        f"{factory}/api/v1/downtimes",
        json={"entry": "good", "reason": "until the black hole is found"},
        headers=s.admin,
        timeout=30,
    )
    assert r.status_code == 201, r.text
    downtime = r.json()["id"]
    script = tmp_path / "job.sh"
    script.write_text(BROKEN_ON_HOLE)
    script.chmod(0o755)
    jids = s.submit(
        "executable = job.sh\ntransfer_output_files = result.txt\nrequest_memory = 32\nqueue 2\n",
        tmp_path,
    )
    assert len(jids) == 2
    paused = wait_for(
        lambda: next(e for e in s.factory("entries") if e["name"] == "hole")["paused"],
        "the black hole to pause its entry",
    )
    assert paused["by"] == "pilots" and "black hole" in paused["reason"]
    for jid in jids:  # both eaten there, both back in the queue as site failures
        assert s.job(jid)["state"] == "idle" and s.job(jid)["num_restarts"] == 1
    r = httpx.delete(f"{factory}/api/v1/downtimes/{downtime}", headers=s.admin, timeout=30)
    assert r.status_code in (200, 204), r.text

    jobs = wait_for(
        lambda: (
            (js := [s.job(j) for j in jids]) and all(j["state"] == "completed" for j in js) and js
        ),
        "both jobs to complete at the good entry",
    )
    for job in jobs:
        events = s.pool.events(job["job_id"])
        glideins = [(g["entry"], g["exit_reason"], g.get("report")) for g in s.glideins()]
        assert job["exit_code"] == 0 and job["num_restarts"] == 1, (events, glideins)
        kinds = [e["type"] for e in events]
        assert kinds.count("completed") == 1 and kinds.count("started") == 2, kinds
        [evicted] = [e for e in events if e["type"] == "evicted"]
        assert evicted["detail"]["failure"] == "site"
        assert evicted["detail"]["reason"].startswith("black hole: pilot "), evicted
        assert "exited 127" in evicted["detail"]["reason"]
        assert job["pilot_id"] != evicted["detail"]["pilot"]  # ran elsewhere: at good

    [eaten] = wait_for(
        lambda: [
            g
            for g in s.glideins()
            if g["entry"] == "hole" and g["exit_reason"] == "black_hole" and g["report"]
        ],
        "the black hole's report",
    )
    report = eaten["report"]
    assert (report["jobs_run"], report["jobs_failed"]) == (2, 2)
    assert report["black_hole_requeued"] == 2 and report["hold_seconds"] == HOLD
    assert report["goodput_core_seconds"] == 0

    def rows() -> dict[str, dict]:
        return {r["entry"]: r for r in s.factory("stats")["rows"]}

    # the stats count a pilot's report once it ended: the hole after its hold,
    # the good pilot after its idle timeout
    stats = wait_for(
        lambda: (
            (r := rows())
            and r.get("good", {}).get("goodput_core_seconds", 0) > 0
            and r.get("hole", {}).get("failures", {}).get("black_hole")
            and r
        ),
        "the stats of both entries",
    )
    assert 0 < stats["good"]["goodput_fraction"] <= 1
    assert stats["good"]["goodput_core_seconds"] >= 2 * 1.0  # two 1-core jobs of >= 1 s
    assert stats["hole"]["badput_core_seconds"] >= HOLD  # its node held on its one core
    assert stats["hole"]["goodput_fraction"] == 0
