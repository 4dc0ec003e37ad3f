"""The agent's job isolation (agent/isolation.py): its settings, bubblewrap's command
line, jobs run as another account or in a sandbox, and outputs read safely.

Real processes throughout: bubblewrap and the account switch run here (the
tests run as root; account mode needs it, and the sandbox's hiding is shown
against root-owned files a capability-less root could otherwise read).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import stat
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from glidewms.glidein.agent.agent import Agent
from glidewms.glidein.agent.config import build_config
from glidewms.glidein.agent.isolation import Isolation, _covering, open_output
from glidewms.glidein.agent.jobs import JobProcess, JobSpec, job_environment
from glidewms.glidein.agent.policy import ExitReason
from glidewms.glidein.agent.resources import Resources

WAIT = 30
NOBODY = 65534
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="account isolation needs root")
needs_bwrap = pytest.mark.skipif(
    shutil.which("bwrap") is None and os.environ.get("CI") != "true", reason="no bubblewrap"
)


@pytest.fixture
def public_tmp() -> Iterator[Path]:
    """A directory another account can pass through (pytest's tmp_path is 0700 root's)."""
    path = Path(tempfile.mkdtemp(prefix="isolation-test-"))
    path.chmod(0o711)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def job(sandbox: Path, script: str, **spec: object) -> JobSpec:
    sandbox.mkdir(parents=True, exist_ok=True)
    (sandbox / "job.sh").write_text("#!/bin/sh\n" + script)
    (sandbox / "job.sh").chmod(0o755)
    files = [{"name": "job.sh", "sha256": "0" * 64, "executable": True}]
    return JobSpec.from_claim({"cmd": "job.sh", "sandbox": files, **spec})


def start(spec: JobSpec, sandbox: Path, isolation: Isolation) -> JobProcess:
    return JobProcess(spec, str(sandbox), job_environment(spec, str(sandbox), {}), None, isolation)


# -- settings ------------------------------------------------------------------------------


def test_no_setting_is_no_isolation_and_says_so() -> None:
    none = Isolation.from_values({}, "/w", "/t/token")
    assert none.mode == "none" and none.owner is None and none.popen_options() == {}
    assert none.wrap(["/bin/true"], "/w/execute/j") == ["/bin/true"]
    assert "NOT isolated" in none.describe()


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"GLIDEIN_Job_Isolation": "chroot"}, "GLIDEIN_Job_Isolation"),
        (
            {"GLIDEIN_Job_Isolation": "account", "GLIDEIN_Job_Account": "no-such-user-x"},
            "no account",
        ),
        ({"GLIDEIN_Job_Isolation": "sandbox", "GLIDEIN_Job_Hidden": "relative"}, "absolute"),
    ],
)
def test_bad_settings_are_refused_naming_the_key(values: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Isolation.from_values(values, "/w", "/t/token")


def test_the_sandbox_hides_the_pilot_its_token_and_the_given_paths(tmp_path: Path) -> None:
    values = {"GLIDEIN_Job_Isolation": "sandbox", "GLIDEIN_Job_Hidden": "/srv/state,/srv"}
    iso = Isolation.from_values(values, str(tmp_path / "w"), "/creds/fe/main.token")
    assert set(iso.hidden) == {"/srv", str(tmp_path / "w"), "/creds/fe"}
    assert _covering(["/a/b", "/a", "/a/b/c", "/", "/x/../a", "/ab"]) == ("/a", "/ab")


def test_bubblewraps_command_line(tmp_path: Path) -> None:
    # paths outside /tmp (a fresh tmpfs in the sandbox already hides what is in it)
    hidden_dir, hidden_file, under_tmp = "/etc/ssh", "/etc/hostname", str(tmp_path)
    hidden = (hidden_dir, hidden_file, under_tmp)
    iso = Isolation("sandbox", bwrap="/usr/bin/bwrap", hidden=hidden)
    argv = iso.wrap(["/job", "a b"], "/scratch/execute/j")
    assert argv[:3] == ["/usr/bin/bwrap", "--ro-bind", "/"] and argv[-3:] == ["--", "/job", "a b"]
    text = " ".join(argv)
    assert f"--tmpfs {hidden_dir}" in text and f"--ro-bind /dev/null {hidden_file}" in text
    assert "--tmpfs /tmp " in text and under_tmp not in text
    assert "--proc /proc" in text and "--unshare-pid" in text and "--share-net" in text
    # the sandbox is bound back after everything hiding it
    assert text.index("--bind /scratch/execute/j /scratch/execute/j") > text.index(str(hidden_dir))
    assert ("--cap-drop ALL" in text) == (os.geteuid() == 0)


# -- sandbox mode ------------------------------------------------------------------------


@needs_bwrap
def test_a_sandboxed_job_sees_neither_hidden_files_nor_other_processes(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "issuer.key").write_text("SECRET")
    (state / "issuer.key").chmod(0o600)
    work = tmp_path / "work"
    values = {"GLIDEIN_Job_Isolation": "sandbox", "GLIDEIN_Job_Hidden": str(state)}
    iso = Isolation.from_values(values, str(work), str(tmp_path / "creds" / "t"))
    work.mkdir()
    assert iso.check(str(work)) is None
    sandbox = work / "execute" / "j1"
    spec = job(
        sandbox,
        f"cat {state}/issuer.key; ls /proc | grep -c '^[0-9]'; echo $$; echo mine > out.txt\n",
        out="job.out",
        err="job.out",
    )
    assert start(spec, sandbox, iso).run() == 0
    out = (sandbox / "job.out").read_text().split("\n")
    assert "SECRET" not in "\n".join(out) and "No such file" in out[0]
    # bubblewrap's init, the job, its ls and grep: not the pilot, not the services
    assert int(out[1]) <= 5 and out[2] == "2"
    assert (sandbox / "out.txt").read_text() == "mine\n"  # its own sandbox is writable


@needs_bwrap
def test_a_sandboxed_job_gets_its_sigterm_and_the_grace_period(tmp_path: Path) -> None:
    iso = Isolation.from_values({"GLIDEIN_Job_Isolation": "sandbox"}, str(tmp_path), "/t/t")
    sandbox = tmp_path / "execute" / "j"
    spec = job(sandbox, "trap 'echo term > got; exit 3' TERM\necho > ready\nsleep 600 & wait\n")
    os.mkfifo(sandbox / "ready")
    process = start(spec, sandbox, iso)
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(process.run()))
    thread.start()
    (sandbox / "ready").read_text()  # the job is past its trap
    process.kill(grace=WAIT)
    thread.join(WAIT)
    # the job's own handler ran and its exit code is its own: not bubblewrap's SIGTERM death
    assert result == [3] and (sandbox / "got").read_text() == "term\n"


@needs_bwrap
def test_a_pilot_that_cannot_sandbox_fails_validation(tmp_path: Path) -> None:
    values = {
        "GLIDEIN_Pool_URL": "http://127.0.0.1:1",
        "GLIDEIN_Id": "g",
        "GLIDEIN_Token_File": str(tmp_path / "token"),
        "GLIDEIN_Work_Dir": str(tmp_path),
        "GLIDEIN_Job_Isolation": "sandbox",
        "GLIDEIN_Job_Bwrap": "/nonexistent/bwrap",
    }
    agent = Agent(build_config(values, str(tmp_path)), total=Resources(1, 100, 100))
    assert agent.isolate() is False
    assert agent.reason is ExitReason.VALIDATION_FAILED
    assert "job isolation: bubblewrap does not run here" in agent.detail


# -- account mode --------------------------------------------------------------------------


@needs_root
@pytest.mark.parametrize("switch", ["setpriv", "popen"])
def test_a_job_as_another_account_cannot_read_root_files(public_tmp: Path, switch: str) -> None:
    secret = public_tmp / "issuer.key"
    secret.write_text("SECRET")
    secret.chmod(0o600)
    work = public_tmp / "work"
    work.mkdir(mode=0o700)
    iso = Isolation.from_values({"GLIDEIN_Job_Isolation": "account"}, str(work), "/t/t")
    assert bool(iso.setpriv) == (shutil.which("setpriv") is not None)
    if switch == "popen":  # a node without util-linux's setpriv: Popen switches
        iso = dataclasses.replace(iso, setpriv="")
    elif not iso.setpriv:
        if os.environ.get("CI") == "true":  # util-linux is on every CI machine
            pytest.fail("CI=true and setpriv (util-linux) is missing")
        pytest.skip("no setpriv here")
    assert iso.check(str(work)) is None and stat.S_IMODE(work.stat().st_mode) == 0o711
    assert iso.job_root(str(work)) == str(work)
    sandbox = work / "execute" / "j"
    script = f"id -u; cat {secret}; grep -E '^(Uid|Gid|Groups|CapEff)' /proc/self/status\n"
    spec = job(sandbox, script + "echo mine > out.txt\n", out="job.out")
    (work / "execute").chmod(0o700)
    iso.prepare(str(sandbox))
    assert start(spec, sandbox, iso).run() == 0
    lines = (sandbox / "job.out").read_text().splitlines()
    assert lines[0] == str(NOBODY) and "SECRET" not in lines
    status = {line.split(":")[0]: line.split(":")[1].split() for line in lines[1:]}
    # real, effective, saved and file-system ids: no way back to root, no capability
    assert status["Uid"] == [str(NOBODY)] * 4 and status["Gid"] == [str(NOBODY)] * 4
    assert status["Groups"] == [] and int(status["CapEff"][0], 16) == 0
    for name in ("job.out", "out.txt", "job.sh", "."):
        assert (sandbox / name).stat().st_uid == NOBODY, name
    assert stat.S_IMODE(sandbox.stat().st_mode) == 0o700


@needs_root
def test_a_work_dir_the_account_cannot_reach_moves_the_sandboxes(tmp_path: Path) -> None:
    """pytest's tmp_path is under a 0700 directory: the sandboxes go to /tmp instead."""
    iso = Isolation.from_values({"GLIDEIN_Job_Isolation": "account"}, str(tmp_path), "/t/t")
    assert not iso.reaches(str(tmp_path))
    root = iso.job_root(str(tmp_path))
    try:
        assert root != str(tmp_path) and iso.reaches(root)
        assert stat.S_IMODE(os.stat(root).st_mode) == 0o711
    finally:
        shutil.rmtree(root)


def test_account_isolation_is_refused_to_a_pilot_that_is_not_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    iso = Isolation.from_values({"GLIDEIN_Job_Isolation": "account"}, str(tmp_path), "/t/t")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert "needs a pilot running as root" in (iso.check(str(tmp_path)) or "")


# -- outputs -------------------------------------------------------------------------------


def test_outputs_are_opened_without_following_symlinks(tmp_path: Path) -> None:
    (tmp_path / "out.txt").write_text("mine")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "f.txt").write_text("deep")
    (tmp_path / "link").symlink_to("/etc/hostname")
    (tmp_path / "dirlink").symlink_to("/etc")
    os.mkfifo(tmp_path / "fifo")
    for name, expected in [("out.txt", b"mine"), ("sub/f.txt", b"deep")]:
        fd = open_output(str(tmp_path), name)
        try:
            assert os.read(fd, 100) == expected
        finally:
            os.close(fd)
    for name in ("link", "dirlink/hostname", "fifo", "sub/../out.txt", "missing"):
        with pytest.raises(OSError):
            os.close(open_output(str(tmp_path), name))


def test_sigterm_handling_is_unchanged_without_isolation(tmp_path: Path) -> None:
    sandbox = tmp_path / "s"
    spec = job(sandbox, "kill -TERM $$\n")
    assert start(spec, sandbox, Isolation()).run() == 128 + signal.SIGTERM
