"""File transfer as HTCondor does it (issue 12): what the pilot sends back and
what it holds for, its URL plugins, what the pool asks of a pilot and holds
for, and where `glidewms fetch` puts each file."""

from __future__ import annotations

import errno
import http.server
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from glidewms import classads
from glidewms.client import (
    ClientError,
    Placement,
    _listed_inputs,
    _under,
    check_layout,
    directory_files,
    parse_remaps,
)
from glidewms.glidein.agent.claims import ClaimRunner
from glidewms.glidein.agent.jobs import (
    InputError,
    JobProcess,
    JobSetupError,
    JobSpec,
    check_path,
    job_environment,
    plan_outputs,
    snapshot,
)
from glidewms.glidein.agent.transfer import (
    Bounds,
    Plugins,
    TransferError,
    fetch_http,
    plugins_for,
    redact,
    url_file_name,
)
from glidewms.pool.checks import is_sandbox_path
from glidewms.pool.exit import Completion, transfer_action
from glidewms.pool.jobs import HOLD_TRANSFER_INPUT, HOLD_TRANSFER_OUTPUT, _ad_part
from glidewms.pool.lifecycle import JobState

# ---------------------------------------------------------------- pilot: names


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("a", True),
        ("dir/sub/file.txt", True),
        ("d/.hidden", True),
        ("../x", False),
        ("a/../../x", False),
        ("/etc/passwd", False),
        ("a//b", False),
        ("a/./b", False),
        ("a/", False),
        ("", False),
        ("a\0b", False),
        ("/".join(["d"] * 33), False),
    ],
)
def test_sandbox_paths_stay_inside_on_both_sides(name: str, ok: bool) -> None:
    assert is_sandbox_path(name) is ok
    if ok:
        assert check_path(name) == name
    else:
        with pytest.raises(JobSetupError):
            check_path(name)


# ------------------------------------------------------------- pilot: outputs


def _sandbox(tmp_path: Path) -> Path:
    """A sandbox as a job left it: files, a directory tree, symlinks out."""
    sb = tmp_path / "sb"
    (sb / "res" / "deep").mkdir(parents=True)
    (sb / "res" / "a.txt").write_text("a")
    (sb / "res" / "deep" / "b.txt").write_text("b")
    (sb / "res" / "deep" / "escape").symlink_to("/etc/hostname")
    (sb / "res" / "up").symlink_to("/")
    (sb / "top.txt").write_text("t")
    (sb / "job.out").write_text("o")
    (sb / "job.err").write_text("e")
    (sb / "link").symlink_to("/etc/hostname")
    (sb / "out").symlink_to("/")
    return sb


@pytest.mark.parametrize(
    ("claim", "succeeded", "files", "missing"),
    [
        # a listed file lands under its base name, a directory with its tree
        (
            {"transfer_output": ["res/a.txt", "res"]},
            True,
            [
                ("job.out", "job.out"),
                ("job.err", "job.err"),
                ("a.txt", "res/a.txt"),
                ("res/a.txt", "res/a.txt"),
                ("res/deep/b.txt", "res/deep/b.txt"),
            ],
            [],
        ),
        # `dir/`: its contents
        (
            {"transfer_output": ["res/"]},
            True,
            [
                ("job.out", "job.out"),
                ("job.err", "job.err"),
                ("a.txt", "res/a.txt"),
                ("deep/b.txt", "res/deep/b.txt"),
            ],
            [],
        ),
        # missing, symlinks and escapes are all missing: the pool holds the job
        (
            {"transfer_output": ["top.txt", "nope", "link", "out/etc/hostname", "../sb/top.txt"]},
            True,
            [("job.out", "job.out"), ("job.err", "job.err"), ("top.txt", "top.txt")],
            ["nope", "link", "out/etc/hostname", "../sb/top.txt"],
        ),
        # transfer_output_files = "": nothing but the streams
        ({"transfer_output": []}, True, [("job.out", "job.out"), ("job.err", "job.err")], []),
        # TransferOut/TransferErr false: the streams stay here, also in "every new file" mode
        (
            {"transfer_out": False, "transfer_err": False},
            True,
            [("top.txt", "top.txt")],
            [],
        ),
        # ON_SUCCESS after a failure: streams only, and no hold for what is missing
        (
            {"transfer_output": ["nope"], "when_to_transfer_output": "on_success"},
            False,
            [("job.out", "job.out"), ("job.err", "job.err")],
            [],
        ),
        ({"transfer_output": ["nope"], "when_to_transfer_output": "ON_SUCCESS"}, True, [], None),
        # preserve_relative_paths: a listed path keeps its directories
        (
            {
                "transfer_output": ["res/a.txt", "res/deep", "./top.txt"],
                "preserve_relative_paths": True,
            },
            True,
            [
                ("job.out", "job.out"),
                ("job.err", "job.err"),
                ("res/a.txt", "res/a.txt"),
                ("res/deep/b.txt", "res/deep/b.txt"),
                ("top.txt", "./top.txt"),
            ],
            [],
        ),
    ],
)
def test_outputs_sent_back_as_htcondor_places_them(
    tmp_path: Path,
    claim: dict[str, Any],
    succeeded: bool,
    files: list[tuple[str, str]],
    missing: list[str] | None,
) -> None:
    sb = _sandbox(tmp_path)
    spec = JobSpec.from_claim({"cmd": "x", "out": "/s/job.out", "err": "/s/job.err", **claim})
    plan = plan_outputs(spec, str(sb), {}, succeeded)
    if missing is None:  # ON_SUCCESS with success: as ON_EXIT
        assert plan.missing == ["nope"]
        return
    assert plan.files == files
    assert plan.missing == missing


def test_every_new_file_mode_skips_inputs_and_directories(tmp_path: Path) -> None:
    sb = _sandbox(tmp_path)
    (sb / "input.txt").write_text("in")
    baseline = snapshot(str(sb))
    (sb / "new.txt").write_text("n")
    spec = JobSpec.from_claim({"cmd": "x"})
    assert plan_outputs(spec, str(sb), baseline).files == [("new.txt", "new.txt")]


def test_the_proxy_is_named_by_x509_user_proxy(tmp_path: Path) -> None:
    spec = JobSpec.from_claim({"cmd": "x", "x509_proxy": "/home/u/x509up_u1000"})
    env = job_environment(spec, "/sb", {"X509_USER_PROXY": "/pilot/own"})
    assert env["X509_USER_PROXY"] == "/sb/x509up_u1000"
    assert "X509_USER_PROXY" not in job_environment(JobSpec.from_claim({"cmd": "x"}), "/sb", {})


def test_the_input_file_is_the_jobs_stdin(tmp_path: Path) -> None:
    sb = tmp_path / "sb"
    sb.mkdir()
    (sb / "in.txt").write_text("hello\n")
    spec = JobSpec.from_claim(
        {"cmd": "/bin/sh", "args": ["-c", "read l; echo got $l"], "in": "/s/in.txt", "out": "/s/o"}
    )
    assert spec.stdin == "in.txt"
    assert JobProcess(spec, str(sb), job_environment(spec, str(sb), {})).run() == 0
    assert (sb / "o").read_text() == "got hello\n"
    (sb / "in.txt").unlink()
    (sb / "in.txt").symlink_to("/etc/hostname")  # never followed
    with pytest.raises(OSError):
        JobProcess(spec, str(sb), job_environment(spec, str(sb), {})).run()


def test_inputs_recreate_subdirectories_and_refuse_clashes(tmp_path: Path) -> None:
    runner = ClaimRunner(
        {"claim_id": "c"},
        JobSpec.from_claim({"cmd": "x"}),
        None,  # type: ignore[arg-type]  # no pool: only the sandbox layout is tried
        work_dir=str(tmp_path),
        job_env={},
    )
    os.makedirs(runner.sandbox)
    dest = runner._input_path("d/sub/f.txt")
    assert dest == os.path.join(runner.sandbox, "d", "sub", "f.txt")
    assert os.path.isdir(os.path.join(runner.sandbox, "d", "sub"))
    Path(runner.sandbox, "file").write_text("x")
    # the job's own doing: the pool holds it (InputError), the node is not to blame
    with pytest.raises(InputError, match="already a file") as caught:
        runner._input_path("file/inner")
    assert caught.value.subcode == errno.ENOTDIR
    with pytest.raises(InputError, match="already a directory"):
        runner._input_path("d/sub")
    os.symlink("/etc", os.path.join(runner.sandbox, "ln"))
    with pytest.raises(InputError, match="already a file"):
        runner._input_path("ln/passwd")


# ------------------------------------------------------------- pilot: plugins


class _Files(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path.startswith("/data/"):
            body = b"x" * int(self.path.rsplit("/", 1)[-1].split(".")[0])
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif self.path == "/hop":
            self.send_response(302)
            self.send_header("Location", "ftp://127.0.0.1/etc/passwd")
            self.end_headers()
        else:
            self.send_error(404)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def web() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Files)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_http_inputs_land_under_the_urls_last_name(tmp_path: Path, web: str) -> None:
    plugins = Plugins({"http": fetch_http}, Bounds(max_bytes=100))
    assert plugins.methods() == "http"
    assert plugins.fetch(f"{web}/data/42.bin?sig=secret", str(tmp_path)) == "42.bin"
    assert (tmp_path / "42.bin").read_bytes() == b"x" * 42


@pytest.mark.parametrize(
    ("path", "code", "said"),
    [
        ("/missing.txt", errno.EIO, "HTTP 404"),
        ("/data/101.bin", errno.EFBIG, "more than"),
        ("/hop", errno.EIO, "redirect to another scheme"),
        ("/", 0, "names no file"),
    ],
)
def test_failed_http_inputs_say_why_and_leave_nothing(
    tmp_path: Path, web: str, path: str, code: int, said: str
) -> None:
    plugins = Plugins({"http": fetch_http}, Bounds(max_bytes=100))
    with pytest.raises(TransferError, match=said) as caught:
        plugins.fetch(f"{web}{path}", str(tmp_path))
    assert caught.value.subcode == code
    assert list(tmp_path.iterdir()) == []


def test_unknown_schemes_and_secrets_in_urls(tmp_path: Path) -> None:
    with pytest.raises(TransferError, match="no transfer plugin for s3://") as caught:
        Plugins({}).fetch("s3://bucket/key", str(tmp_path))
    assert caught.value.subcode == errno.ENOTSUP
    assert redact("https://u:pw@h:8443/p/f.txt?token=abc#x") == "https://h:8443/p/f.txt"
    assert url_file_name("https://h/a/b%20c.txt?x=1") == "b c.txt"
    with pytest.raises(TransferError):
        url_file_name("https://h/a/..")


def test_an_entry_adds_executable_plugins(tmp_path: Path) -> None:
    plugin_dir = tmp_path / "plugins"
    plugin_dir.mkdir()
    plugin = plugin_dir / "echo_plugin"
    plugin.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = -classad ]; then echo \'SupportedMethods = "echo,Bad Name"\'; exit 0; fi\n'
        'case "$1" in *fail*) echo nope >&2; exit 3;; esac\n'
        'printf %s "$1" > "$2"\n'
    )
    plugin.chmod(0o755)
    (plugin_dir / "not_executable").write_text("x")
    plugins = plugins_for({"GLIDEIN_TRANSFER_PLUGIN_DIR": str(plugin_dir)})
    assert plugins.methods() == "echo,http,https"
    sb = tmp_path / "sb"
    sb.mkdir()
    assert plugins.fetch("echo://host/dir/f.txt", str(sb)) == "f.txt"
    assert (sb / "f.txt").read_text() == "echo://host/dir/f.txt"
    with pytest.raises(TransferError, match="exited 3: nope"):
        plugins.fetch("echo://host/fail.txt", str(sb))
    assert plugins_for({}).methods() == "http,https"


MULTI_PLUGIN = """#!/usr/bin/env python3
import re, sys
if sys.argv[1:] == ["-classad"]:
    print('MultipleFileSupport = true\\nSupportedMethods = "multi"')
    sys.exit(0)
assert sys.argv[1] == "-infile" and sys.argv[3] == "-outfile", sys.argv
text = open(sys.argv[2]).read()
url = re.search(r'Url = "((?:[^"\\\\]|\\\\.)*)"', text).group(1).replace('\\\\"', '"')
dest = re.search(r'LocalFileName = "([^"]*)"', text).group(1)
with open(sys.argv[4], "w") as out:
    if "fail" in url:
        out.write('[ TransferSuccess = false; TransferError = "no such object" ]\\n')
    else:
        open(dest, "w").write(url)
        out.write("[ TransferSuccess = true ]\\n")
"""


def test_multi_file_plugins_get_the_url_in_a_file_not_on_their_command_line(
    tmp_path: Path,
) -> None:
    plugin_dir = tmp_path / "plugins"
    plugin_dir.mkdir()
    (plugin_dir / "multi").write_text(MULTI_PLUGIN)
    (plugin_dir / "multi").chmod(0o755)
    plugins = plugins_for({"GLIDEIN_TRANSFER_PLUGIN_DIR": str(plugin_dir)})
    assert plugins.methods() == "http,https,multi"
    url = 'multi://h/obj/f.dat?sig="secret"'
    assert plugins.fetch(url, str(tmp_path)) == "f.dat"
    assert (tmp_path / "f.dat").read_text() == url
    with pytest.raises(TransferError, match="plugin multi: no such object") as caught:
        plugins.fetch("multi://h/fail.dat?sig=secret", str(tmp_path))
    assert "secret" not in str(caught.value)
    assert not (tmp_path / "fail.dat").exists()


# ------------------------------------------------------------------ the pool


def _part(**attrs: str) -> dict[str, Any]:
    text = "[ " + "".join(f"{k} = {v}; " for k, v in attrs.items()) + "]"
    return _ad_part(classads.parse_ad(text))


@pytest.mark.parametrize(
    ("attrs", "transfer_output", "transfer"),
    [
        ({}, None, {}),
        ({"TransferOutput": '""'}, [], {}),
        ({"TransferOutput": '"a, b/c"'}, ["a", "b/c"], {}),
        (
            {
                "TransferInput": '"/s/in.txt,https://h/x.dat,/s/d/,http://h/y"',
                "x509userproxy": '"/tmp/x509up_u1"',
                "TransferOut": "false",
                "In": '"/s/stdin.txt"',
                "TransferErr": "true",
                "WhenToTransferOutput": '"ON_SUCCESS"',
                "PreserveRelativePaths": "true",
            },
            None,
            {
                "input_urls": ["https://h/x.dat", "http://h/y"],
                "x509_proxy": "x509up_u1",
                "in": "stdin.txt",
                "transfer_out": False,
                "when_to_transfer_output": "ON_SUCCESS",
                "preserve_relative_paths": True,
            },
        ),
        ({"WhenToTransferOutput": '"ON_EXIT"', "In": '"/dev/null"'}, None, {}),
        ({"In": '"/node/file"', "TransferIn": "false"}, None, {}),
    ],
)
def test_the_pool_tells_the_pilot_what_to_transfer(
    attrs: dict[str, str], transfer_output: list[str] | None, transfer: dict[str, Any]
) -> None:
    part = _part(Cmd='"x"', **attrs)
    assert part["transfer_output"] == transfer_output
    assert part["transfer"] == transfer


@pytest.mark.parametrize(
    ("completion", "state", "code", "subcode", "reason"),
    [
        (Completion("c", 0), None, None, None, None),
        (
            Completion("c", 0, missing_outputs=["res/x.dat", "y"]),
            JobState.HELD,
            HOLD_TRANSFER_OUTPUT,
            2,
            "did not produce 'res/x.dat', 'y'",
        ),
        (
            Completion("c", 0, input_error={"reason": "http://h/x: HTTP 404", "subcode": 5}),
            JobState.HELD,
            HOLD_TRANSFER_INPUT,
            5,
            "Transfer input files failure: http://h/x: HTTP 404",
        ),
        (
            Completion("c", 0, input_error={"reason": "r", "subcode": 0}),
            JobState.HELD,
            HOLD_TRANSFER_INPUT,
            None,
            "r",
        ),
    ],
)
def test_transfer_failures_hold_as_htcondor(
    completion: Completion,
    state: JobState | None,
    code: int | None,
    subcode: int | None,
    reason: str | None,
) -> None:
    action = transfer_action(completion)
    if state is None:
        assert action is None
        return
    assert action is not None
    assert (action.state, action.code, action.subcode) == (state, code, subcode)
    assert reason is not None and reason in action.reason


# -------------------------------------------------------- submit side: fetch


@pytest.mark.parametrize(
    ("text", "remaps"),
    [
        ("a = b", {"a": "b"}),
        ("a=b; c = d/e ;", {"a": "b", "c": "d/e"}),
        (r"x\;y = z\=w", {"x;y": "z=w"}),
        (" ; = b; a =", {}),
    ],
)
def test_remaps_parse_as_htcondor_writes_them(text: str, remaps: dict[str, str]) -> None:
    assert parse_remaps(text) == remaps


WHERE = Placement(
    Path("/home/u/run"),
    "/home/u/run/logs/job.out",
    "/home/u/elsewhere/job.err",
    {"r.txt": "renamed/r2.txt", "abs.txt": "/data/abs.txt", "res": "kept", "bad": "../../x"},
)


@pytest.mark.parametrize(
    ("name", "where"),
    [
        ("job.out", "/home/u/run/logs/job.out"),
        ("job.err", "/home/u/elsewhere/job.err"),
        ("plain.txt", "/home/u/run/plain.txt"),
        ("sub/dir/f.txt", "/home/u/run/sub/dir/f.txt"),
        ("r.txt", "/home/u/run/renamed/r2.txt"),
        ("abs.txt", "/data/abs.txt"),
        ("res/deep/b.txt", "/home/u/run/kept/deep/b.txt"),
        ("bad", None),
        ("../etc/passwd", None),
        ("/etc/passwd", None),
        ("a/../../b", None),
    ],
)
def test_outputs_land_where_the_ad_says(name: str, where: str | None) -> None:
    if where is None:
        with pytest.raises(ValueError):
            WHERE.landing(name)
    else:
        assert WHERE.landing(name) == Path(where)


def test_placement_reads_the_ad() -> None:
    ad = (
        '[ Iwd = "/w"; Out = "/w/o.txt"; Err = "/dev/null"; '
        'TransferOutputRemaps = "a = b/c; d = /e"; ]'
    )
    assert Placement.of_ad(ad) == Placement(
        Path("/w"), "/w/o.txt", "/dev/null", {"a": "b/c", "d": "/e"}
    )
    assert Placement.of_ad(ad).landing("null") == Path("/w/null")
    with pytest.raises(ClientError, match="Iwd"):
        Placement.of_ad('[ Out = "o" ]')


def test_directory_inputs_travel_as_their_files(tmp_path: Path) -> None:
    d = tmp_path / "data"
    (d / "sub" / "empty").mkdir(parents=True)
    (d / "top.txt").write_text("t")
    (d / "sub" / "in.txt").write_text("i")
    (d / "tolink").symlink_to(d / "top.txt")
    (d / "loop").symlink_to(d)
    (d / "dangling").symlink_to(tmp_path / "nowhere")
    names = [n for n, _ in directory_files(d, False)]
    assert names == ["data/tolink", "data/top.txt", "data/sub/in.txt"]
    assert [n for n, _ in directory_files(d, True)] == ["tolink", "top.txt", "sub/in.txt"]
    assert directory_files(d / "top.txt", False) == [("top.txt", d / "top.txt")]
    listed, contents = _listed_inputs('"/a/b/,/a/c,https://h/x/"')
    assert (listed, contents) == ({Path("/a/b"): 1, Path("/a/c"): 1}, {Path("/a/b")})


def test_a_file_cannot_be_where_another_input_needs_a_directory() -> None:
    check_layout(["a", "a", "d/a", "d/b/c", "job.sh"])
    with pytest.raises(ClientError, match="'d/b' is a file, but 'd/b/c' needs a directory"):
        check_layout(["d/b/c", "d/b"], "job.sub")


def test_preserved_inputs_keep_their_path_below_iwd() -> None:
    iwd = Path("/home/u/run")
    assert _under(iwd / "a" / "b" / "in.txt", iwd) == "a/b/"
    assert _under(iwd / "in.txt", iwd) == ""
    assert _under(Path("/elsewhere/in.txt"), iwd) == ""
    assert _under(iwd / "a" / "in.txt", None) == ""


def test_directory_inputs_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import glidewms.client as client

    d = tmp_path / "many"
    d.mkdir()
    for i in range(4):
        (d / f"f{i}").write_text("x")
    monkeypatch.setattr(client, "MAX_DIRECTORY_FILES", 3)
    with pytest.raises(ClientError, match="more than 3 files"):
        directory_files(d, False, "job.sub")
