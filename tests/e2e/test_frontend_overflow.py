"""Overflow in the whole system on loopback: pool, factory and frontend as
separate processes, pilots started by the factory's local backend as real
processes at two entries, A (site SA) and B (site SB).

Jobs desire site A only (`+DESIRED_Sites = "SA"`); the group's match and start
expressions keep them there, and its overflow lets jobs idle longer than
`after_seconds` go to B. The start expression travels frontend -> factory
(`start_expr`) -> pilot (`--attr GLIDEIN_Start`) -> the slot's Start in the
pool, which is what keeps a B pilot from starting a job that is not yet
overflow-eligible; the pool's own record (the `started` event's site and
time, the job's QDate) is the evidence.

The pool must see each job's QDate for that Start to read it: `glidewms up`
adds QDate to the pool's significant attributes because a group overflows
(launcher.pool_settings); this test relies on that, as a user would.

Waits poll a condition with a deadline (the services are other processes);
no assertion is about timing.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import System, systems, wait_for

pytestmark = pytest.mark.e2e

AFTER = 10  # seconds idle before a job may overflow to B
MATCH = "stringListMember(TARGET.GLIDEIN_Site, MY.DESIRED_Sites)"
START = "stringListMember(MY.GLIDEIN_Site, TARGET.DESIRED_Sites)"
OVERFLOW_START = "TARGET.DESIRED_Sites =!= undefined"
PILOT_START = f"({START}) || ((time() - TARGET.QDate) >= {AFTER} && ({OVERFLOW_START}))"
GROUP = {
    "name": "main",
    "match_expr": MATCH,
    "start_expr": START,
    "overflow": {"after_seconds": AFTER, "match_expr": "true", "start_expr": OVERFLOW_START},
    "max_idle_per_entry": 2,
}


def local_entry(name: str, site: str, max_pilots: int, idle_timeout: int) -> dict[str, Any]:
    return {
        "name": name,
        "site": site,
        "backend": "local",
        "cpus": 1,
        "memory": 2048,
        "disk": "auto",
        "walltime": 3600,
        "idle_timeout": idle_timeout,
        "max_pilots": max_pilots,
        "max_idle": max_pilots,
        "max_per_cycle": max_pilots,
    }


@pytest.fixture
def system(tmp_path: Path) -> Iterator[System]:
    with systems(tmp_path, http_timeout=10) as start:
        s = start(
            entries=[local_entry("a", "SA", 1, 20), local_entry("b", "SB", 2, 8)],
            claim_lease=10.0,
            frontend_groups=[GROUP],
        )
        yield s


SUB = """executable = /bin/sleep
transfer_executable = false
arguments = 4
request_memory = 100
+DESIRED_Sites = "SA"
queue {n}
"""


def started(s: System, jid: str) -> dict[str, Any] | None:
    return next((e for e in s.pool.events(jid) if e["type"] == "started"), None)


def b_pilots(s: System) -> list[dict[str, Any]]:
    return [p for p in s.pilots() if p["slot"].get("GLIDEIN_Site") == "SB"]


def test_old_jobs_overflow_and_young_ones_never_start_at_the_other_site(system, tmp_path):
    s = system
    first = s.submit(SUB.format(n=8), tmp_path)
    # A has one pilot for eight 4-second jobs: after AFTER seconds the rest overflow to B
    [pilot_b] = wait_for(lambda: b_pilots(s)[:1], "a pilot at B", timeout=120)
    assert pilot_b["slot"]["GLIDEIN_Start"] == PILOT_START
    # young jobs arrive while B's pilots are there and will run out of old ones
    second = s.submit(SUB.format(n=3), tmp_path)
    assert b_pilots(s), "B's pilots left before the young jobs arrived: nothing was tested"
    wait_for(
        lambda: all(s.job(j)["state"] == "completed" for j in first + second),
        "every job to complete",
        timeout=240,
    )

    sites = {}
    for jid in first + second:
        event = started(s, jid)
        assert event is not None, f"{jid} has no started event"
        sites[jid] = event["detail"]["site"]
        waited = event["time"] - s.job(jid)["q_date"]
        if sites[jid] == "SB":
            assert waited >= AFTER, f"{jid} started at B after only {waited:.1f}s idle"
    assert "SB" in {sites[j] for j in first}, "no old job overflowed to B"
    assert {sites[j] for j in first + second} <= {"SA", "SB"}

    # the frontend counted the overflow at B, and only there
    b = [r for r in s.explain("b", history=True) if r.get("demand")]
    assert any(r["demand"]["overflow_jobs"] > 0 for r in b)
    assert not any(
        r["demand"].get("overflow_jobs") for r in s.explain("a", history=True) if r.get("demand")
    )
