"""The frontend's memory across restarts: round trip, and junk means a fresh start."""

from __future__ import annotations

from glidewms.frontend.policy import Memory
from glidewms.frontend.state import StateFile
from glidewms.protocol import RemovalStage


def test_round_trip_is_atomic_and_complete(tmp_path):
    state = StateFile(tmp_path / "fe" / "state.json")
    assert state.load() == {}
    memory = {
        "main": {
            "f/big": Memory(
                no_demand_cycles=4, last_idle=2, last_max_running=9, last_remove=RemovalStage.WAIT
            )
        },
        "gpu": {},
    }
    state.save(memory)
    assert StateFile(state.path).load() == memory
    assert [p.name for p in state.path.parent.iterdir()] == ["state.json"]  # no temp left


def test_corrupt_file_means_no_memory(tmp_path):
    path = tmp_path / "state.json"
    path.write_text("{not json")
    assert StateFile(path).load() == {}
    path.write_text('{"groups": {"main": {"f/e": "junk"}}}')
    assert StateFile(path).load() == {"main": {"f/e": Memory()}}


def test_cycle_count_survives_and_junk_counts_from_zero(tmp_path):
    state = StateFile(tmp_path / "state.json")
    state.save({"main": {}}, cycles=41)
    again = StateFile(state.path)
    again.load()
    assert again.cycles == 41
    state.path.write_text('{"cycles": "many", "groups": {}}')
    again.load()
    assert again.cycles == 0
