"""Ways to start pilots beyond one per batch job from a factory: a manual start by a
site admin (no factory), several pilots in one batch job (`--multi N`), and the
retire time capped before a pilot token that is not renewed expires.

The pool and factory are the in-test stand-ins `FakePool` (test_glidein_agent)
and `StageServer` (test_bootstrap); the bootstrap, the agent and its standard
validation scripts are the real ones.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import glidewms.glidein.agent as agent_pkg
from glidewms.glidein.agent.policy import token_expiry, token_retire
from glidewms.glidein.agent.resources import Resources, split
from tests.unit import test_glidein_agent as agent_tests
from tests.unit.test_bootstrap import BASH, SCRIPT, WAIT, StageServer, bootstrap, finish
from tests.unit.test_bootstrap import TOKEN as STAGE_TOKEN
from tests.unit.test_glidein_agent import FakePool, agent_in_thread, config_text

GLIDEIN_DIR = Path(agent_pkg.__file__).parents[1]


def jwt(claims: dict[str, Any]) -> str:
    def part(obj: Any) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

    return f"{part({'alg': 'EdDSA'})}.{part(claims)}.c2ln"


# -- pure pieces -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("whole", "count", "shares"),
    [
        (Resources(8, 16000, 1000, 2), 2, [Resources(4, 8000, 500, 1)] * 2),
        (
            Resources(5, 1001, 90, 1),
            3,
            [Resources(2, 334, 30, 1), Resources(2, 334, 30, 0), Resources(1, 333, 30, 0)],
        ),
        (Resources(1, 2, 10, 0), 4, [Resources(1, 1, 2, 0)] * 4),  # never below one cpu / MB
    ],
)
def test_split_shares_the_node(whole: Resources, count: int, shares: list[Resources]) -> None:
    assert [split(whole, count, i) for i in range(count)] == shares


@pytest.mark.parametrize(
    ("deadline", "expires", "now_epoch", "now", "retire"),
    [
        (1000.0, None, 5000.0, 100.0, 1000.0),  # no expiry known: untouched
        (1000.0, 5000.0 + 3600, 5000.0, 100.0, 1000.0),  # outlives the pilot: untouched
        (1000.0, 5000.0 + 300, 5000.0, 100.0, 280.0),  # 120 s before it expires
        (1000.0, 5000.0 + 60, 5000.0, 100.0, 40.0),  # already too close: retire now
    ],
)
def test_token_retire_caps_the_retire_time(
    deadline: float, expires: float | None, now_epoch: float, now: float, retire: float
) -> None:
    assert token_retire(deadline, expires, now_epoch, now) == retire


@pytest.mark.parametrize(
    ("token", "expiry"),
    [
        (jwt({"exp": 1700000000}), 1700000000.0),
        (jwt({"sub": "x"}), None),
        ("not-a-jwt", None),
        ("a.!!!.c", None),
        (jwt({"exp": "soon"}), None),
    ],
)
def test_token_expiry_reads_exp(token: str, expiry: float | None) -> None:
    assert token_expiry(token) == expiry


# -- the retire cap in a running pilot ---------------------------------------------------


def test_a_pilot_retires_before_its_unrenewed_token_expires(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lifetime 1 h and idle timeout 10 min, but the token expires in 123 s (cap at
    3 s): the pilot says it retires, stops claiming and exits on its own."""
    token = jwt({"exp": int(time.time()) + 123, "scope": "pilot"})
    monkeypatch.setattr(agent_tests, "TOKEN", token)  # what FakePool accepts
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    with FakePool() as pool:
        thread, box = agent_in_thread(
            config_text(pool, tmp_path / "work", token_file, GLIDEIN_Idle_Timeout=600),
            tmp_path / "work",
        )
        thread.join(WAIT)
        assert not thread.is_alive(), "the pilot did not retire"
    assert box["rc"] == 0
    (report,) = pool.reports
    assert report["exit_reason"] == "lifetime" and "retire time" in report["detail"]
    assert pool.registered and pool.unauthorized == 0


# -- manual start ------------------------------------------------------------------------


def manual(pool_url: str, tmp_path: Path, token_file: Path, *extra: str) -> subprocess.Popen[str]:
    scratch = tmp_path / "scratch"
    scratch.mkdir(exist_ok=True)
    argv = [
        BASH,
        str(SCRIPT),
        "--no-factory",
        "--pool",
        pool_url,
        "--work-dir",
        str(scratch),
        "--idle-timeout",
        "2",
        "--cpus",
        "2",
        "--memory",
        "1024",
        *extra,
    ]
    env = {
        "PATH": os.environ["PATH"],
        "GLIDEIN_PYTHON": sys.executable,
        "GLIDEIN_TOKEN_FILE": str(token_file),
    }
    return subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, text=True)


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    """The token FakePool accepts."""
    path = tmp_path / "token"
    path.write_text(agent_tests.TOKEN + "\n")
    path.chmod(0o600)
    return path


@pytest.fixture
def stage_token(tmp_path: Path) -> Path:
    """The token StageServer accepts."""
    path = tmp_path / "stage_token"
    path.write_text(STAGE_TOKEN + "\n")
    path.chmod(0o600)
    return path


def test_a_manual_pilot_validates_registers_and_reports_to_no_factory(
    tmp_path: Path, token_file: Path
) -> None:
    """The installed package's glidein dir as the stage (agent/ + validation/)."""
    with FakePool() as pool:
        rc, stderr = finish(
            manual(
                pool.url, tmp_path, token_file, "--stage-dir", str(GLIDEIN_DIR), "--site", "MY_SITE"
            )
        )
    assert rc == 0, stderr  # idle timeout
    (registration,) = pool.registered
    assert registration["glidein_id"].startswith("manual-")
    slot = registration["slot"]
    assert (slot["GLIDEIN_Site"], slot["GLIDEIN_Entry_Name"], slot["Cpus"]) == (
        "MY_SITE",
        "manual",
        2,
    )
    assert "HAS_CONTAINER" in slot  # the standard validation scripts ran
    assert pool.deregistered and pool.reports == [] and pool.logs == []
    assert "no factory URL; final report not sent" in stderr
    assert list((tmp_path / "scratch").iterdir()) == []


def test_a_manual_pilot_from_a_stage_url_checks_the_manifest(
    tmp_path: Path, stage_token: Path
) -> None:
    stage = StageServer({"agent/__init__.py": b"", "agent/__main__.py": b"raise SystemExit(6)"})
    try:
        url = f"{stage.url}/api/v1/stage"
        rc, stderr = finish(
            manual(
                stage.url, tmp_path, stage_token, "--stage-url", url, "--manifest-sha256", "ab" * 32
            )
        )
        assert rc == 3 and "manifest sha256" in stderr
        assert not any("report" in p or "/log" in p for _, p, _ in stage.requests)
        rc, stderr = finish(manual(stage.url, tmp_path, stage_token, "--stage-url", url))
        assert rc == 2 and "--stage-url needs --manifest-sha256" in stderr
        good = hashlib.sha256(stage.manifest).hexdigest()
        rc, stderr = finish(
            manual(stage.url, tmp_path, stage_token, "--stage-url", url, "--manifest-sha256", good)
        )
        assert rc == 6, stderr  # the staged agent ran
    finally:
        stage.close()


@pytest.mark.parametrize(
    ("add", "message"),
    [
        ((), "--no-factory needs --stage-dir DIR or --stage-url URL"),
        (("--stage-dir", "/nonexistent/x"), "--stage-dir /nonexistent/x: no such directory"),
        (("--stage-dir", "/", "--factory", "http://f"), "exclude each other"),
    ],
)
def test_manual_start_options_are_checked(
    tmp_path: Path, token_file: Path, add: tuple[str, ...], message: str
) -> None:
    rc, stderr = finish(manual("http://127.0.0.1:1", tmp_path, token_file, *add))
    assert rc == 2 and message in stderr


# -- several pilots in one batch job -----------------------------------------------------


def test_multi_starts_n_agents_with_suffixed_ids_and_split_resources(
    tmp_path: Path, stage_token: Path
) -> None:
    """Two real agents from one bootstrap; the stand-in refuses registration, so each
    reports (to its own glidein id) the share it would have offered."""
    agent_dir = Path(agent_pkg.__file__).parent
    stage = StageServer(
        {
            f"agent/{p.relative_to(agent_dir)}": p.read_bytes()
            for p in sorted(agent_dir.rglob("*.py"))
        }
    )
    try:
        env = {"PATH": os.environ["PATH"], "GLIDEIN_PYTHON": sys.executable}
        rc, stderr = finish(
            bootstrap(stage, tmp_path, stage_token, env, extra=("--multi", "2", "--memory", "1000"))
        )
    finally:
        stage.close()
    assert rc == 1, stderr  # registration refused: reason error, from both
    report_paths = sorted(p for m, p, _ in stage.requests if p.endswith("/report"))
    assert report_paths == ["/api/v1/glideins/g-42-0/report", "/api/v1/glideins/g-42-1/report"]
    assert [(r["cpus"], r["memory"]) for r in stage.reports] == [(1, 500), (1, 500)]
    assert "starting 2 agents" in stderr
    assert list((tmp_path / "scratch").iterdir()) == []


def test_multi_takes_a_count(tmp_path: Path, token_file: Path) -> None:
    rc, stderr = finish(
        manual("http://127.0.0.1:1", tmp_path, token_file, "--stage-dir", "/", "--multi", "0")
    )
    assert rc == 2 and "--multi takes a number of pilots" in stderr
