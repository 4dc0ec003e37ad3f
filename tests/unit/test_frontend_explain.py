"""`glidewms frontend explain` output: a readable table per entry, made from the
records the real decision path writes (observe -> decide -> explain)."""

from __future__ import annotations

from glidewms.config.frontend import FrontendConfig, GroupConfig
from glidewms.frontend.explain_text import brief_table, entry_table, render
from glidewms.frontend.observe import FactoryView, observe_group
from glidewms.frontend.service import Frontend

NOW = 1_700_000_000.0


def _records(tmp_path, **group_knobs):
    group = GroupConfig(name="main", **group_knobs)
    config = FrontendConfig(state_dir=tmp_path, groups=[group])
    frontend = Frontend(config, "x.e30.x", clock=lambda: NOW)
    entries = [
        {"name": "big", "site": "BIG", "cpus": 8, "memory": 16000, "attributes": {}},
        {"name": "off", "site": "OFF", "enabled": False},
        {
            "name": "down",
            "site": "BIG",
            "cpus": 8,
            "memory": 16000,
            "in_downtime": True,
            "downtime": {"id": 1, "start": 0, "end": 1_700_003_600, "reason": "disk"},
        },
    ]
    acs = [
        {
            "id": 1,
            "idle": 24,
            "running": 2,
            "owners": {},
            "oldest_idle": NOW - 60,
            "request": {"cpus": 1, "memory": 1000},
            "ad": "[ RequestCpus = 1; RequestMemory = 1000; Requirements = true ]",
        }
    ]
    counts = {"big": {"queued": 1, "running": 1}}
    factory = FactoryView(name="f", url="http://f", entries=entries, counts=counts)
    view = observe_group(group, None, acs, [], [factory], NOW)
    frontend._decide(group, view, (2, 1), frontend.memory.setdefault("main", {}), NOW)
    return {r["entry"]: r for r in frontend.explain()}


def test_entry_table_has_every_part_in_order(tmp_path):
    records = _records(tmp_path, curb_idle_pilots_per_entry=1)
    text = entry_table(records["f/big"])
    lines = text.splitlines()
    assert lines[0].startswith("f/big  group main  cycle 0  ")
    labels = [line.split("|")[0].strip() for line in lines[2:]]
    order = [x for x in labels if x]
    assert order[:8] == [
        "request",
        "demand",
        "supply",
        "pressure",
        "limits",
        "curbs",
        "removal",
        "why",
    ]
    assert len({line.index("|") for line in lines[2:]}) == 1  # one column edge
    # 24 one-core jobs are 3 pilots of 8 cores; 1 starting pilot is supply
    assert "| 3 pilots of 8 cpus / 16000 MB / 0 GPUs" in text
    assert "idle jobs 24 (proportional 24, only here 24, old 0, overflow 0)  running jobs 2" in text
    assert "queued 1  starting 1  idle 0" in text and "idle supply 1 pilots" in text
    assert "missing 2  attenuated 0.67  reserve 0" in text
    assert "curbs    | entry idle pilots 1 >= curb 1" in text
    assert "limits   | none reached" in text
    assert "removal  | NO after 0 cycle(s) without idle demand" in text
    assert "| idle 1  max_running 4  remove NO (margin 0)" in text


def test_skipped_frozen_and_failed_entries_say_why(tmp_path):
    records = _records(tmp_path)
    assert "skipped | entry disabled at the factory" in entry_table(records["f/off"])
    # an entry in downtime is not counted on: the jobs all count at big ("only here")
    assert entry_table(records["f/down"]).endswith(
        "skipped | entry in downtime at the factory until 2023-11-14 23:13:20 UTC: disk"
    )
    assert records["f/big"]["demand"]["unique_jobs"] == 24
    failed = {
        "entry": "f/x",
        "group": "main",
        "cycle": 4,
        "failed": "entry ad unreadable",
        "request": {"idle": 2, "max_running": 5, "remove": "NO", "remove_margin": 0},
    }
    text = entry_table(failed)
    assert "failed  | entry ad unreadable" in text
    assert "request | idle 2  max_running 5  remove NO (margin 0)" in text
    frozen = {
        "entry": "f/y",
        "group": "main",
        "cycle": 4,
        "frozen": "pool p query failed",
        "request": None,
    }
    assert "frozen  | pool p query failed" in entry_table(frozen)
    assert "request | nothing sent" in entry_table(frozen)


def test_brief_is_one_aligned_line_per_entry(tmp_path):
    records = list(_records(tmp_path).values())
    lines = brief_table(records).splitlines()
    assert lines[0].split() == [
        "entry",
        "group",
        "cycle",
        "demand",
        "supply",
        "idle",
        "max_run",
        "remove",
        "note",
    ]
    big = next(line for line in lines if line.startswith("f/big"))
    assert big.split()[:8] == ["f/big", "main", "0", "3", "1", "1", "4", "NO"]
    off = next(line for line in lines if line.startswith("f/off"))
    assert off.endswith("skipped: entry disabled at the factory")
    assert render([]) == "no explanation yet (has a cycle run?)"
