"""cvmfsexec mode: the whole pilot in an unprivileged user + mount namespace with /cvmfs.

Real: the bootstrap, ``unshare --user --map-root-user --mount``, ``pivot_root``
into a new root (this machine has no /cvmfs), FUSE and ``squashfuse`` serving a
squashfs image built by ``mksquashfs`` (the STAND-IN for the cvmfs2 client,
which cannot run here), the agent and a job. The pool is `FakePool` (the
protocol stand-in of tests/unit/test_glidein_agent.py). Runs as root and as the
unprivileged test user wmsuser. Skipped only when the kernel refuses user
namespaces or a tool is missing; with CI=true that fails instead.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

import glidewms.glidein.agent as agent_pkg
from tests.harness import wait_for
from tests.unit.test_glidein_agent import TOKEN, FakePool, claim_for

GLIDEIN = Path(agent_pkg.__file__).parents[1]
SCRIPT = GLIDEIN / "bootstrap" / "glidein_startup.sh"
CI = os.environ.get("CI") == "true"
REPO = "sw.example.org"
SETUP = "experiment software v8\n"
PYTHON = "/usr/bin/python3"  # the node's python: the test user cannot reach the venv's
WAIT = 90

JOB = b"""import json, os, sys, urllib.request
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
body = {"setup": open("/cvmfs/%s/setup.txt").read(), "uid": os.getuid(),
        "env": os.environ.get("CVMFS_MOUNT_DIR")}
opener.open(urllib.request.Request(sys.argv[1] + "/test/started",
                                   data=json.dumps(body).encode()), timeout=10)
""" % REPO.encode()


def unavailable(reason: str) -> None:
    if CI:
        pytest.fail(f"CI=true: {reason}")
    pytest.skip(reason)


def userns_refusal() -> str:
    """'' when this kernel lets users create user + mount namespaces, else why not."""
    out = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "true"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return out.stderr.strip() if out.returncode else ""


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    missing = [
        t
        for t in ("mksquashfs", "squashfuse", "unshare", "pivot_root", PYTHON)
        if shutil.which(t) is None
    ]
    if missing:
        unavailable(f"not installed: {', '.join(missing)}")
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        unavailable("/dev/fuse is not read-write for this user")
    refusal = userns_refusal()
    if refusal:
        unavailable(f"the kernel refuses user namespaces: {refusal}")
    base = tmp_path_factory.mktemp("cvmfsexec")
    base.chmod(0o755)
    tree = base / "tree"
    tree.mkdir()
    (tree / "setup.txt").write_text(SETUP)
    out = base / "images"
    out.mkdir(mode=0o755)
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
    (out / f"{REPO}.sqfs").chmod(0o644)
    return out


def pilot_command(
    root: Path, pool: FakePool, images: Path, user: str | None, path: str = "", *extra: str
) -> tuple[list[str], dict[str, str]]:
    """The real bootstrap, by hand (--no-factory), in cvmfsexec mode: argv and env."""
    root.chmod(0o755)
    token = root / "token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)
    scratch = root / "scratch"
    scratch.mkdir()
    if user:
        shutil.chown(token, user)
        shutil.chown(scratch, user)
    argv = [
        "bash",
        str(SCRIPT),
        "--no-factory",
        "--pool",
        pool.url,
        "--stage-dir",
        str(GLIDEIN),
        "--work-dir",
        str(scratch),
        "--idle-timeout",
        "2",
        "--cpus",
        "1",
        "--memory",
        "500",
        "--set",
        "GLIDEIN_CVMFS_Mount=namespace",
        "--set",
        f"GLIDEIN_CVMFS_Repos={REPO}",
        "--set",
        f"GLIDEIN_CVMFS_Images={images}",
        "--set",
        "GLIDEIN_Validation_Skip=container",
        *extra,
    ]
    env = {
        "PATH": path + os.environ["PATH"],
        "GLIDEIN_PYTHON": PYTHON,
        "GLIDEIN_TOKEN_FILE": str(token),
    }
    if user:
        argv = ["runuser", "-u", user, "--", "env", *(f"{k}={v}" for k, v in env.items()), *argv]
    return argv, env


def start_pilot(
    root: Path, pool: FakePool, images: Path, user: str | None, path: str = "", *extra: str
) -> tuple[int, str]:
    """Run the bootstrap to its end; its rc and stderr."""
    argv, env = pilot_command(root, pool, images, user, path, *extra)
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=WAIT, cwd=root)
    return proc.returncode, proc.stderr


def squashfuse_left(images: Path) -> list[str]:
    """squashfuse processes still serving our image: a mount that was not unmounted."""
    left = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if cmdline.startswith("squashfuse") and str(images) in cmdline:
            left.append(f"{proc.name}: {cmdline}")
    return left


@pytest.mark.parametrize("user", [None, "wmsuser"], ids=["root", "wmsuser"])
def test_a_job_sees_cvmfs_mounted_in_the_pilots_namespace(
    tmp_path: Path, images: Path, user: str | None
) -> None:
    if user:
        try:
            uid = pwd.getpwnam(user).pw_uid
        except KeyError:
            unavailable(f"no test user {user}")
        if os.geteuid() != 0:
            pytest.skip("switching to the test user needs root")
        for parent in (tmp_path.parent, tmp_path.parent.parent):
            parent.chmod(parent.stat().st_mode | 0o711)
    else:
        uid = os.geteuid()
    assert not os.path.exists("/cvmfs")  # the namespace makes one: the node is untouched
    with FakePool() as pool:
        pool.claims.append(
            claim_for(pool, "c1", {"job.py": JOB}, cmd=PYTHON, args=["job.py", pool.url])
        )
        rc, stderr = start_pilot(tmp_path, pool, images, user)
    assert rc == 0, stderr
    assert "runs in a user + mount namespace" in stderr
    (slot,) = [r["slot"] for r in pool.registered]
    assert (slot["HAS_CVMFS"], slot["HAS_CVMFS_sw_example_org"], slot["GLIDEIN_CVMFS_Source"]) == (
        True,
        True,
        "namespace",
    )
    (job,) = pool.started_jobs
    assert job == {"setup": SETUP, "uid": uid, "env": "/cvmfs"}  # its own uid, not root
    assert not os.path.exists("/cvmfs")
    assert squashfuse_left(images) == []  # unmounted at exit
    assert list((tmp_path / "scratch").iterdir()) == []


def test_a_missing_repository_image_fails_validation_and_no_job_is_claimed(
    tmp_path: Path, images: Path
) -> None:
    empty = tmp_path / "no_images"
    empty.mkdir()
    (tmp_path / "p").mkdir()
    with FakePool() as pool:
        rc, stderr = start_pilot(tmp_path / "p", pool, empty, None)
    assert rc == 4, stderr
    assert pool.registered == [] and pool.claim_requests == []
    assert "WN_Resource: cvmfsexec namespace" in stderr and "no image" in stderr


def test_a_node_refusing_user_namespaces_fails_validation(tmp_path: Path, images: Path) -> None:
    """``unshare`` here is a STAND-IN failing as a kernel without user namespaces does
    (user.max_user_namespaces = 0 cannot be set for one test on a shared machine)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "unshare").write_text(
        "#!/bin/sh\necho 'unshare: unshare failed: Operation not permitted' >&2\nexit 1\n"
    )
    (bin_dir / "unshare").chmod(0o755)
    (tmp_path / "p").mkdir()
    with FakePool() as pool:
        rc, stderr = start_pilot(tmp_path / "p", pool, images, None, path=f"{bin_dir}:")
    assert rc == 4, stderr
    assert pool.registered == []
    assert "unshare failed: Operation not permitted" in stderr


def squashfuse_pids(images: Path) -> list[int]:
    return [int(line.split(":")[0]) for line in squashfuse_left(images)]


def process_tree(root_pid: int) -> dict[int, str]:
    """pid -> command line of ``root_pid`` and every process descended from it."""
    children: dict[int, list[int]] = {}
    cmdlines: dict[int, str] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            cmdlines[int(proc.name)] = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(proc.name))
    tree, todo = {}, [root_pid]
    while todo:
        pid = todo.pop()
        tree[pid] = cmdlines.get(pid, "")
        todo.extend(children.get(pid, []))
    return tree


def alive(pids: list[int]) -> list[int]:
    return [
        p
        for p in pids
        if Path(f"/proc/{p}").exists()
        and "Z" not in Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0]
    ]


BLOCKING_JOB = JOB + b"import time\ntime.sleep(600)\n"


@pytest.mark.parametrize("victim", ["helper", "namespace_init"])
def test_a_sigkilled_helper_leaves_no_squashfuse_and_no_agent(
    tmp_path: Path, images: Path, victim: str
) -> None:
    """SIGKILL (no cleanup can run) of the cvmfsexec helper the bootstrap waits for,
    or of the init of the pilot's pid namespace: squashfuse, the agent and its job
    all die with it, and the bootstrap still removes its work dir."""
    with FakePool() as pool:
        pool.claims.append(
            claim_for(pool, "c1", {"job.py": BLOCKING_JOB}, cmd=PYTHON, args=["job.py", pool.url])
        )
        argv, env = pilot_command(tmp_path, pool, images, None, "", "--idle-timeout", "600")
        # stderr to a file: a pipe would stay open as long as any orphan holds it
        log = (tmp_path / "stderr").open("w")
        boot = subprocess.Popen(argv, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=log)
        tree: dict[int, str] = {}
        try:
            assert pool.events["started"].wait(WAIT), "the job never started"
            tree = process_tree(boot.pid)
            assert squashfuse_left(images), "squashfuse is not running: nothing to test"
            (helper,) = [
                p
                for p in process_tree(boot.pid)
                if p != boot.pid
                and "agent.cvmfsexec" in tree[p]
                and f"{boot.pid}"
                == Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[1]
            ]
            inits = [
                p
                for p in process_tree(helper)
                if p != helper and "agent.cvmfsexec" in tree.get(p, "")
            ]
            if victim == "namespace_init":
                assert len(inits) == 1, tree  # the helper forks the namespace's init
            os.kill(inits[0] if victim == "namespace_init" else helper, signal.SIGKILL)
            boot.wait(timeout=WAIT)
        finally:
            if boot.poll() is None:
                boot.kill()
                boot.wait()
            others = [p for p in tree if p != boot.pid]
            try:
                wait_for(
                    lambda: not alive(others) and not squashfuse_left(images),
                    "the namespace's processes to die",
                    timeout=WAIT,
                )
            finally:
                for pid in alive(others) + squashfuse_pids(images):  # leave nothing running
                    os.kill(pid, signal.SIGKILL)
    stderr = (tmp_path / "stderr").read_text()
    assert boot.returncode == 137, stderr
    assert list((tmp_path / "scratch").iterdir()) == []


def test_multi_pilots_on_a_node_share_one_namespace_and_one_mount(
    tmp_path: Path, images: Path
) -> None:
    """--multi 2 (local launch): one helper, one squashfuse, both pilots see /cvmfs."""
    with FakePool() as pool:
        for n in (1, 2):
            pool.claims.append(
                claim_for(
                    pool, f"c{n}", {"job.py": BLOCKING_JOB}, cmd=PYTHON, args=["job.py", pool.url]
                )
            )
        argv, env = pilot_command(
            tmp_path,
            pool,
            images,
            None,
            "",
            "--multi",
            "2",
            "--idle-timeout",
            "600",
            "--memory",
            "1000",
        )
        # stderr to a file: a pipe would stay open as long as any orphan holds it
        log = (tmp_path / "stderr").open("w")
        boot = subprocess.Popen(argv, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=log)
        try:
            wait_for(lambda: len(pool.started_jobs) == 2, "both jobs to start", timeout=WAIT)
            tree = process_tree(boot.pid)
            mounts = squashfuse_left(images)
            boot.send_signal(signal.SIGTERM)
            boot.wait(timeout=WAIT)
        finally:
            if boot.poll() is None:
                boot.kill()
                boot.wait()
    stderr = (tmp_path / "stderr").read_text()
    assert [j["setup"] for j in pool.started_jobs] == [SETUP, SETUP], stderr
    assert len([p for p, cmd in tree.items() if "agent.cvmfsexec" in cmd]) == 2, tree
    assert len(mounts) == 1, mounts
    assert sorted(r["glidein_id"][-2:] for r in pool.registered) == ["-0", "-1"]
    assert boot.returncode == 143, stderr
    wait_for(lambda: not squashfuse_left(images), "squashfuse to end", timeout=WAIT)
    assert list((tmp_path / "scratch").iterdir()) == []
