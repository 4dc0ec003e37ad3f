"""The bootstrap of a pilot serving several pools: `--also-pool`, `--pool-shares`,
and a token file with a line per pool (only its first line is ever sent by the
bootstrap, to the factory), with both downloaders."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.unit.test_bootstrap import (  # noqa: F401  (fixtures)
    BASH,
    SCRIPT,
    TOKEN,
    WAIT,
    assert_token_kept_off_argv,
    bootstrap,
    downloader,
    finish,
    stub_stage,
)


def test_further_pools_and_shares_reach_glidein_config(
    stub_stage: Any,  # noqa: F811
    tmp_path: Path,
    downloader: dict[str, str],  # noqa: F811
) -> None:
    token = tmp_path / "token"
    other = "token-of-pool-b-never-sent-by-the-bootstrap"
    token.write_text(f"{TOKEN}\npool {stub_stage.url} {TOKEN}\npool http://pool-b:2 {other}\n")
    token.chmod(0o600)
    extra = ("--also-pool", "http://pool-b:2/", "--pool-shares", "2,1")
    rc, stderr = finish(bootstrap(stub_stage, tmp_path, token, downloader, extra=extra))
    assert rc == 7, stderr
    info = json.loads((tmp_path / "marker").read_text())
    config = dict(line.split(" ", 1) for line in info["config"].splitlines())
    assert config["GLIDEIN_Also_Pools"] == "http://pool-b:2"
    assert config["GLIDEIN_Pool_Shares"] == "2,1"
    assert_token_kept_off_argv(downloader, stub_stage)  # every call carried the first line
    assert other not in stderr


@pytest.mark.parametrize(
    ("extra", "code", "problem"),
    [
        (("--also-pool", "http://b:2", "--pool-shares", "2"), 2, "--pool-shares"),
        (("--also-pool", "http://b:2", "--pool-shares", "2,0"), 2, "--pool-shares"),
        (("--pool-shares", "1,1"), 2, "--pool-shares"),
        (("--set", "GLIDEIN_Also_Pools=http://b:2"), 2, "--set cannot set GLIDEIN_Also_Pools"),
        (tuple(a for i in range(8) for a in ("--also-pool", f"http://p{i}:1")), 2, "at most 7"),
    ],
)
def test_bad_pool_options_are_refused(
    tmp_path: Path, extra: tuple[str, ...], code: int, problem: str
) -> None:
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    argv = [
        *("--factory", "http://127.0.0.1:9", "--manifest-sha256", "0" * 64),
        *("--pool", "http://p:1", "--glidein-id", "g", "--entry", "e", "--site", "s"),
        *extra,
    ]
    proc = subprocess.run(
        [BASH, str(SCRIPT), *argv],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "GLIDEIN_TOKEN_FILE": str(token)},
        timeout=WAIT,
    )
    assert proc.returncode == code and problem in proc.stderr, proc.stderr
