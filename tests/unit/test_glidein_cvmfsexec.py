"""cvmfsexec mode's pure decisions; the namespace itself runs for real in
tests/integration/test_glidein_cvmfsexec.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from glidewms.glidein.agent import cvmfs
from glidewms.glidein.agent.cvmfsexec import as_user, note, root_entries


@pytest.mark.parametrize(
    ("uid", "gid", "argv"),
    [
        (None, None, ["python3", "-m", "agent"]),
        (0, 0, ["python3", "-m", "agent"]),  # root stays root: the namespace maps it to itself
        (
            2001,
            2002,
            [
                "unshare",
                "--user",
                "--map-user=2001",
                "--map-group=2002",
                "--",
                "python3",
                "-m",
                "agent",
            ],
        ),
    ],
)
def test_the_agent_runs_as_the_pilots_own_uid(
    uid: int | None, gid: int | None, argv: list[str]
) -> None:
    assert as_user(["python3", "-m", "agent"], uid, gid) == argv


def test_the_new_root_carries_directories_and_links_only(tmp_path: Path) -> None:
    (tmp_path / "usr").mkdir()
    (tmp_path / "bin").symlink_to("usr/bin")
    (tmp_path / "stray-file").write_text("x")
    assert root_entries(str(tmp_path)) == [("bin", "link"), ("usr", "dir")]


@pytest.mark.parametrize(
    ("native", "problem"),
    [
        ({"a.org": True, "b.org": True}, ""),
        ({"a.org": True, "b.org": False}, "not in the pilot's namespace /cvmfs: b.org"),
    ],
)
def test_namespace_mode_needs_every_repository_in_the_namespace(
    native: dict[str, bool], problem: str
) -> None:
    assert cvmfs.plan(["a.org", "b.org"], "namespace", native, True, "") == ({}, problem)


def test_a_problem_is_noted_on_one_line(tmp_path: Path) -> None:
    config = tmp_path / "glidein_config"
    config.write_text("GLIDEIN_Id g\n")
    note(str(config), [("GLIDEIN_CVMFS_Namespace_Problem", "unshare:\n  refused")])
    assert config.read_text().splitlines()[-1] == "GLIDEIN_CVMFS_Namespace_Problem unshare: refused"
