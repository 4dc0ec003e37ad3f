"""CVMFS for jobs: the pure plan, and real FUSE mounts of repository images.

CVMFS itself cannot run here (no stratum servers, no cvmfs2 client). The
STAND-IN is what cvmfsexec's ``mountrepo`` mode amounts to: a read-only FUSE
file system mounted by the pilot without root. It is real ``squashfuse`` over
real FUSE (``/dev/fuse``), serving a squashfs image built by ``mksquashfs`` in
a fixture, one per repository. With CI=true a missing tool fails the test.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

import glidewms.glidein.agent as agent_pkg
from glidewms.glidein.agent import container, cvmfs, validation

GLIDEIN = Path(agent_pkg.__file__).parents[1]
CI = os.environ.get("CI") == "true"
REPO = "sw.example.org"
SETUP = "#!/bin/sh\necho experiment software v7\n"


def need(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        missing.append("/dev/fuse (read-write)")
    if missing:
        if CI:
            pytest.fail(f"required when CI=true: {', '.join(missing)}")
        pytest.skip(f"not available: {', '.join(missing)}")


# --------------------------------------------------------------------------- pure


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", []),
        ("cms.cern.ch", ["cms.cern.ch"]),
        (
            "cms.cern.ch, oasis.opensciencegrid.org cms.cern.ch",
            ["cms.cern.ch", "oasis.opensciencegrid.org"],
        ),
    ],
)
def test_parse_repos(text: str, expected: list[str]) -> None:
    assert cvmfs.parse_repos(text) == expected


@pytest.mark.parametrize("text", ["../etc", "a/b", "-x", "a..b"])
def test_bad_repository_names_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="GLIDEIN_CVMFS_Repos"):
        cvmfs.parse_repos(text)


A, B = "a.org", "b.org"


@pytest.mark.parametrize(
    ("mode", "native", "images", "fuse", "how", "problem"),
    [
        ("auto", {A: True, B: True}, False, "no fuse", {A: "native", B: "native"}, ""),
        ("auto", {A: True, B: False}, True, "", {A: "native", B: "mount"}, ""),
        (
            "auto",
            {A: False, B: False},
            False,
            "",
            {A: "mount", B: "mount"},
            "no GLIDEIN_CVMFS_Images",
        ),
        (
            "auto",
            {A: False, B: True},
            True,
            "no /dev/fuse",
            {A: "mount", B: "native"},
            "cannot mount: no /dev/fuse",
        ),
        (
            "native",
            {A: True, B: False},
            True,
            "",
            {A: "native"},
            "not on this node's /cvmfs: b.org",
        ),
        ("mount", {A: True, B: True}, True, "", {A: "mount", B: "mount"}, ""),
        ("never", {}, False, "no fuse", {}, ""),
        ("sometimes", {}, True, "", {}, "GLIDEIN_CVMFS_Mount: expected one of"),
    ],
)
def test_plan(
    mode: str, native: dict[str, bool], images: bool, fuse: str, how: dict[str, str], problem: str
) -> None:
    got_how, got_problem = cvmfs.plan([A, B], mode, native, images, fuse)
    assert got_how == how
    assert (problem in got_problem) if problem else got_problem == ""


def test_mounts_under_reads_the_escaped_table_deepest_first() -> None:
    table = (
        "squashfuse /w/g\\0401/cvmfs/a.org fuse.squashfuse ro 0 0\n"
        "tmpfs /w/g\\0401 tmpfs rw 0 0\n"
        "squashfuse /w/other fuse.squashfuse ro 0 0\n"
        "squashfuse /w/g\\0401/cvmfs/a.org/nested fuse ro 0 0\n"
    )
    assert cvmfs.mounts_under("/w/g 1", table) == [
        "/w/g 1/cvmfs/a.org/nested",
        "/w/g 1/cvmfs/a.org",
    ]


def test_fuse_problems_are_named(tmp_path: Path) -> None:
    assert cvmfs.fuse_problem(lambda _: None) == "no squashfuse on PATH"
    assert "no /nowhere" in cvmfs.fuse_problem(lambda t: "/bin/" + t, "/nowhere")
    only_squashfuse = {"squashfuse": "/bin/squashfuse"}.get
    device = tmp_path / "fuse"
    device.write_text("")
    assert "fusermount" in cvmfs.fuse_problem(only_squashfuse, str(device), euid=1000)
    assert cvmfs.fuse_problem(only_squashfuse, str(device), euid=0) == ""


# --------------------------------------------------------------------------- real mounts


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory of repository images: ``sw.example.org.sqfs`` (built by mksquashfs)."""
    need("mksquashfs", "squashfuse")
    base = tmp_path_factory.mktemp("cvmfs_images")
    tree = base / "tree"
    (tree / "bin").mkdir(parents=True)
    (tree / "bin" / "setup.sh").write_text(SETUP)
    (tree / "bin" / "setup.sh").chmod(0o755)
    out = base / "images"
    out.mkdir()
    subprocess.run(
        [
            "mksquashfs",
            str(tree),
            str(out / f"{REPO}.sqfs"),
            "-noappend",
            "-all-root",
            "-no-progress",
            "-quiet",
        ],
        check=True,
        timeout=60,
        capture_output=True,
    )
    out.chmod(0o755)
    base.chmod(0o755)
    return out


@pytest.fixture
def work(tmp_path: Path) -> Iterator[Path]:
    work = tmp_path / "work"
    for name in ("agent", "validation"):
        shutil.copytree(GLIDEIN / name, work / name, ignore=shutil.ignore_patterns("__pycache__"))
    (work / "glidein_config").write_text(f"GLIDEIN_Work_Dir {work}\n")
    yield work
    assert cvmfs.unmount_all(str(work)) == []  # never leave a mount behind a test


def run_cvmfs(work: Path, **config: str) -> validation.Result:
    with (work / "glidein_config").open("a") as f:
        f.writelines(f"{k} {v}\n" for k, v in config.items())
    return validation.run_script(
        validation.Script("cvmfs", str(work / "validation" / "cvmfs.py"), "factory"),
        str(work / "glidein_config"),
        timeout=60,
    )


def values(work: Path) -> dict[str, str]:
    return validation.read_values(str(work / "glidein_config"))


def test_no_repository_required_is_ok_and_says_so(work: Path) -> None:
    result = run_cvmfs(work)
    assert result.ok and result.detail == "no CVMFS repository required"
    assert values(work)["HAS_CVMFS"] == str(os.path.isdir("/cvmfs")).lower()


def test_a_missing_repository_fails_validation_as_wn_resource(work: Path, images: Path) -> None:
    result = run_cvmfs(
        work, GLIDEIN_CVMFS_Repos=f"{REPO},missing.example.org", GLIDEIN_CVMFS_Images=str(images)
    )
    assert (result.status, result.category) == ("failed", "WN_Resource")
    assert "missing.example.org" in result.detail
    mounts = Path("/proc/self/mounts").read_text()
    assert str(work) not in mounts, "a failed check left its first mount behind"
    result = run_cvmfs(
        work, GLIDEIN_CVMFS_Repos=REPO, GLIDEIN_CVMFS_Images="", GLIDEIN_CVMFS_Mount="auto"
    )
    assert result.category == "WN_Resource" and "no GLIDEIN_CVMFS_Images" in result.detail


def test_a_repository_is_mounted_exposed_to_jobs_and_containers_then_unmounted(
    work: Path, images: Path
) -> None:
    need("bwrap")
    result = run_cvmfs(
        work,
        GLIDEIN_CVMFS_Repos=REPO,
        GLIDEIN_CVMFS_Images=str(images),
        GLIDEIN_Container_Binds="/opt:/opt:ro",
    )
    assert result.ok, result
    got = values(work)
    point = work / "cvmfs" / REPO
    assert os.path.ismount(point)
    assert (point / "bin" / "setup.sh").read_text() == SETUP
    assert (got["HAS_CVMFS"], got["HAS_CVMFS_sw_example_org"], got["GLIDEIN_CVMFS_Source"]) == (
        "true",
        "true",
        "mount",
    )
    assert got["CVMFS_MOUNT_DIR"] == str(work / "cvmfs") and result.job_env == ["CVMFS_MOUNT_DIR"]
    assert {"HAS_CVMFS", "HAS_CVMFS_sw_example_org"} <= set(result.slot_attrs)
    assert got["GLIDEIN_Container_Binds"] == f"/opt:/opt:ro,{point}:/cvmfs/{REPO}:ro"
    # a job in its container finds the repository where CVMFS would be
    setup = container.ContainerSetup.from_values(
        {
            **got,
            "GLIDEIN_Container_Runtime": "bwrap",
            "GLIDEIN_Container_Path": shutil.which("bwrap") or "",
        }
    )
    sandbox = work / "execute" / "job1"
    sandbox.mkdir(parents=True)
    argv, env = container.wrap(
        setup,
        container.HOST_IMAGE,
        str(sandbox),
        ["/bin/sh", f"/cvmfs/{REPO}/bin/setup.sh"],
        {"PATH": "/usr/bin:/bin"},
    )
    out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert (out.returncode, out.stdout) == (0, "experiment software v7\n"), out.stderr
    # what the agent does at exit
    assert cvmfs.unmount(str(point)) == ""
    assert not os.path.ismount(point)


def test_an_unprivileged_pilot_mounts_through_fusermount(
    work: Path, images: Path, tmp_path: Path
) -> None:
    """As the test user wmsuser (uid 2001): FUSE without root, as on a real worker node."""
    need("runuser")
    try:
        import pwd

        pwd.getpwnam("wmsuser")
    except KeyError:
        if CI:
            pytest.fail("the test user wmsuser is required when CI=true")
        pytest.skip("no test user wmsuser")
    if os.geteuid() != 0:
        pytest.skip("switching to the test user needs root")
    subprocess.run(["chown", "-R", "wmsuser:", str(work)], check=True)
    for parent in (tmp_path, tmp_path.parent, tmp_path.parent.parent):
        parent.chmod(parent.stat().st_mode | 0o711)
    (work / "glidein_config").open("a").write(
        f"GLIDEIN_CVMFS_Repos {REPO}\nGLIDEIN_CVMFS_Images {images}\n"
    )
    script = work / "validation" / "cvmfs.py"
    out = subprocess.run(
        [
            "runuser",
            "-u",
            "wmsuser",
            "--",
            "/usr/bin/python3",
            str(script),
            str(work / "glidein_config"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=work,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    point = work / "cvmfs" / REPO
    mount_line = next(
        line for line in Path("/proc/self/mounts").read_text().splitlines() if f" {point} " in line
    )
    assert "user_id=2001" in mount_line  # mounted by the user, through fusermount3
    unmounted = subprocess.run(
        ["runuser", "-u", "wmsuser", "--", "fusermount3", "-u", str(point)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert unmounted.returncode == 0, unmounted.stderr
