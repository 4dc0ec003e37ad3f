"""The CLI's side of job event logs: markers, files named at submit only,
and no event written twice (cli/userlog_cmds.py), against a pool stub that
answers GET /clusters/{id}/events from a list."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from glidewms.cli import userlog_cmds
from glidewms.client import ClientError


class StubPool:
    url = "http://pool:9618"

    def __init__(self, events: list[dict[str, Any]], logs: dict[str, str], page: int = 2) -> None:
        self.events, self.logs, self.page, self.done = events, logs, page, False
        self.calls = 0

    def cluster_events(self, cluster_id: int, after: int = 0) -> dict[str, Any]:
        self.calls += 1
        if cluster_id != 7:
            raise ClientError(f"GET /clusters/{cluster_id}/events: 404: no cluster")
        left = [e for e in self.events if e["id"] > after]
        page = left[: self.page]
        return {
            "events": page,
            "more": len(left) > self.page,
            "user_logs": {str(e["proc_id"]): self.logs[str(e["proc_id"])] for e in page},
            "done": self.done and len(left) <= self.page,
        }


def event(i: int, proc: int, kind: str = "submitted") -> dict[str, Any]:
    return {"id": i, "proc_id": proc, "time": 1.8e9 + i, "type": kind, "detail": {}}


@pytest.fixture(autouse=True)
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("GLIDEWMS_USERLOG_STATE", str(tmp_path / "state"))
    return tmp_path / "state"


def lines(path: Path) -> list[str]:
    return [line[:3] for line in path.read_text().splitlines() if line[:3].isdigit()]


def test_nothing_is_written_twice_and_pages_are_followed(tmp_path: Path) -> None:
    a = tmp_path / "a.log"
    pool = StubPool([event(1, 0), event(2, 1), event(5, 0, "started")], {"0": str(a), "1": str(a)})
    userlog_cmds.register(pool.url, 7, {str(a)})
    assert userlog_cmds.sync(pool) == {str(a): 3}  # type: ignore[arg-type]
    assert lines(a) == ["000", "000", "001"]
    assert userlog_cmds.sync(pool) == {}  # type: ignore[arg-type]
    pool.events.append(event(9, 1, "completed"))
    pool.done = True
    assert userlog_cmds.sync(pool) == {str(a): 1}  # type: ignore[arg-type]
    assert lines(a) == ["000", "000", "001", "005"]
    # done and written: forgotten, so the next run asks the pool nothing
    calls = pool.calls
    userlog_cmds.sync(pool)  # type: ignore[arg-type]
    assert pool.calls == calls


def test_only_files_named_at_submit_are_written(tmp_path: Path) -> None:
    mine, elsewhere = tmp_path / "mine.log", tmp_path / "bashrc"
    pool = StubPool([event(1, 0), event(2, 1)], {"0": str(mine), "1": str(elsewhere)})
    userlog_cmds.register(pool.url, 7, {str(mine)})
    userlog_cmds.sync(pool)  # type: ignore[arg-type]
    assert lines(mine) == ["000"] and not elsewhere.exists()


def test_a_file_that_fails_does_not_make_another_repeat(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.log", tmp_path / "missing-dir" / "bad.log"
    pool = StubPool([event(1, 0), event(2, 1)], {"0": str(good), "1": str(bad)}, page=10)
    userlog_cmds.register(pool.url, 7, {str(good), str(bad)})
    with pytest.raises(OSError):
        userlog_cmds.sync(pool)  # type: ignore[arg-type]
    bad.parent.mkdir()
    userlog_cmds.sync(pool)  # type: ignore[arg-type]
    assert lines(good) == ["000"] and lines(bad) == ["000"]


def test_a_deleted_log_is_written_again(tmp_path: Path) -> None:
    a = tmp_path / "a.log"
    pool = StubPool([event(1, 0), event(2, 0, "started")], {"0": str(a)})
    userlog_cmds.register(pool.url, 7, {str(a)})
    userlog_cmds.sync(pool)  # type: ignore[arg-type]
    a.unlink()
    userlog_cmds.sync(pool)  # type: ignore[arg-type]
    assert lines(a) == ["000", "001"]


def test_a_cluster_the_pool_no_longer_has_is_forgotten(tmp_path: Path, state: Path) -> None:
    pool = StubPool([], {})
    userlog_cmds.register(pool.url, 8, {str(tmp_path / "x.log")})
    userlog_cmds.sync(pool)  # type: ignore[arg-type]
    assert json.loads((state / "userlogs.json").read_text())["clusters"] == {}


def test_a_corrupt_registry_starts_afresh_and_no_registry_creates_nothing(
    tmp_path: Path, state: Path
) -> None:
    pool = StubPool([event(1, 0)], {"0": str(tmp_path / "a.log")})
    assert userlog_cmds.sync(pool) == {}  # type: ignore[arg-type]
    assert not state.exists()
    state.mkdir()
    (state / "userlogs.json").write_text("{not json")
    assert userlog_cmds.sync(pool) == {}  # type: ignore[arg-type]
    userlog_cmds.register(pool.url, 7, {str(tmp_path / "a.log")})
    assert userlog_cmds.sync(pool) == {str(tmp_path / "a.log"): 1}  # type: ignore[arg-type]
