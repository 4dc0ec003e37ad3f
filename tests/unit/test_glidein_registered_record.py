"""The pilot tells its factory it registered (a `registered` trail record): the
factory's entry health counts that as "validated and runs" (it resumes an entry
paused by failing pilots), so a pilot that never registered must not send it."""

from __future__ import annotations

from pathlib import Path

from glidewms.glidein.agent.resources import Resources
from tests.unit.test_glidein_agent import FakePool
from tests.unit.test_glidein_pilot import (
    FAIL_VO,
    add_vo,
    finish,
    pilot_dir,
    pool,  # noqa: F401 (fixture)
    records,
    start,
    token_file,  # noqa: F401 (fixture)
)


def test_a_registered_pilot_says_so_in_its_trail(
    pool: FakePool,  # noqa: F811
    tmp_path: Path,
    token_file: Path,  # noqa: F811
) -> None:
    work = pilot_dir(tmp_path, pool, token_file, scripts=False, GLIDEIN_Idle_Timeout=1)
    thread, agent = start(work, Resources(1, 1024, 10**6))
    finish(thread)
    assert agent.exit_code == 0 and pool.registered
    [said] = records(pool, "registered")
    assert said["content"] == f"pilot {agent.exchange.pilot_id}"


def test_a_pilot_that_fails_validation_never_says_registered(
    pool: FakePool,  # noqa: F811
    tmp_path: Path,
    token_file: Path,  # noqa: F811
) -> None:
    work = pilot_dir(tmp_path, pool, token_file)
    add_vo(work, "group vo_check.sh\n", FAIL_VO)
    thread, agent = start(work)
    finish(thread)
    assert agent.exit_code == 4 and not pool.registered
    assert records(pool, "validation") and records(pool, "registered") == []
