"""Jobs in containers: the command lines (pure), and real runs under bubblewrap.

Bubblewrap is real (CI=true makes its absence a failure). Apptainer cannot be
installed here: its path runs against `tests/components/bwrap_apptainer_standin.sh`,
a STAND-IN honouring apptainer's command line on top of bubblewrap. The
"image" of the directory-image tests is a tiny rootfs made here: its own /etc
with a marker file and the host's /usr bound read-only into it.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
from pathlib import Path
from typing import Any

import pytest

from glidewms.glidein.agent.container import (
    Bind,
    ContainerError,
    ContainerSetup,
    apptainer_argv,
    bwrap_argv,
    capabilities,
    check_image,
    choose_image,
    container_env,
    wrap,
)
from glidewms.glidein.agent.jobs import JobProcess, JobSetupError, JobSpec, job_environment

COMPONENTS = Path(__file__).parents[1] / "components"
CI = os.environ.get("CI") == "true"


def need_bwrap() -> str:
    path = shutil.which("bwrap")
    if path is None:
        if CI:
            pytest.fail("bwrap is required when CI=true")
        pytest.skip("bwrap is not installed")
    return path


# --------------------------------------------------------------------------- pure


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/data", Bind("/data", "/data", False)),
        ("/data:/srv/data", Bind("/data", "/srv/data", False)),
        ("/data:ro", Bind("/data", "/data", True)),
        ("/data:/in:ro", Bind("/data", "/in", True)),
        ("/data:/in:rw", Bind("/data", "/in", False)),
    ],
)
def test_bind_specs(text: str, expected: Bind) -> None:
    assert Bind.parse(text) == expected


@pytest.mark.parametrize("text", ["data", "/a:b", "/a:/b:/c:ro"])
def test_bad_bind_specs_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="bind"):
        Bind.parse(text)


def test_setup_from_glidein_config_values() -> None:
    setup = ContainerSetup.from_values(
        {
            "GLIDEIN_Container_Runtime": "bwrap",
            "GLIDEIN_Container_Path": "/usr/bin/bwrap",
            "GLIDEIN_Container_Use": "required",
            "GLIDEIN_Container_Binds": "/data:ro, /scratch",
            "GLIDEIN_Container_Default_Image": "/images/el9",
        }
    )
    assert (setup.runtime, setup.use, setup.default_image) == ("bwrap", "REQUIRED", "/images/el9")
    assert setup.binds == (Bind("/data", "/data", True), Bind("/scratch", "/scratch"))
    with pytest.raises(ValueError, match="GLIDEIN_Container_Use"):
        ContainerSetup.from_values({"GLIDEIN_Container_Use": "sometimes"})


BWRAP = ContainerSetup("bwrap", "/usr/bin/bwrap")


@pytest.mark.parametrize(
    ("setup", "job", "expected"),
    [
        (BWRAP, None, None),
        (BWRAP, {"image": ""}, "host"),
        (BWRAP, {"image": "/images/el9"}, "/images/el9"),
        (ContainerSetup("bwrap", "/b", "/images/default", "REQUIRED"), None, "/images/default"),
        (ContainerSetup("none", "", use="OPTIONAL"), None, None),
        (ContainerSetup("none", "", use="OPTIONAL"), {"image": ""}, ContainerError),
        (ContainerSetup("bwrap", "/b", use="NEVER"), {"image": ""}, ContainerError),
        (ContainerSetup("bwrap", "/b", use="NEVER"), None, None),
    ],
)
def test_which_image_a_job_gets(setup: ContainerSetup, job: Any, expected: Any) -> None:
    if expected is ContainerError:
        with pytest.raises(ContainerError):
            choose_image(setup, job)
    else:
        assert choose_image(setup, job) == expected


APPTAINER = ContainerSetup("apptainer", "/usr/bin/apptainer")


@pytest.mark.parametrize(
    ("runtime", "has"),
    [
        # bubblewrap is the container runtime: directory images only
        ("bwrap", {"HasContainer", "HAS_CONTAINER", "HasSandboxImage"}),
        (
            "apptainer",
            {
                "HasContainer",
                "HAS_CONTAINER",
                "HasSingularity",
                "HAS_SINGULARITY",
                "HasSIF",
                "HasSandboxImage",
                "HasDockerURL",
            },
        ),
        ("none", set()),
    ],
)
def test_what_each_runtime_says_it_runs(runtime: str, has: set[str]) -> None:
    got = capabilities(runtime)
    assert {k for k, v in got.items() if v is True} == has
    assert got["HasDocker"] is False  # no docker universe runtime here
    assert all(isinstance(v, bool) for v in got.values())


@pytest.mark.parametrize(
    ("setup", "job", "expected"),
    [
        (BWRAP, {"image": "/images/el9", "kind": "sandbox"}, "/images/el9"),
        (BWRAP, {"image": "/images/x.sif", "kind": "sif"}, "is a SIF image; this pilot's"),
        (BWRAP, {"image": "/images/x.sif"}, "runs a directory images only"),  # kind by name
        (BWRAP, {"image": "docker://alpine", "kind": "docker"}, "a docker:// image"),
        (BWRAP, {"image": "rootfs", "kind": "sandbox", "in_sandbox": True}, "/sb/1_0/rootfs"),
        (BWRAP, {"image": "a/../../etc", "in_sandbox": True}, "base name"),
        (APPTAINER, {"image": "x.sif", "kind": "sif", "in_sandbox": True}, "/sb/1_0/x.sif"),
        (APPTAINER, {"image": "/cvmfs/img.sif", "kind": "sif"}, "/cvmfs/img.sif"),
        (APPTAINER, {"image": "ubuntu:22.04", "kind": "docker"}, "docker://ubuntu:22.04"),
        (APPTAINER, {"image": "docker:alpine"}, "docker://alpine"),
        (APPTAINER, {"image": "docker://alpine:3"}, "docker://alpine:3"),
        (APPTAINER, {"image": "host", "kind": "sandbox"}, "host"),
    ],
)
def test_an_image_kind_the_runtime_cannot_run_is_refused(
    setup: ContainerSetup, job: Any, expected: str
) -> None:
    if expected.startswith(("/", "docker://", "host")):
        assert choose_image(setup, job, "/sb/1_0") == expected
    else:
        with pytest.raises(ContainerError, match=expected):
            choose_image(setup, job, "/sb/1_0")


def test_the_image_must_exist_and_only_apptainer_knows_an_entry_point(tmp_path: Path) -> None:
    (tmp_path / "x.sif").write_bytes(b"SIF")
    with pytest.raises(ContainerError, match="is not a directory"):
        check_image(BWRAP, str(tmp_path / "x.sif"))
    with pytest.raises(ContainerError, match="does not exist"):
        check_image(APPTAINER, str(tmp_path / "gone.sif"))
    check_image(APPTAINER, str(tmp_path / "x.sif"), entry_point=True)
    check_image(BWRAP, str(tmp_path))
    # an image holding the pilot's own directory would show the job its token
    sandbox = tmp_path / "work" / "execute" / "1_0"
    sandbox.mkdir(parents=True)
    for image in ("/", str(tmp_path), str(tmp_path / "work") + "/"):
        with pytest.raises(ContainerError, match="holds the pilot's own directory"):
            check_image(BWRAP, image, sandbox=str(sandbox))
    (sandbox / "rootfs").mkdir()
    check_image(BWRAP, str(sandbox / "rootfs"), sandbox=str(sandbox))  # one that came with it
    with pytest.raises(ContainerError, match="give the job an executable"):
        check_image(BWRAP, str(tmp_path), entry_point=True)
    # apptainer runs the image's runscript with the job's arguments
    argv = apptainer_argv("apptainer", "/i/x.sif", "/w/s", (), False, ["", "a1", "a2"])
    assert argv[:2] == ["apptainer", "run"] and argv[-3:] == ["/i/x.sif", "a1", "a2"]
    assert "--contain" in argv and "--cleanenv" in argv


def test_a_claim_without_cmd_is_valid_only_in_a_container() -> None:
    job = {"cmd": "", "container": {"image": "x.sif", "kind": "sif", "in_sandbox": True}}
    spec = JobSpec.from_claim(job)
    assert spec.container == {"image": "x.sif", "kind": "sif", "in_sandbox": True}
    with pytest.raises(JobSetupError, match="no cmd"):
        JobSpec.from_claim({"cmd": ""})
    for bad in ({"image": "x", "kind": "vm"}, {"image": 3}, {"image": "x", "in_sandbox": "yes"}):
        with pytest.raises(JobSetupError, match="container: expected"):
            JobSpec.from_claim({"cmd": "/bin/true", "container": bad})


def test_command_lines_map_the_sandbox_and_bind_what_exists() -> None:
    argv = bwrap_argv(
        "bwrap",
        "host",
        "/w/execute/1_0",
        (Bind("/data", "/in", True),),
        ("/dev/nvidia0",),
        ["/w/execute/1_0/job.sh", "a b"],
    )
    assert argv[-3:] == ["--", "/srv/job.sh", "a b"]
    assert argv[argv.index("--bind") :][:3] == ["--bind", "/w/execute/1_0", "/srv"]
    assert "--share-net" in argv and "--unshare-all" in argv and "--clearenv" not in argv
    assert argv[argv.index("/data") - 1 :][:3] == ["--ro-bind-try", "/data", "/in"]
    assert argv[argv.index("/cvmfs") - 1 :][:3] == ["--ro-bind-try", "/cvmfs", "/cvmfs"]
    assert argv[argv.index("/dev/nvidia0") - 1 :][:3] == [
        "--dev-bind-try",
        "/dev/nvidia0",
        "/dev/nvidia0",
    ]
    app = apptainer_argv("/opt/apptainer", "/img.sif", "/w/s", (), True, ["/usr/bin/env"])
    assert app[:4] == ["/opt/apptainer", "exec", "--contain", "--cleanenv"]
    assert "--nv" in app and app[-2:] == ["/img.sif", "/usr/bin/env"]
    assert "/w/s:/srv" in app


def test_apptainer_gets_the_job_environment_prefixed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APPTAINER_CACHEDIR", "/site/cache")
    monkeypatch.setenv("GLIDEIN_TOKEN_FILE", "/secret/token")
    env = container_env("apptainer", {"HOME": "/w/s", "X": "1", "PATH": "/job/bin"}, "/w/s")
    assert env["APPTAINERENV_HOME"] == "/srv" and env["APPTAINERENV_X"] == "1"
    assert env["APPTAINER_CACHEDIR"] == "/site/cache"
    assert "GLIDEIN_TOKEN_FILE" not in env and "APPTAINERENV_PATH" not in env
    assert container_env("bwrap", {"TMPDIR": "/w/s/tmp"}, "/w/s") == {"TMPDIR": "/srv/tmp"}


# --------------------------------------------------------------------------- real runs

JOB = b"""#!/bin/sh
{
  echo "pwd=$(pwd)"
  echo "home=$HOME"
  echo "job_var=$JOB_VAR"
  echo "token_var=${GLIDEIN_TOKEN_FILE:-unset}"
  echo "marker=$(cat /etc/glidein-test-image 2>/dev/null || echo none)"
  if [ -e "$OUTSIDE" ]; then echo "outside=visible"; else echo "outside=hidden"; fi
  if touch /usr/glidein-write-test 2>/dev/null; then echo "usr=writable"; else echo "usr=ro"; fi
  echo "net=$(/usr/bin/python3 -c "import socket,sys
s = socket.create_connection(('127.0.0.1', int(sys.argv[1])), 5)
print(s.recv(16).decode())" "$PORT")"
} > report.txt
"""


@pytest.fixture
def listener() -> Any:
    """A loopback service the job must reach (bubblewrap needs --share-net for it)."""
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            conn.sendall(b"hello")
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join(5)
    server.close()


def run_job(
    tmp_path: Path, setup: ContainerSetup, image: str, port: int, monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    sandbox = tmp_path / "execute" / "1_0"
    sandbox.mkdir(parents=True, exist_ok=True)  # it may hold an image that came with the job
    (sandbox / "job.sh").write_bytes(JOB)
    (sandbox / "job.sh").chmod(0o755)
    outside = tmp_path / "outside.txt"
    outside.write_text("a node file the job must not see\n")
    monkeypatch.setenv("GLIDEIN_TOKEN_FILE", str(tmp_path / "token"))  # the pilot's own env
    spec = JobSpec(
        cmd="job.sh",
        sandbox=[],
        err="job.err",
        env={"JOB_VAR": "from the job", "OUTSIDE": str(outside), "PORT": str(port)},
    )
    spec.cmd = str(sandbox / "job.sh")  # a node path: the wrapper maps it to /srv/job.sh
    env = job_environment(spec, str(sandbox), {})
    process = JobProcess(
        spec, str(sandbox), env, lambda argv, e: wrap(setup, image, str(sandbox), argv, e)
    )
    assert process.run() == 0, (sandbox / "job.err").read_text()
    lines = (sandbox / "report.txt").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines)


def tiny_rootfs(tmp_path: Path) -> Path:
    """A directory image: its own /etc (with a marker), mount points, symlinks to /usr."""
    root = tmp_path / "rootfs"
    for name in ("etc", "usr", "proc", "dev", "tmp", "srv"):
        (root / name).mkdir(parents=True)
    for name in ("bin", "lib", "lib64", "sbin"):
        (root / name).symlink_to(f"usr/{name}")
    (root / "etc" / "glidein-test-image").write_text("tiny-rootfs\n")
    shutil.copy("/etc/passwd", root / "etc" / "passwd")
    return root


def test_bubblewrap_host_image(
    tmp_path: Path, listener: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    setup = ContainerSetup("bwrap", need_bwrap())
    got = run_job(tmp_path, setup, "host", listener, monkeypatch)
    assert got == {
        "pwd": "/srv",
        "home": "/srv",
        "job_var": "from the job",
        "token_var": "unset",
        "marker": "none",
        "outside": "hidden",
        "usr": "ro",
        "net": "hello",
    }


def test_bubblewrap_directory_image_with_configured_binds(
    tmp_path: Path, listener: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    setup = ContainerSetup("bwrap", need_bwrap(), binds=(Bind("/usr", "/usr", True),))
    got = run_job(tmp_path, setup, str(tiny_rootfs(tmp_path)), listener, monkeypatch)
    assert (got["marker"], got["pwd"], got["outside"], got["usr"], got["net"]) == (
        "tiny-rootfs",
        "/srv",
        "hidden",
        "ro",
        "hello",
    )


def test_bubblewrap_runs_a_directory_image_that_travelled_in_the_sandbox(
    tmp_path: Path, listener: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The image came with the job: it is in the sandbox under its base name."""
    setup = ContainerSetup("bwrap", need_bwrap(), binds=(Bind("/usr", "/usr", True),))
    sandbox = tmp_path / "execute" / "1_0"
    sandbox.mkdir(parents=True)
    tiny_rootfs(tmp_path).rename(sandbox / "el9-rootfs")
    image = choose_image(setup, {"image": "el9-rootfs", "in_sandbox": True}, str(sandbox))
    assert image == str(sandbox / "el9-rootfs")
    check_image(setup, image)
    got = run_job(tmp_path, setup, image, listener, monkeypatch)
    assert (got["marker"], got["pwd"], got["outside"]) == ("tiny-rootfs", "/srv", "hidden")


def test_apptainer_path_against_the_stand_in(
    tmp_path: Path, listener: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`apptainer` is the bubblewrap-based STAND-IN: Apptainer cannot be installed here."""
    need_bwrap()
    log = tmp_path / "apptainer.log"
    monkeypatch.setenv("APPTAINER_STANDIN_LOG", str(log))
    standin = tmp_path / "bin" / "apptainer"
    standin.parent.mkdir()
    standin.symlink_to(COMPONENTS / "bwrap_apptainer_standin.sh")
    setup = ContainerSetup("apptainer", str(standin), binds=(Bind("/usr", "/usr", True),))
    got = run_job(tmp_path, setup, str(tiny_rootfs(tmp_path)), listener, monkeypatch)
    assert got == {
        "pwd": "/srv",
        "home": "/srv",
        "job_var": "from the job",
        "token_var": "unset",
        "marker": "tiny-rootfs",
        "outside": "hidden",
        "usr": "ro",
        "net": "hello",
    }
    assert log.read_text().startswith("apptainer exec --contain --cleanenv")


def test_a_job_without_executable_runs_the_images_runscript_under_apptainer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`apptainer` is the bubblewrap-based STAND-IN; `Cmd = ""` runs the runscript."""
    need_bwrap()
    log = tmp_path / "apptainer.log"
    monkeypatch.setenv("APPTAINER_STANDIN_LOG", str(log))
    standin = tmp_path / "bin" / "apptainer"
    standin.parent.mkdir()
    standin.symlink_to(COMPONENTS / "bwrap_apptainer_standin.sh")
    setup = ContainerSetup("apptainer", str(standin), binds=(Bind("/usr", "/usr", True),))
    root = tiny_rootfs(tmp_path)
    (root / ".singularity.d").mkdir()
    runscript = root / ".singularity.d" / "runscript"
    runscript.write_text('#!/bin/sh\necho "entry point ran with $*" > /srv/ran.txt\n')
    runscript.chmod(0o755)
    sandbox = tmp_path / "s"
    sandbox.mkdir()
    spec = JobSpec.from_claim({"cmd": "", "args": ["a", "b"], "container": {"image": str(root)}})
    image = choose_image(setup, spec.container, str(sandbox))
    assert image is not None
    check_image(setup, image, entry_point=True)
    process = JobProcess(
        spec,
        str(sandbox),
        job_environment(spec, str(sandbox), {}),
        lambda argv, e: wrap(setup, image, str(sandbox), argv, e),
    )
    assert process.run() == 0
    assert (sandbox / "ran.txt").read_text() == "entry point ran with a b\n"
    assert log.read_text().startswith("apptainer run --contain --cleanenv")


def test_a_missing_image_fails_the_job_setup(tmp_path: Path) -> None:
    with pytest.raises(ContainerError, match="not a directory"):
        wrap(
            ContainerSetup("bwrap", "/usr/bin/bwrap"),
            str(tmp_path / "nope"),
            str(tmp_path),
            ["/bin/true"],
            {},
        )


def test_killing_a_containerised_job_ends_it(tmp_path: Path) -> None:
    setup = ContainerSetup("bwrap", need_bwrap())
    sandbox = tmp_path / "s"
    sandbox.mkdir()
    spec = JobSpec(cmd="/bin/sh", args=["-c", "echo $$ > started; exec sleep 300"])
    process = JobProcess(
        spec,
        str(sandbox),
        job_environment(spec, str(sandbox), {}),
        lambda argv, e: wrap(setup, "host", str(sandbox), argv, e),
    )
    result: dict[str, int] = {}
    thread = threading.Thread(target=lambda: result.update(rc=process.run()))
    thread.start()
    assert process.started.wait(30)
    deadline = threading.Event()
    for _ in range(600):  # poll: the container starts in another process
        if (sandbox / "started").exists():
            break
        deadline.wait(0.05)
    process.kill(grace=2)
    thread.join(30)
    assert not thread.is_alive() and result["rc"] != 0
