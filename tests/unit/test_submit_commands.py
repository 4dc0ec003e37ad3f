"""Each submit command -> the job ad attributes condor_submit gives it.

A table of small submit files per command with the attributes expected (and
the ones that must be absent), then the commands whose meaning is a match:
container jobs, GPUs, custom resources and URL inputs are matched with
classad2 against slot ads that have, or lack, what the job needs.
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Callable
from pathlib import Path

import classad2
import htcondor2  # noqa: F401  (before classad2 is used)
import pytest

from glidewms.submit import JobDescription, SubmitError, commands, parse_submit

ROOT = Path(__file__).resolve().parents[2]
ENV = {
    "HOME": "/home/u",
    "PATH": "/usr/bin",
    "X509_CERT_DIR": "/etc/grid",
    "X509_USER_PROXY": "",
    "SECRET_TOKEN": "s3",
    "LANG": "C",
    "MULTI": "a\nb",
    "SEMI": "a;b",
    "USER": "alice",
}
Job = Callable[[str], JobDescription]


@pytest.fixture
def base(tmp_path: Path) -> Path:
    (tmp_path / "run.sh").write_text("#!/bin/sh\n")
    (tmp_path / "in.txt").write_text("in")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "f").write_text("f")
    (tmp_path / "proxy").write_text("proxy")
    (tmp_path / "image.sif").write_text("sif")
    (tmp_path / "rootfs").mkdir()
    return tmp_path


@pytest.fixture
def job(base: Path) -> Job:
    def _job(lines: str) -> JobDescription:
        text = "executable = run.sh\n" + textwrap.dedent(lines) + "\nqueue\n"
        return parse_submit(text, "job.sub", base, environ=ENV).jobs[0]

    return _job


def error_of(base: Path, lines: str) -> SubmitError:
    with pytest.raises(SubmitError) as info:
        parse_submit(
            "executable = run.sh\n" + textwrap.dedent(lines) + "\nqueue\n",
            "job.sub",
            base,
            environ=ENV,
        )
    return info.value


CASES: list[tuple[str, dict[str, str], tuple[str, ...]]] = [
    # (submit lines, attributes expected, attributes that must be absent)
    ("batch_name = nightly run", {"JobBatchName": '"nightly run"'}, ()),
    ('batch_name = "quoted name"', {"JobBatchName": '"quoted name"'}, ()),
    ('+JobBatchName = "from plus"', {"JobBatchName": '"from plus"'}, ()),
    (
        "accounting_group = group_cms.prod",
        {
            "AcctGroup": '"group_cms.prod"',
            "AcctGroupUser": '"alice"',
            "AccountingGroup": '"group_cms.prod.alice"',
        },
        (),
    ),
    (
        "accounting_group = group_a\naccounting_group_user = bob",
        {"AcctGroup": '"group_a"', "AcctGroupUser": '"bob"', "AccountingGroup": '"group_a.bob"'},
        (),
    ),
    (
        "accounting_group_user = bob",
        {"AcctGroupUser": '"bob"', "AccountingGroup": '"bob"'},
        ("AcctGroup",),
    ),
    ("concurrency_limits = DB_Load:2, Tape", {"ConcurrencyLimits": '"db_load:2,tape"'}, ()),
    (
        'concurrency_limits_expr = strcat("site_", MY.Site)',
        {"ConcurrencyLimits": 'strcat("site_", MY.Site)'},
        (),
    ),
    (
        'on_exit_hold = ExitCode != 0\non_exit_hold_reason = strcat("code ", ExitCode)\n'
        "on_exit_hold_subcode = ExitCode",
        {
            "OnExitHold": "ExitCode != 0",
            "OnExitHoldReason": 'strcat("code ", ExitCode)',
            "OnExitHoldSubCode": "ExitCode",
        },
        (),
    ),
    (
        "notification = Complete\nnotify_user = a@b.org\nemail_attributes = Foo Bar",
        {"JobNotification": "2", "NotifyUser": '"a@b.org"', "EmailAttributes": '"Foo,Bar"'},
        (),
    ),
    (
        "shell = echo $HOSTNAME && ls",
        {
            "Cmd": '"/bin/sh"',
            "TransferExecutable": "false",
            "Arguments": "\"-c 'echo $HOSTNAME && ls'\"",
        },
        (),
    ),
    ("stream_output = true\nstream_error = false", {"StreamOut": "true", "StreamErr": "false"}, ()),
    (
        "transfer_output = false\ntransfer_error = false\noutput = o\nerror = e",
        {"TransferOut": "false", "TransferErr": "false"},
        ("StreamOut",),
    ),
    (
        'transfer_output_remaps = "out.txt = results/out.$(Process).txt; log = /tmp/l"',
        {"TransferOutputRemaps": '"out.txt = results/out.0.txt; log = /tmp/l"'},
        (),
    ),
    (
        "transfer_checkpoint_files = state.dat, ckpt/\ncheckpoint_exit_code = 85",
        {"TransferCheckpoint": '"state.dat, ckpt/"', "SuccessCheckpointExitCode": "85"},
        (),
    ),
    (
        "when_to_transfer_output = ON_EXIT_OR_EVICT",
        {"WhenToTransferOutput": '"ON_EXIT_OR_EVICT"', "ShouldTransferFiles": '"YES"'},
        (),
    ),
    ("WhenToTransferOutput = ON_SUCCESS", {"WhenToTransferOutput": '"ON_SUCCESS"'}, ()),
    (
        "should_transfer_files = NO",
        {"ShouldTransferFiles": '"NO"', "TransferExecutable": "false"},
        ("WhenToTransferOutput", "TransferInput"),
    ),
    ('transfer_output_files = ""', {"TransferOutput": '""'}, ()),
    ("transfer_output_files =", {}, ("TransferOutput",)),
    (
        "docker_pull_policy = always\nuniverse = docker\ndocker_image = debian:12",
        {
            "DockerPullPolicy": '"always"',
            "DockerImage": '"debian:12"',
            "WantDocker": "true",
            "JobUniverse": "5",
        },
        ("WantContainer",),
    ),
    ("max_retries = 3", {"MaxRetries": "3"}, ()),
    ("priority = 10\nnice_user = false", {"JobPrio": "10"}, ("NiceUser",)),
    (
        "description = my job\nproject_name = Cosmo",
        {"JobDescription": '"my job"', "ProjectName": '"Cosmo"'},
        (),
    ),
    (
        "job_machine_attrs = Machine\nwant_graceful_removal = true\nkill_sig = SIGINT",
        {"JobMachineAttrs": '"Machine"', "WantGracefulRemoval": "true", "KillSig": '"SIGINT"'},
        (),
    ),
    ("rank = Memory\nRequestMemory = 4G", {"Rank": "Memory", "RequestMemory": "4096"}, ()),
    ("cuda_version = 12.1", {"CUDAVersion": "12001"}, ()),
    (
        "request_disk = 10 G\nrequest_cpus = 4",
        {"RequestDisk": str(10 * 1024 * 1024), "RequestCpus": "4"},
        (),
    ),
    ("request_memory = 1.5 GB", {"RequestMemory": "1536"}, ()),
    ("request_disk = 100", {"RequestDisk": "100"}, ()),
    ("request_memory = 3000000K", {"RequestMemory": "2930"}, ()),
    (
        "request_cpus = ifThenElse(isUndefined(NumCkpts), 1, 8)",
        {"RequestCpus": "ifThenElse(isUndefined(NumCkpts), 1, 8)"},
        (),
    ),
]


@pytest.mark.parametrize(("lines", "expected", "absent"), CASES)
def test_command_sets_attributes(
    job: Job, lines: str, expected: dict[str, str], absent: tuple[str, ...]
) -> None:
    attrs = job(lines).attrs
    for name, value in expected.items():
        assert attrs.get(name) == value, (name, attrs.get(name))
    for name in absent:
        assert name not in attrs, name


@pytest.mark.parametrize(
    ("lines", "env"),
    [
        ("getenv = true", {k: v for k, v in ENV.items() if k not in ("MULTI",)}),
        ("getenv = false", {}),
        (
            "getenv = PATH, x509*",
            {"PATH": "/usr/bin", "X509_CERT_DIR": "/etc/grid", "X509_USER_PROXY": ""},
        ),
        (
            "getenv = *, !SECRET*, !x509_user*",
            {k: v for k, v in ENV.items() if k not in ("MULTI", "SECRET_TOKEN", "X509_USER_PROXY")},
        ),
        ("getenv = home;lang", {"HOME": "/home/u", "LANG": "C"}),
        (
            'getenv = HOME, LANG\nenvironment = "HOME=/elsewhere A=1"',
            {"HOME": "/elsewhere", "A": "1", "LANG": "C"},
        ),
        ("getenv = SEMI, HOME\nenvironment = A=1", {"HOME": "/home/u", "A": "1"}),
        ('getenv = SEMI\nenvironment = "A=1"', {"SEMI": "a;b", "A": "1"}),
    ],
)
def test_getenv(job: Job, lines: str, env: dict[str, str]) -> None:
    j = job(lines)
    assert j.env == env
    stored = classad2.ExprTree(j.attrs["Environment"]).eval()
    assert isinstance(stored, str) and ("SECRET_TOKEN" in stored) == ("SECRET_TOKEN" in env)


def test_transfer_input_files_urls_and_directories(job: Job, base: Path) -> None:
    j = job("transfer_input_files = in.txt, data/, data, https://example.org/x.tgz, http://h/y")
    assert j.inputs == [base / "in.txt", base / "data", base / "data"]
    assert j.input_urls == ["https://example.org/x.tgz", "http://h/y"]
    assert j.attrs["TransferInput"] == (
        f'"{base / "in.txt"},{base / "data"}/,{base / "data"},https://example.org/x.tgz,http://h/y"'
    )
    assert j.attrs["WantTransferPluginMethods"] == '"http,https"'
    slot = {"Cpus": 1, "Memory": 1024, "Disk": 10**7}
    ad = classad2.parseOne(j.with_cluster(1).ad_text())
    assert not classad2.ClassAd(slot).matches(ad)
    assert classad2.ClassAd({**slot, "HasFileTransferPluginMethods": "https,http,file"}).matches(ad)
    assert not classad2.ClassAd({**slot, "HasFileTransferPluginMethods": "https"}).matches(ad)


def test_x509_proxy_travels_with_the_job(job: Job, base: Path) -> None:
    j = job("x509userproxy = proxy")
    assert j.attrs["x509userproxy"] == f'"{base / "proxy"}"' and base / "proxy" in j.inputs
    (base / "p2").write_text("p")
    env_job = parse_submit(
        "executable = run.sh\nuse_x509userproxy = true\nqueue\n",
        "job.sub",
        base,
        environ={"X509_USER_PROXY": str(base / "p2")},
    ).jobs[0]
    assert env_job.attrs["x509userproxy"] == f'"{base / "p2"}"'
    err = error_of(base, "use_x509userproxy = true")
    assert err.line == 2 and "no proxy at" in str(err)


def test_should_transfer_files_no_needs_the_same_file_system(job: Job, base: Path) -> None:
    j = job("should_transfer_files = NO")
    assert j.executable is None and j.attrs["Cmd"] == f'"{base / "run.sh"}"'
    assert "(TARGET.FileSystemDomain == MY.FileSystemDomain)" in j.attrs["Requirements"]
    err = error_of(base, "should_transfer_files = NO\ntransfer_input_files = in.txt")
    assert err.line == 3 and "should_transfer_files = NO" in str(err)
    err = error_of(
        base, "should_transfer_files = IF_NEEDED\nwhen_to_transfer_output = ON_EXIT_OR_EVICT"
    )
    assert err.line == 3 and "incompatible" in str(err)


SLOT = {"Cpus": 8, "Memory": 16000, "Disk": 10**8, "Arch": "X86_64", "OpSys": "LINUX"}
RUNTIME = {"HasContainer": True, "HasSIF": True, "HasSandboxImage": True, "HasDockerURL": True}


def matches(j: JobDescription, slot: dict[str, object]) -> bool:
    ad = classad2.parseOne(j.with_cluster(1).ad_text())
    return bool(classad2.ClassAd(slot).matches(ad))


@pytest.mark.parametrize(
    ("lines", "want", "has", "attrs"),
    [
        (
            "universe = container\ncontainer_image = docker://almalinux:9",
            "WantDockerImage",
            "HasDockerURL",
            {"ContainerImage": '"docker://almalinux:9"', "ContainerImageSource": '"docker"'},
        ),
        (
            "container_image = /cvmfs/unpacked.cern.ch/registry.hub.docker.com/library/debian:12",
            "WantSandboxImage",
            "HasSandboxImage",
            {
                "ContainerImage": '"/cvmfs/unpacked.cern.ch/registry.hub.docker.com/library/debian:12"',  # noqa: E501
                "ContainerImageSource": '"local"',
            },
        ),
        (
            "container_image = image.sif",
            "WantSIF",
            "HasSIF",
            {"ContainerImage": '"image.sif"', "ContainerImageSource": '"cedar"'},
        ),
        (
            "container_image = rootfs/",
            "WantSandboxImage",
            "HasSandboxImage",
            {"ContainerImage": '"rootfs"'},
        ),
        (
            "container_image = /images/x.sif\ntransfer_container = false",
            "WantSIF",
            "HasSIF",
            {
                "ContainerImage": '"/images/x.sif"',
                "ContainerImageSource": '"local"',
                "TransferContainer": "false",
            },
        ),
        (
            "universe = container\ndocker_image = python:3.12",
            "WantDockerImage",
            "HasDockerURL",
            {"DockerImage": '"python:3.12"'},
        ),
    ],
)
def test_container_jobs_match_only_slots_with_a_runtime_for_the_image(
    job: Job, lines: str, want: str, has: str, attrs: dict[str, str]
) -> None:
    j = job(lines)
    assert j.attrs["WantContainer"] == "true" and j.attrs[want] == "true"
    for name, value in attrs.items():
        assert j.attrs[name] == value
    assert "(TARGET.HasContainer)" in j.attrs["Requirements"]
    assert matches(j, {**SLOT, **RUNTIME})
    assert not matches(j, SLOT), "a slot without a container runtime matched"
    assert not matches(j, {**SLOT, **RUNTIME, has: False}), f"a slot without {has} matched"


def test_local_images_travel_with_the_job(job: Job, base: Path) -> None:
    assert base / "image.sif" in job("container_image = image.sif").inputs
    assert job("universe = container\ncontainer_image = docker://x").inputs == []


def test_docker_universe_matches_slots_with_docker(job: Job) -> None:
    j = job("universe = docker\ndocker_image = centos:7\ndocker_network_type = host")
    assert j.attrs["WantDocker"] == "true" and "WantContainer" not in j.attrs
    assert j.attrs["DockerNetworkType"] == '"host"'
    assert matches(j, {**SLOT, "HasDocker": True})
    assert not matches(j, {**SLOT, **RUNTIME})


def test_singularity_image_plus_attribute_asks_for_a_runtime(job: Job) -> None:
    j = job(
        '+SingularityImage = "/cvmfs/singularity.opensciencegrid.org/opensciencegrid/'
        'osgvo-el9:latest"\nRequirements = HAS_SINGULARITY =?= true'
    )
    assert j.attrs["SingularityImage"].startswith('"/cvmfs/')
    assert "WantContainer" not in j.attrs
    assert matches(j, {**SLOT, **RUNTIME, "HAS_SINGULARITY": True})
    assert not matches(j, {**SLOT, "HAS_SINGULARITY": True})


def test_container_job_without_executable_runs_the_image(base: Path) -> None:
    j = parse_submit(
        "universe = container\ncontainer_image = docker://x\nqueue\n", "job.sub", base
    ).jobs[0]
    assert j.executable is None and j.attrs["Cmd"] == '""'


@pytest.mark.parametrize(
    ("lines", "line", "fragment"),
    [
        (
            "universe = docker\ncontainer_image = x.sif\ndocker_image = y",
            3,
            "does not allow container_image",
        ),
        ("container_image = a.sif\ndocker_image = b", 3, "cannot declare both"),
        ("container_image = library://x/y", 2, "is not a valid container image"),
        ("container_image = missing.sif", 2, "no such image: 'missing.sif'"),
        ("container_image = s3://bucket/x.sif", 2, "not supported by glidewms: s3:// images"),
        ("universe = vm", 2, "'vm' is not supported by glidewms"),
    ],
)
def test_container_errors(base: Path, lines: str, line: int, fragment: str) -> None:
    err = error_of(base, lines)
    assert err.line == line and fragment in str(err), str(err)


def test_gpu_requirements_use_the_slot_gpu_properties(job: Job) -> None:
    j = job("request_gpus = 2\ngpus_minimum_capability = 7.5\ngpus_minimum_memory = 10G")
    assert j.attrs["RequestGPUs"] == "2" and j.attrs["GPUsMinMemory"] == "10240"
    assert j.attrs["RequireGPUs"] == (
        "Capability >= GPUsMinCapability && GlobalMemoryMb >= GPUsMinMemory"
    )
    assert (
        "(countMatches(MY.RequireGPUs, TARGET.AvailableGPUs) >= RequestGPUs)"
        in j.attrs["Requirements"]
    )

    def gpu(cap: float, mem: int) -> str:
        return f"[ Capability = {cap}; GlobalMemoryMb = {mem} ]"

    ad = classad2.parseOne(j.with_cluster(1).ad_text())
    good = classad2.parseOne(
        f"[ Cpus = 8; Memory = 16000; Disk = 100000000; GPUs = 3; "
        f"AvailableGPUs = {{ GPUs_a, GPUs_b, GPUs_c }}; GPUs_a = {gpu(8.0, 16000)}; "
        f"GPUs_b = {gpu(7.5, 12000)}; GPUs_c = {gpu(6.1, 32000)} ]"
    )
    weak = classad2.parseOne(
        f"[ Cpus = 8; Memory = 16000; Disk = 100000000; GPUs = 2; "
        f"AvailableGPUs = {{ GPUs_a, GPUs_c }}; GPUs_a = {gpu(8.0, 16000)}; "
        f"GPUs_c = {gpu(6.1, 32000)} ]"
    )
    assert good.matches(ad) and not weak.matches(ad)


def test_require_gpus_combines_with_the_minimums(job: Job) -> None:
    j = job(
        'request_gpus = 1\nrequire_gpus = DeviceName =!= "Tesla K80"\ngpus_minimum_capability = 8'
    )
    assert (
        j.attrs["RequireGPUs"] == '(DeviceName =!= "Tesla K80") && Capability >= GPUsMinCapability'
    )
    plain = job("request_gpus = 1")
    assert "(TARGET.GPUs >= RequestGPUs)" in plain.attrs["Requirements"]
    assert "GPUs" not in job("request_gpus = 0").attrs["Requirements"]


def test_custom_resources(job: Job) -> None:
    j = job('request_Apples = 2\nrequest_FPGA = "xilinx.*"')
    assert j.attrs["RequestApples"] == "2" and j.attrs["RequestFPGA"] == '"xilinx.*"'
    assert "(TARGET.Apples >= RequestApples)" in j.attrs["Requirements"]
    assert "(regexp(RequestFPGA, TARGET.FPGA))" in j.attrs["Requirements"]


def test_forced_requirements_replace_the_generated_ones(base: Path) -> None:
    desc = parse_submit(
        "executable = run.sh\n+Requirements = TARGET.Cpus > 0\nqueue\n", "job.sub", base
    )
    assert desc.jobs[0].attrs["Requirements"] == "TARGET.Cpus > 0"
    assert any("+Requirements replaces" in w for w in desc.warnings)


def test_owner_plus_attribute_is_dropped_with_a_warning(base: Path) -> None:
    desc = parse_submit('executable = run.sh\n+Owner = "mengel"\nqueue\n', "job.sub", base)
    assert "Owner" not in desc.jobs[0].attrs
    assert desc.warnings == ["job.sub:2: +Owner is ignored: the pool sets Owner to the submitter"]


@pytest.mark.parametrize(
    ("lines", "fragment"),
    [
        ("hold = true", "hold: not supported by glidewms: submit, then `glidewms hold`"),
        ("deferral_time = 1700000000", "deferral_time: not supported by glidewms: deferred"),
        ("grid_resource = batch slurm", "grid_resource: not supported by glidewms: grid"),
        ("ec2_tag_Name = x", "not supported by glidewms: grid universe"),
        ("web_container_port = 80", "not supported by glidewms: pilots accept no inbound"),
        ("request_memory = 1G, 2G", "or an expression giving a number"),
        ("retry_request_memory = 4G", "not supported by glidewms: automatic resubmission"),
        ("output_destination = osdf:///x", "not supported by glidewms: outputs come back"),
        ("success_exit_code = 3", "not supported by glidewms: use `max_retries`"),
        ("transfer_input_files = s3://b/x", "not supported by glidewms: s3:// inputs"),
    ],
)
def test_refusals_name_the_line_and_the_reason(base: Path, lines: str, fragment: str) -> None:
    err = error_of(base, lines)
    assert err.line == 2 and fragment in str(err), str(err)


@pytest.mark.parametrize(
    "lines",
    [
        "hold = false",
        "nice_user = False",
        "run_as_owner = no",
        "stream_input = false",
        "leave_in_queue = false",
        "keep_claim_idle = 30",
        "skip_filechecks = true",
        "encrypt_input_files = *.dat",
        "want_job_networking = true",
        "log_xml = true",
        "load_profile = true",
    ],
)
def test_harmless_commands_are_accepted(job: Job, lines: str) -> None:
    assert job(lines).attrs["Cmd"]


def test_typo_suggestions_never_fire_for_real_commands(base: Path) -> None:
    for name in sorted(commands.BY_NAME):
        text = f"executable = run.sh\n{name} = false\nqueue\n"
        try:
            parse_submit(text, "job.sub", base, environ=ENV)
        except SubmitError as exc:
            assert "did you mean" not in str(exc), (name, str(exc))


@pytest.mark.parametrize(
    ("typo", "meant"),
    [
        ("request_memroy", "request_memory"),
        ("requirments", "requirements"),
        ("transfer_input_file", "transfer_input_files"),
        ("should_transfer_file", "should_transfer_files"),
        ("acounting_group", "accounting_group"),
        ("Arguements", "arguments"),
    ],
)
def test_typos_are_caught(base: Path, typo: str, meant: str) -> None:
    err = error_of(base, f"{typo} = 1")
    assert err.line == 2 and f"did you mean '{meant}'?" in str(err)


def test_docs_list_every_command() -> None:
    text = (ROOT / "docs" / "submit.md").read_text()
    assert commands.reference_markdown() in text, (
        "docs/submit.md is out of date: paste the output of "
        "`python -m glidewms.submit.commands` over its command table"
    )


def test_env_of_the_test_process_is_not_read_when_given(base: Path) -> None:
    os.environ["GLIDEWMS_SHOULD_NOT_LEAK"] = "1"
    try:
        j = parse_submit(
            "executable = run.sh\ngetenv = true\nqueue\n", "job.sub", base, environ={"ONLY": "me"}
        ).jobs[0]
    finally:
        del os.environ["GLIDEWMS_SHOULD_NOT_LEAK"]
    assert j.env == {"ONLY": "me"}


@pytest.mark.parametrize(
    "text",
    [
        "TARGET.Memory > 2048",
        "a && (b || c)",
        'regexp("x.*", Name)',
        "{1, 2}[0]",
        "[a = 1].a",
        "TARGET.Cpus >=",
        "(a && b",
        '"open',
        "a /* x",
        "1 +* 2",
        "strcat(",
        "x.y.z",
        "ifThenElse(a, b)",
        "a =?= undefined",
        "-1e3",
        "!",
        ")(",
    ],
)
def test_expression_checks_agree_with_classad2(text: str) -> None:
    """A value is pasted into the ad only if classad2 parses it whole (and it holds
    no top-level `;`, which classad2 would silently stop at)."""
    from glidewms.submit.exprs import problem

    try:
        classad2.ExprTree(text)
        parses = True
    except Exception:
        parses = False
    assert (problem(text) is None) == parses, text


@pytest.mark.parametrize("text", ["a ] [ b", 'a; Cmd = "/bin/sh"'])
def test_text_classad2_stops_early_in_is_refused(text: str) -> None:
    from glidewms.submit.exprs import problem

    classad2.ExprTree(text)  # parses: classad2 stops quietly at `]` or `;`
    assert problem(text) is not None
