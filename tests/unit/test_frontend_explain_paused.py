"""An entry the factory paused is still asked for pilots (its probes need a
request) and `glidewms frontend explain` says why it gets none: the pause from
the factory's entry ad, through the real decision path."""

from __future__ import annotations

from pathlib import Path

from glidewms.config.frontend import FrontendConfig, GroupConfig
from glidewms.frontend.explain_text import entry_table
from glidewms.frontend.observe import FactoryView, observe_group
from glidewms.frontend.service import Frontend

NOW = 1_700_000_000.0
PAUSED = {
    "since": NOW - 60,
    "by": "pilots",
    "reason": "5 pilots failed (streak); last: validation failed: factory/os_arch",
    "failures": 5,
    "retry_at": NOW + 540,
    "probe": None,
    "probes_failed": 0,
}


def test_a_paused_entry_is_asked_for_pilots_and_explained(tmp_path: Path) -> None:
    group = GroupConfig(name="main")
    frontend = Frontend(FrontendConfig(state_dir=tmp_path, groups=[group]), "x.e30.x")
    entries = [
        {"name": "ok", "site": "A", "cpus": 1, "memory": 2000, "attributes": {}},
        {"name": "sick", "site": "B", "cpus": 1, "memory": 2000, "paused": PAUSED},
    ]
    acs = [
        {
            "id": 1,
            "idle": 10,
            "running": 0,
            "owners": {},
            "oldest_idle": NOW - 60,
            "request": {"cpus": 1, "memory": 1000},
            "ad": "[ RequestCpus = 1; RequestMemory = 1000; Requirements = true ]",
        }
    ]
    factory = FactoryView(name="f", url="http://f", entries=entries, counts={})
    view = observe_group(group, None, acs, [], [factory], NOW)
    frontend._decide(group, view, (2, 1), frontend.memory.setdefault("main", {}), NOW)
    records = {r["entry"]: r for r in frontend.explain()}
    sick, ok = records["f/sick"], records["f/ok"]
    assert "skipped" not in sick and sick["request"]["idle"] > 0
    why = "entry paused at the factory (by pilots): 5 pilots failed (streak); last: validation"
    assert any(r.startswith(why) for r in sick["reasons"])
    assert why in entry_table(sick)
    assert not any("paused" in r for r in ok["reasons"])
