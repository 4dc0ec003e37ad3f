"""Entry health in the factory's database: pilots' news read once (to_judge,
mark_counted), the `registered` mark, an entry's health stored whole, and a
database of the previous version migrated without counting its history."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import sqlalchemy as sa

from glidewms.db import make_engine, migrate, sqlite_url
from glidewms.factory import store as store_module
from glidewms.factory.pilot_health import ENDED, STARTED, judge
from glidewms.factory.recovery import BY_PILOTS, EntryHealth
from glidewms.factory.states import GlideinState
from glidewms.factory.store import FactoryStore, Glidein


def test_news_is_read_until_counted_and_health_is_stored_whole(tmp_path: Path) -> None:
    store = FactoryStore(make_engine(sqlite_url(tmp_path / "f.db")))
    store.add_glideins(
        Glidein.submitted(f"e-{i}", "e", "local", "fe", "main", 1.0) for i in range(3)
    )
    assert store.to_judge() == []  # queued: nothing to say yet
    store.mark_registered("e-0", 5.0)
    store.mark_registered("e-0", 9.0)  # the first registration counts
    store.record_report("e-1", {"exit_reason": "validation_failed"}, "validation_failed", 4)
    news = {g.glidein_id: g for g in store.to_judge()}
    assert set(news) == {"e-0", "e-1"} and news["e-0"].registered_at == 5.0
    verdicts = {gid: judge(g) for gid, g in news.items()}
    store.mark_counted({gid: v.mark for gid, v in verdicts.items() if v is not None})
    assert store.to_judge() == []  # counted: not read again
    store.set_states({"e-0": GlideinState.finished})  # the registered one ends
    [ended] = store.to_judge()
    assert ended.glidein_id == "e-0" and ended.health_counted == STARTED
    store.mark_counted({"e-0": ENDED})
    assert store.to_judge() == []

    health = EntryHealth(
        pilot_failures=5,
        last_pilot_failure="validation failed: x",
        paused_at=10.0,
        paused_reason="5 pilots failed",
        paused_by=BY_PILOTS,
        probe_at=20.0,
        probe_id="e-2",
        probes=2,
    )
    store.set_entry_health("e", asdict(health))
    assert EntryHealth(**store.entry_health()["e"]) == health  # what a restart reads


def test_a_version_5_database_is_migrated_without_counting_its_history(tmp_path: Path) -> None:
    engine = make_engine(sqlite_url(tmp_path / "f.db"))
    with engine.begin() as conn:  # glideins and entry_health as version 5 made them
        conn.execute(
            sa.text(
                "CREATE TABLE glideins (glidein_id VARCHAR(128) PRIMARY KEY, entry VARCHAR(64), "
                'backend VARCHAR(32), frontend VARCHAR(64), "group" VARCHAR(64), '
                "backend_id VARCHAR(256), state VARCHAR(16), submitted_at FLOAT, "
                "updated_at FLOAT, exit_reason VARCHAR(64), exit_code INTEGER, report JSON, "
                "logs_archived FLOAT, releases INTEGER NOT NULL DEFAULT 0, state_since FLOAT)"
            )
        )
        conn.execute(
            sa.text(
                "CREATE TABLE entry_health (entry VARCHAR(64) PRIMARY KEY, failures INTEGER "
                "NOT NULL, last_error TEXT, next_try FLOAT NOT NULL, paused_at FLOAT, "
                "paused_reason TEXT)"
            )
        )
        report = json.dumps({"exit_reason": "validation_failed", "jobs_run": 0})
        conn.execute(
            sa.text(
                "INSERT INTO glideins VALUES ('e-1', 'e', 'local', 'fe', 'main', '1', "
                f"'failed', 1.0, 2.0, 'validation_failed', 4, '{report}', NULL, 0, 2.0)"
            )
        )
        conn.execute(
            sa.text("INSERT INTO entry_health VALUES ('e', 5, 'sbatch failed', 9.0, 3.0, 'x')")
        )
    migrate(engine, "factory", store_module.MIGRATIONS[:5])
    store = FactoryStore(engine)  # version 6
    assert store.to_judge() == [], "history is not counted"
    [old] = store.glideins()
    assert old.health_counted == ENDED and old.registered_at is None
    health = EntryHealth(**store.entry_health()["e"])
    assert health.pause_kind == "submissions" and health.pilot_failures == 0
