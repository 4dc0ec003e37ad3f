"""glidein_startup.sh: options, verified stage download, glidein_config, agent start.

The factory side is `StageServer`, an in-test stand-in for the factory's stage
and report endpoints (docs/protocol.md); the real factory is tested elsewhere.
Each download test runs twice: with curl, and with curl absent from PATH so
that the python urllib fallback is used.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from collections import defaultdict
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

import glidewms.glidein.agent as agent_pkg

SCRIPT = Path(agent_pkg.__file__).parents[1] / "bootstrap" / "glidein_startup.sh"
BASH = shutil.which("bash") or "/bin/bash"
TOKEN = "pilot-token-s3cr3t-for-bootstrap-tests"
WAIT = 60

STUB_MAIN = b'''"""Stub agent: records what the bootstrap gave it; exits, or waits for SIGTERM."""
import json, os, signal, sys, urllib.request
files = sorted(os.path.join(d, f)[2:] for d, _, fs in os.walk(".") for f in fs)
info = {"argv": sys.argv[1:], "cwd": os.getcwd(), "files": files,
        "config": open("glidein_config").read()}
with open(os.environ["STUB_MARKER"], "w") as out:
    json.dump(info, out)
if os.environ.get("STUB_MODE") == "wait_signal":
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    opener.open(os.environ["STUB_READY_URL"], data=b"{}", timeout=10)
    signal.sigwait({signal.SIGTERM})
    sys.exit(99)
sys.exit(int(os.environ.get("STUB_EXIT", "0")))
'''

STUB_STAGE = {
    "agent/__init__.py": b"",
    "agent/__main__.py": STUB_MAIN,
    "agent/data/nested.txt": b"a file in a subdirectory\n",
}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def manifest_of(files: dict[str, bytes]) -> bytes:
    return "".join(f"{sha(data)}  {path}\n" for path, data in files.items()).encode()


class StageServer:
    """A protocol stand-in for the factory's stage and final-report endpoints.

    Serves `manifest` and `files` (which a test may tamper with after the
    manifest was computed), records every request and whether it carried the
    pilot token, and keeps the reports. `POST /api/v1/pilots` answers 403, so
    that a real agent started by the bootstrap ends at once with reason error.
    `/test/ready` (no token) lets a stub agent tell the test it is waiting.
    The real factory is tested end-to-end elsewhere.
    """

    def __init__(
        self, files: dict[str, bytes], manifest: bytes | None = None, port: int = 0
    ) -> None:
        self.manifest = manifest_of(files) if manifest is None else manifest
        self.files = dict(files)
        self.requests: list[tuple[str, str, bool]] = []
        self.reports: list[dict[str, Any]] = []
        self.events: defaultdict[str, threading.Event] = defaultdict(threading.Event)
        stage = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                stage.handle(self, "GET")

            def do_POST(self) -> None:
                stage.handle(self, "POST")

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    @staticmethod
    def send(h: BaseHTTPRequestHandler, status: int, body: bytes) -> None:
        h.send_response(status)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    def handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        raw = h.rfile.read(int(h.headers.get("Content-Length") or 0))
        if h.path == "/test/ready":
            self.events["ready"].set()
            return self.send(h, 200, b"{}")
        authorized = h.headers.get("Authorization") == f"Bearer {TOKEN}"
        self.requests.append((method, h.path, authorized))
        if not authorized:
            return self.send(h, 401, b'{"detail": "bad token"}')
        if h.path == "/api/v1/stage/manifest":
            return self.send(h, 200, self.manifest)
        if h.path.startswith("/api/v1/stage/files/"):
            data = self.files.get(h.path[len("/api/v1/stage/files/") :])
            return self.send(h, 404, b"{}") if data is None else self.send(h, 200, data)
        if re.fullmatch(r"/api/v1/glideins/[^/]+/report", h.path) and method == "POST":
            self.reports.append(json.loads(raw))
            self.events["report"].set()
            return self.send(h, 200, b"{}")
        if h.path == "/api/v1/pilots":
            return self.send(h, 403, b'{"detail": "not a pilot of this pool"}')
        return self.send(h, 404, b"{}")


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    path.chmod(0o600)
    return path


def wrapper(path: Path, target: str, log: Path) -> str:
    """A stand-in command that logs its argv, then runs the real one."""
    path.write_text(f'#!/bin/sh\nprintf "%s\\n" "$0" "$@" >> "{log}"\nexec "{target}" "$@"\n')
    path.chmod(0o755)
    return str(path)


@pytest.fixture(params=["curl", "python"])
def downloader(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    """Env for the bootstrap: curl (wrapped) on PATH, or a PATH without curl.

    Both curl and python are wrapped to log their argv to `argv.log`, so the
    tests can check that the token never appears on a command line.
    """
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "argv.log"
    python = wrapper(tmp_path / "python-wrapper", sys.executable, log)
    if request.param == "curl":
        real = shutil.which("curl")
        if real is None:
            if os.environ.get("CI") == "true":
                pytest.fail("curl is required when CI=true (.ci/run installs it)")
            pytest.skip("curl is not installed")
        wrapper(bindir / "curl", real, log)
        path = f"{bindir}:{os.environ['PATH']}"
    else:
        for tool in ("mktemp", "sha256sum", "rm", "mkdir", "hostname"):
            found = shutil.which(tool)
            if found:
                (bindir / tool).symlink_to(found)
        path = str(bindir)
    return {"PATH": path, "GLIDEIN_PYTHON": python, "ARGV_LOG": str(log), "MODE": request.param}


def bootstrap(
    stage: StageServer,
    tmp_path: Path,
    token_file: Path,
    env: dict[str, str],
    manifest_sha: str | None = None,
    extra: tuple[str, ...] = (),
) -> subprocess.Popen[str]:
    scratch = tmp_path / "scratch"
    scratch.mkdir(exist_ok=True)
    argv = [
        BASH,
        str(SCRIPT),
        "--factory",
        stage.url,
        "--manifest-sha256",
        manifest_sha or sha(stage.manifest),
        "--pool",
        stage.url,
        "--glidein-id",
        "g-42",
        "--entry",
        "entry1",
        "--site",
        "SITE1",
        "--work-dir",
        str(scratch),
        "--cpus",
        "2",
        "--idle-timeout",
        "5",
        "--attr",
        "HAS_X=true",
        "--attr",
        "Label=two words",
        "--heartbeat",
        "30",
        *extra,
    ]
    full_env = {
        "PATH": env["PATH"],
        "GLIDEIN_PYTHON": env["GLIDEIN_PYTHON"],
        "GLIDEIN_TOKEN_FILE": str(token_file),
        "STUB_MARKER": str(tmp_path / "marker"),
        "STUB_EXIT": "7",
        "STUB_READY_URL": f"{stage.url}/test/ready",
        **env,
    }
    return subprocess.Popen(argv, env=full_env, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen[str]) -> tuple[int, str]:
    try:
        _, stderr = proc.communicate(timeout=WAIT)
    finally:
        proc.kill()
    return proc.returncode, stderr


@pytest.fixture
def stub_stage() -> Iterator[StageServer]:
    stage = StageServer(STUB_STAGE)
    yield stage
    stage.close()


def assert_token_kept_off_argv(env: dict[str, str], stage: StageServer) -> None:
    argv_log = Path(env["ARGV_LOG"]).read_text() if Path(env["ARGV_LOG"]).exists() else ""
    assert TOKEN not in argv_log
    assert all(authorized for _, _, authorized in stage.requests), stage.requests
    if env["MODE"] == "curl":
        assert "curl" in argv_log  # curl really was the downloader
    else:
        assert "curl" not in argv_log


def test_good_stage_starts_the_agent_with_its_config(
    stub_stage: StageServer, tmp_path: Path, token_file: Path, downloader: dict[str, str]
) -> None:
    rc, stderr = finish(bootstrap(stub_stage, tmp_path, token_file, downloader))
    assert rc == 7, stderr  # the agent's exit code is the pilot's
    info = json.loads((tmp_path / "marker").read_text())
    assert info["argv"] == ["--config", "glidein_config"]
    assert Path(info["cwd"]).parent == tmp_path / "scratch"
    assert Path(info["cwd"]).name.startswith("glidein_")
    assert "agent/data/nested.txt" in info["files"]
    assert not any("auth" in f for f in info["files"])  # the header file is gone
    config = dict(line.split(" ", 1) for line in info["config"].splitlines())
    assert config["GLIDEIN_Factory_URL"] == config["GLIDEIN_Pool_URL"] == stub_stage.url
    assert (config["GLIDEIN_Id"], config["GLIDEIN_Entry_Name"], config["GLIDEIN_Site"]) == (
        "g-42",
        "entry1",
        "SITE1",
    )
    assert (config["GLIDEIN_Cpus"], config["GLIDEIN_Memory"]) == ("2", "auto")
    assert (config["GLIDEIN_Idle_Timeout"], config["GLIDEIN_Lifetime"]) == ("5", "86400")
    assert config["GLIDEIN_Heartbeat"] == "30"
    assert (config["GLIDEIN_Work_Dir"], config["GLIDEIN_Token_File"]) == (
        info["cwd"],
        str(token_file),
    )
    assert (config["GLIDEIN_Attrs"], config["HAS_X"], config["Label"]) == (
        "HAS_X,Label",
        "true",
        "two words",
    )
    assert not Path(info["cwd"]).exists()  # cleaned up on exit
    assert stub_stage.reports == []
    assert_token_kept_off_argv(downloader, stub_stage)
    assert TOKEN not in stderr


def test_tampered_file_is_refused_and_reported(
    tmp_path: Path, token_file: Path, downloader: dict[str, str]
) -> None:
    stage = StageServer(STUB_STAGE)
    stage.files["agent/__main__.py"] = STUB_MAIN + b"# changed after the manifest was made\n"
    try:
        rc, stderr = finish(bootstrap(stage, tmp_path, token_file, downloader))
    finally:
        stage.close()
    assert rc == 3, stderr
    assert not (tmp_path / "marker").exists()  # the agent never ran
    (report,) = stage.reports
    assert (report["exit_reason"], report["exit_code"]) == ("corruption", 3)
    assert "agent/__main__.py" in report["detail"]
    assert list((tmp_path / "scratch").iterdir()) == []
    assert_token_kept_off_argv(downloader, stage)


def test_wrong_manifest_hash_is_refused_before_any_file(
    stub_stage: StageServer, tmp_path: Path, token_file: Path, downloader: dict[str, str]
) -> None:
    proc = bootstrap(stub_stage, tmp_path, token_file, downloader, manifest_sha="ab" * 32)
    rc, stderr = finish(proc)
    assert rc == 3, stderr
    assert [path for _, path, _ in stub_stage.requests if "/stage/" in path] == [
        "/api/v1/stage/manifest"
    ]
    assert stub_stage.reports[0]["exit_reason"] == "corruption"
    assert "manifest sha256" in stub_stage.reports[0]["detail"]
    assert not (tmp_path / "marker").exists()


@pytest.mark.parametrize("path", ["../escape.py", "/etc/evil", "agent/../../escape"])
def test_manifest_paths_leaving_the_work_dir_are_refused(
    tmp_path: Path, token_file: Path, path: str
) -> None:
    stage = StageServer({**STUB_STAGE, path: b"x"})
    try:
        env = {"PATH": os.environ["PATH"], "GLIDEIN_PYTHON": sys.executable}
        rc, stderr = finish(bootstrap(stage, tmp_path, token_file, env))
    finally:
        stage.close()
    assert rc == 3, stderr
    assert "unsafe path" in stage.reports[0]["detail"]
    assert not (tmp_path / "marker").exists()


@pytest.mark.parametrize(
    ("drop", "add", "message"),
    [
        ("--pool", (), "--pool is required"),
        ("--glidein-id", (), "--glidein-id is required"),
        ("", ("--bogus", "1"), "unknown option --bogus"),
        ("", ("--attr", "no-equals"), "bad --attr"),
        ("", ("--attr", "GLIDEIN_Pool_URL=http://evil"), "cannot set GLIDEIN_Pool_URL"),
        ("", ("--lifetime", "1h"), "number of seconds"),
        ("", ("--cpus",), "--cpus needs a value"),
    ],
)
def test_bad_options_exit_2_with_a_message(
    tmp_path: Path, token_file: Path, drop: str, add: tuple[str, ...], message: str
) -> None:
    argv = [
        "--factory",
        "http://f",
        "--manifest-sha256",
        "0" * 64,
        "--pool",
        "http://p",
        "--glidein-id",
        "g",
        "--entry",
        "e",
        "--site",
        "s",
    ]
    if drop:
        index = argv.index(drop)
        del argv[index : index + 2]
    env = {
        "PATH": os.environ["PATH"],
        "GLIDEIN_TOKEN_FILE": str(token_file),
        "TMPDIR": str(tmp_path),
    }
    proc = subprocess.run(
        [BASH, str(SCRIPT), *argv, *add], env=env, capture_output=True, text=True, timeout=WAIT
    )
    assert proc.returncode == 2
    assert message in proc.stderr
    assert list(tmp_path.glob("glidein_*")) == []  # refused before making a work dir


def test_a_missing_token_file_is_a_usage_error(tmp_path: Path) -> None:
    argv = [
        "--factory",
        "http://f",
        "--manifest-sha256",
        "0" * 64,
        "--pool",
        "http://p",
        "--glidein-id",
        "g",
        "--entry",
        "e",
        "--site",
        "s",
    ]
    proc = subprocess.run(
        [BASH, str(SCRIPT), *argv],
        capture_output=True,
        text=True,
        env={"PATH": os.environ["PATH"]},
        timeout=WAIT,
    )
    assert proc.returncode == 2 and "GLIDEIN_TOKEN_FILE" in proc.stderr


def test_the_token_is_never_written_on_a_command_line_in_the_script() -> None:
    text = SCRIPT.read_text()
    for line in text.splitlines():
        if "Authorization" in line and not line.lstrip().startswith("#"):
            # Only two places may name the header: printf into the 0600 header file
            # (a builtin: no argv) and python building it from the token file.
            assert (
                "printf 'Authorization: Bearer %s\\n'" in line and '> "$hdr"' in line
            ) or '{"Authorization": "Bearer " + f.readline().strip()' in line, line
    assert re.search(r"-H @\"\$hdr\"", text)
    # the token variable is expanded once: as printf's argument (a builtin, not an exec)
    assert len(re.findall(r"\$\{?token\b", text)) == 1


def test_sigterm_is_forwarded_to_the_agent_and_the_work_dir_removed(
    stub_stage: StageServer, tmp_path: Path, token_file: Path
) -> None:
    env = {"PATH": os.environ["PATH"], "GLIDEIN_PYTHON": sys.executable, "STUB_MODE": "wait_signal"}
    proc = bootstrap(stub_stage, tmp_path, token_file, env)
    try:
        assert stub_stage.events["ready"].wait(WAIT), "the stub agent never started"
        proc.send_signal(signal.SIGTERM)
    finally:
        rc, stderr = finish(proc)
    assert rc == 99, stderr  # what the agent returned after its drain
    assert "got SIGTERM" in stderr
    info = json.loads((tmp_path / "marker").read_text())
    assert not Path(info["cwd"]).exists()


def test_the_real_agent_accepts_the_bootstrap_config(tmp_path: Path, token_file: Path) -> None:
    """The shipped agent, staged and started by the bootstrap, reads its glidein_config.

    The stand-in refuses registration (403), so the agent ends with reason
    error and reports it: that proves config, token and URLs all made it.
    """
    agent_files = {
        f"agent/{p.relative_to(Path(agent_pkg.__file__).parent)}": p.read_bytes()
        for p in sorted(Path(agent_pkg.__file__).parent.rglob("*.py"))
    }
    stage = StageServer(agent_files)
    try:
        env = {"PATH": os.environ["PATH"], "GLIDEIN_PYTHON": sys.executable}
        rc, stderr = finish(bootstrap(stage, tmp_path, token_file, env))
    finally:
        stage.close()
    assert rc == 1, stderr
    (report,) = stage.reports
    assert report["exit_reason"] == "error" and "registration failed" in report["detail"]
    assert (report["cpus"], report["jobs_run"]) == (2, 0)
    assert TOKEN not in stderr


# -- manifest signature (Ed25519, verified with openssl when the node has it) ---------


def signed_stage(key: Any) -> StageServer:
    stage = StageServer(STUB_STAGE)
    stage.files["manifest.sig"] = key.sign(stage.manifest)
    return stage


def key_b64(key: Any) -> str:
    import base64

    from cryptography.hazmat.primitives import serialization

    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(der).decode()


def test_a_signed_manifest_is_verified_or_said_unchecked_without_openssl(
    tmp_path: Path, token_file: Path, downloader: dict[str, str]
) -> None:
    """The python-downloader PATH has no openssl: the sha256 alone is checked, and said so."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    stage = signed_stage(key)
    try:
        rc, stderr = finish(
            bootstrap(
                stage,
                tmp_path,
                token_file,
                downloader,
                extra=("--manifest-key", key_b64(key), "--set", "GLIDEIN_Container_Use=REQUIRED"),
            )
        )
    finally:
        stage.close()
    assert rc == 7, stderr
    config = dict(
        line.split(" ", 1)
        for line in json.loads((tmp_path / "marker").read_text())["config"].splitlines()
    )
    has_openssl = downloader["MODE"] == "curl" and shutil.which("openssl") is not None
    assert config["GLIDEIN_Manifest_Signature"] == ("verified" if has_openssl else "unchecked")
    assert config["GLIDEIN_Container_Use"] == "REQUIRED"
    assert "GLIDEIN_Container_Use" not in config["GLIDEIN_Attrs"]  # set, not published
    assert ("no openssl" in stderr) is not has_openssl


@pytest.mark.parametrize("tamper", ["other_key", "changed_signature"])
def test_a_manifest_signature_that_does_not_verify_is_corruption(
    tmp_path: Path, token_file: Path, tamper: str
) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    if shutil.which("openssl") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("openssl is required when CI=true")
        pytest.skip("openssl is not installed")
    key = Ed25519PrivateKey.generate()
    stage = signed_stage(key)
    if tamper == "other_key":
        key = Ed25519PrivateKey.generate()
    else:
        sig = bytearray(stage.files["manifest.sig"])
        sig[0] ^= 1
        stage.files["manifest.sig"] = bytes(sig)
    try:
        env = {"PATH": os.environ["PATH"], "GLIDEIN_PYTHON": sys.executable}
        rc, stderr = finish(
            bootstrap(stage, tmp_path, token_file, env, extra=("--manifest-key", key_b64(key)))
        )
    finally:
        stage.close()
    assert rc == 3, stderr
    assert stage.reports[0]["exit_reason"] == "corruption"
    assert "signature does not verify" in stage.reports[0]["detail"]
    assert not (tmp_path / "marker").exists()
    assert not any("/stage/files/agent" in path for _, path, _ in stage.requests)


def test_the_factory_stage_is_signed_with_a_kept_key(tmp_path: Path) -> None:
    import base64
    import stat

    from cryptography.hazmat.primitives import serialization

    from glidewms.factory.stage import build_stage

    stage = build_stage(tmp_path)
    key_file = tmp_path / "keys" / "stage_signing.pem"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    public = serialization.load_der_public_key(base64.b64decode(stage.public_key_b64))
    manifest = stage.manifest_path.read_bytes()
    public.verify(stage.signature_path.read_bytes(), manifest)  # raises if it does not verify
    assert stage.file("manifest.sig") == stage.signature_path and stage.file("manifest") is None
    assert {
        "validation/scripts.list",
        "validation/cpus.py",
        "validation/gconfig.sh",
        "agent/validation.py",
    } <= set(stage.files)
    again = build_stage(tmp_path)
    assert again.public_key_b64 == stage.public_key_b64  # the key is kept, not regenerated
    if shutil.which("openssl"):  # the very command the bootstrap runs
        pem = tmp_path / "k.pem"
        pem.write_text(
            f"-----BEGIN PUBLIC KEY-----\n{stage.public_key_b64}\n-----END PUBLIC KEY-----\n"
        )
        check = subprocess.run(
            [
                "openssl",
                "pkeyutl",
                "-verify",
                "-pubin",
                "-inkey",
                str(pem),
                "-rawin",
                "-in",
                str(stage.manifest_path),
                "-sigfile",
                str(stage.signature_path),
            ],
            capture_output=True,
            text=True,
        )
        assert check.returncode == 0, check.stderr
