"""The pilot's side of the protocol's vocabulary: its version and its exit reasons.

The agent is shipped alone and cannot import ``glidewms.protocol``; it keeps
its own constants, which must stay equal to the services' (tests may import
both). Whole pilots run against `FakePool` (tests/unit/test_glidein_agent.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from glidewms import protocol
from glidewms.glidein.agent import http
from glidewms.glidein.agent.http import IncompatiblePeer, require_major
from glidewms.glidein.agent.policy import ExitReason
from tests.unit.test_glidein_agent import TOKEN, WAIT, FakePool, agent_in_thread, config_text


@pytest.fixture
def pool() -> Iterator[FakePool]:
    with FakePool() as fake:
        yield fake


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    return path


def test_the_agent_speaks_the_services_protocol() -> None:
    assert http.API_MAJOR == protocol.API_MAJOR
    assert http.VERSION_HEADER == protocol.VERSION_HEADER
    assert http.API_PREFIX == protocol.API_PREFIX + "/"


@pytest.mark.parametrize(
    ("header", "accepted"),
    [
        (None, True),  # a proxy may strip it
        (protocol.API_VERSION, True),
        (f"{protocol.API_MAJOR}.99", True),  # a newer minor only adds
        (f"{protocol.API_MAJOR + 1}.0", False),
        (f"{protocol.API_MAJOR - 1}.9", False),
        ("garbage", False),
        ("", False),
    ],
)
def test_a_peer_of_another_major_version_is_refused(header: str | None, accepted: bool) -> None:
    if accepted:
        require_major("the pool", header)
    else:
        with pytest.raises(IncompatiblePeer, match=f"the pool speaks protocol {header!r}"):
            require_major("the pool", header)


def test_a_pool_of_another_major_version_ends_the_pilot_at_registration(
    pool: FakePool, tmp_path: Path, token_file: Path
) -> None:
    pool.version = f"{protocol.API_MAJOR + 1}.0"
    thread, box = agent_in_thread(config_text(pool, tmp_path / "w", token_file), tmp_path / "w")
    thread.join(WAIT)
    assert not thread.is_alive() and box["rc"] == 1
    (report,) = pool.reports  # the factory's answers are not checked: the report goes out
    assert report["exit_reason"] == "error"
    assert f"speaks protocol '{pool.version}'" in report["detail"]
    assert f"this pilot speaks {protocol.API_MAJOR}.x" in report["detail"]
    assert len(pool.registered) == 1  # not retried
    assert pool.cycles == [] and pool.heartbeats == [] and pool.deregistered == []


def test_a_pool_that_changes_major_version_later_ends_the_pilot(
    pool: FakePool, tmp_path: Path, token_file: Path
) -> None:
    pool.version_after_register = f"{protocol.API_MAJOR + 1}.0"
    thread, box = agent_in_thread(
        config_text(pool, tmp_path / "w", token_file, GLIDEIN_Idle_Timeout=600), tmp_path / "w"
    )
    thread.join(WAIT)
    assert not thread.is_alive() and box["rc"] == 1
    report = pool.reports[0]
    assert report["exit_reason"] == "error" and "speaks protocol" in report["detail"]
    assert "internal error" not in report["detail"]
    assert pool.deregistered == [{"reason": "error"}]  # tried, as on any exit


def test_a_pool_without_the_version_header_is_accepted(
    pool: FakePool, tmp_path: Path, token_file: Path
) -> None:
    pool.version = None
    thread, box = agent_in_thread(
        config_text(pool, tmp_path / "w", token_file, GLIDEIN_Idle_Timeout=1), tmp_path / "w"
    )
    thread.join(WAIT)
    assert not thread.is_alive() and box["rc"] == 0
    assert pool.reports[0]["exit_reason"] == "idle_timeout" and pool.cycles


# The wire values and exit codes of docs/protocol.md; the bootstrap writes some itself.
WIRE = {
    "idle_timeout": 0,
    "lifetime": 0,
    "error": 1,
    "lost": 3,
    "corruption": 3,
    "validation_failed": 4,
    "black_hole": 5,
    "signal": 1,
}


def test_exit_reasons_keep_their_wire_values_and_exit_codes() -> None:
    assert {reason.value: reason.exit_code for reason in ExitReason} == WIRE
    for reason in ExitReason:  # as it is sent, logged and written in trail records
        assert json.dumps({"reason": reason}) == json.dumps({"reason": reason.value})
        assert str(reason) == f"{reason}" == reason.value
