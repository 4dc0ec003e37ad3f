"""The frontend's (VO) stage: built and signed by `build_vo_stage`, fetched and checked
by the bootstrap like the factory's, its scripts run by the agent in the `group`
slot of the validation order, optionally inside a real bubblewrap container.

The factory and the frontend are `StageServer` (tests/unit/test_bootstrap.py)
and `VoServer` below, in-test stand-ins for their HTTP endpoints; the
bootstrap, the agent and bubblewrap are the real ones.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

import glidewms.glidein.agent as agent_pkg
from glidewms.factory.stage import Stage, build_vo_stage
from glidewms.glidein.agent import validation
from tests.unit.test_bootstrap import (
    STUB_STAGE,
    TOKEN,
    StageServer,
    bootstrap,
    finish,
)
from tests.unit.test_bootstrap import token_file as token_file  # the fixture

VO_CHECK = """#!/bin/bash
# a VO script: reads a factory value, publishes its own
source "$(dirname "$0")/lib.sh"
echo "VO_Checked yes-$(awk '$1 == "GLIDEIN_Site" {print $2}' "$1")" >> "$1"
printf '{"status": "ok", "detail": "%s", "slot_attrs": ["VO_Checked"]}' "$VO_LIB" \
  > "$GLIDEIN_RESULT_FILE"
"""
VO_LIB = 'VO_LIB="lib loaded"\n'
IN_CONTAINER = """import json, os, socket, sys
config = sys.argv[1]
with open(config, "a") as f:
    f.write("VO_Container_Host %s\\n" % socket.gethostname())
with open(os.environ["GLIDEIN_RESULT_FILE"], "w") as f:
    json.dump({"status": "ok", "slot_attrs": ["VO_Container_Host"],
               "detail": "pilot env leaked" if "STUB_MARKER" in os.environ else "clean"}, f)
"""


def make_source(root: Path, lines: str = "group check.sh\n") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "scripts.list").write_text(lines)
    (root / "check.sh").write_text(VO_CHECK)
    (root / "lib.sh").write_text(VO_LIB)
    (root / "in_container.py").write_text(IN_CONTAINER)
    return root


class VoServer:
    """A frontend serving a built VO stage at /vo (`Stage.file`), recording requests."""

    def __init__(self, stage: Stage) -> None:
        self.stage = stage
        self.requests: list[tuple[str, bool]] = []
        self.tamper: dict[str, bytes] = {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                server.requests.append(
                    (self.path, self.headers.get("Authorization") == f"Bearer {TOKEN}")
                )
                relative = self.path.removeprefix("/vo/files/")
                if self.path == "/vo/manifest":
                    body: bytes | None = server.stage.manifest_path.read_bytes()
                elif relative in server.tamper:
                    body = server.tamper[relative]
                else:
                    path = server.stage.file(relative) if relative != self.path else None
                    body = path.read_bytes() if path else None
                self.send_response(404 if body is None else 200)
                self.send_header("Content-Length", str(len(body or b"")))
                self.end_headers()
                self.wfile.write(body or b"")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/vo"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def vo(tmp_path: Path) -> Iterator[VoServer]:
    stage = build_vo_stage(
        make_source(tmp_path / "vo-src"), tmp_path / "vo-stage", tmp_path / "keys" / "vo.pem"
    )
    server = VoServer(stage)
    yield server
    server.close()


def vo_args(server: VoServer, key: str | None = None) -> tuple[str, ...]:
    return (
        "--vo-stage",
        server.url,
        "--vo-manifest-sha256",
        server.stage.manifest_sha256,
        "--vo-manifest-key",
        key or server.stage.public_key_b64,
    )


def need_openssl() -> None:
    if shutil.which("openssl") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("openssl is required when CI=true")
        pytest.skip("openssl is not installed")


# -- the helper that builds a VO stage ------------------------------------------------


def test_build_vo_stage_lists_and_signs_every_file(tmp_path: Path) -> None:
    stage = build_vo_stage(make_source(tmp_path / "src"), tmp_path / "out", tmp_path / "k.pem")
    assert set(stage.files) == {"scripts.list", "check.sh", "lib.sh", "in_container.py"}
    public = serialization.load_der_public_key(base64.b64decode(stage.public_key_b64))
    public.verify(stage.signature_path.read_bytes(), stage.manifest_path.read_bytes())
    assert stage.file("manifest.sig") == stage.signature_path
    assert stage.file("../k.pem") is None
    again = build_vo_stage(tmp_path / "src", tmp_path / "out", tmp_path / "k.pem")
    assert again.public_key_b64 == stage.public_key_b64  # one key per frontend, kept


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ("factory check.sh\n", "STAGE one of group"),
        ("group missing.sh\n", "missing.sh does not exist"),
        ("group check.sh sometimes\n", "unknown option"),
    ],
)
def test_build_vo_stage_refuses_a_bad_list_naming_the_file(
    tmp_path: Path, lines: str, message: str
) -> None:
    with pytest.raises(ValueError, match=message) as info:
        build_vo_stage(make_source(tmp_path / "src", lines), tmp_path / "out", tmp_path / "k")
    assert "scripts.list" in str(info.value)


# -- the bootstrap fetches and checks it -------------------------------------------------


def run_stub(
    tmp_path: Path, token_file: Path, vo: VoServer, key: str | None = None
) -> tuple[int, str, StageServer]:
    stage = StageServer(STUB_STAGE)
    try:
        env = {"PATH": os.environ["PATH"], "GLIDEIN_PYTHON": sys.executable}
        rc, stderr = finish(bootstrap(stage, tmp_path, token_file, env, extra=vo_args(vo, key)))
    finally:
        stage.close()
    return rc, stderr, stage


def test_the_vo_stage_is_fetched_verified_and_named_in_glidein_config(
    tmp_path: Path, token_file: Path, vo: VoServer
) -> None:
    need_openssl()
    rc, stderr, _ = run_stub(tmp_path, token_file, vo)
    assert rc == 7, stderr
    info = json.loads((tmp_path / "marker").read_text())
    assert {"vo/scripts.list", "vo/check.sh", "vo/lib.sh"} <= set(info["files"])
    config = dict(line.split(" ", 1) for line in info["config"].splitlines())
    assert config["GLIDEIN_VO_Scripts"] == "vo/scripts.list"
    assert config["GLIDEIN_VO_Manifest_Signature"] == "verified"
    assert ("/vo/files/manifest.sig", True) in vo.requests
    assert all(authorized for _, authorized in vo.requests)


@pytest.mark.parametrize("tamper", ["file", "key"])
def test_a_tampered_vo_stage_is_corruption_and_nothing_runs(
    tmp_path: Path, token_file: Path, vo: VoServer, tamper: str
) -> None:
    key = None
    if tamper == "file":
        vo.tamper["check.sh"] = VO_CHECK.encode() + b"rm -rf ~\n"
    else:
        need_openssl()
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        der = (
            Ed25519PrivateKey.generate()
            .public_key()
            .public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        key = base64.b64encode(der).decode()
    rc, stderr, factory = run_stub(tmp_path, token_file, vo, key)
    assert rc == 3, stderr
    assert not (tmp_path / "marker").exists()  # the agent never started
    (report,) = factory.reports
    assert report["exit_reason"] == "corruption"
    assert report["detail"].startswith("VO stage: ")
    assert ("check.sh" if tamper == "file" else "does not verify") in report["detail"]
    assert list((tmp_path / "scratch").iterdir()) == []


def test_vo_options_are_checked_before_anything_runs(tmp_path: Path, token_file: Path) -> None:
    stage = StageServer(STUB_STAGE)
    try:
        env = {"PATH": os.environ["PATH"], "GLIDEIN_PYTHON": sys.executable}
        rc, stderr = finish(
            bootstrap(
                stage, tmp_path, token_file, env, extra=("--vo-stage", "http://127.0.0.1:1/vo")
            )
        )
    finally:
        stage.close()
    assert rc == 2 and "--vo-stage needs --vo-manifest-sha256" in stderr
    assert stage.requests == []


def test_the_real_agent_runs_vo_scripts_in_the_group_slot(
    tmp_path: Path, token_file: Path, vo: VoServer
) -> None:
    """Bootstrap + real agent + factory validation stage + VO stage; registration is
    refused by the stand-in, so the report carries every validation result in order."""
    agent_dir = Path(agent_pkg.__file__).parent
    files = {
        f"agent/{p.relative_to(agent_dir)}": p.read_bytes() for p in sorted(agent_dir.rglob("*.py"))
    }
    files["validation/scripts.list"] = b"final last.sh\nentry first.sh\n"
    files["validation/first.sh"] = b"echo 'Entry_Done 1' >> \"$1\"\n"
    files["validation/last.sh"] = b"grep -q '^VO_Checked yes-SITE1' \"$1\"\n"
    stage = StageServer(files)
    try:
        env = {"PATH": os.environ["PATH"], "GLIDEIN_PYTHON": sys.executable}
        rc, stderr = finish(bootstrap(stage, tmp_path, token_file, env, extra=vo_args(vo)))
    finally:
        stage.close()
    assert rc == 1, stderr  # registration refused by the stand-in: validation passed
    (report,) = stage.reports
    assert [(r["stage"], r["name"], r["status"]) for r in report["validation"]] == [
        ("entry", "first", "ok"),
        ("group", "check", "ok"),
        ("final", "last", "ok"),
    ]
    assert report["validation"][1]["detail"] == "lib loaded"


# -- the agent's side: order, VO failures, scripts in a container ------------------------


def work_dir(tmp_path: Path, vo_lines: str, extra_config: str = "") -> Path:
    work = tmp_path / "work"
    (work / "validation").mkdir(parents=True)
    (work / "validation" / "scripts.list").write_text("factory f.sh\nfinal z.sh\n")
    for name in ("f.sh", "z.sh"):
        (work / "validation" / name).write_text("exit 0\n")
    make_source(work / "vo", vo_lines)
    (work / "glidein_config").write_text(
        f"GLIDEIN_Site S1\nGLIDEIN_VO_Scripts vo/scripts.list\n{extra_config}"
    )
    return work


def test_a_vo_list_naming_another_stage_is_a_config_failure(tmp_path: Path) -> None:
    work = work_dir(tmp_path, "factory check.sh\n")
    values = validation.read_values(str(work / "glidein_config"))
    with pytest.raises(validation.ConfigError, match=r"vo/scripts\.list:1.*STAGE one of group"):
        validation.discover(str(work), values)


def test_a_failing_vo_script_stops_validation_with_its_category(tmp_path: Path) -> None:
    work = work_dir(tmp_path, "group check.sh\ngroup bad.sh\n")
    (work / "vo" / "bad.sh").write_text(
        'echo \'{"status": "failed", "category": "VO_Config", "detail": "no sw"}\''
        ' > "$GLIDEIN_RESULT_FILE"\n'
    )
    values = validation.read_values(str(work / "glidein_config"))
    scripts = validation.discover(str(work), values)
    assert [(s.stage, s.name) for s in scripts] == [
        ("factory", "f"),
        ("group", "check"),
        ("group", "bad"),
        ("final", "z"),
    ]
    results = validation.run_all(scripts, str(work / "glidein_config"))
    assert [r.name for r in results] == ["f", "check", "bad"]  # z never ran
    assert validation.failure_summary(results) == "group/bad: VO_Config: no sw"


def test_a_vo_script_marked_container_runs_in_real_bubblewrap(tmp_path: Path) -> None:
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        if os.environ.get("CI") == "true":
            pytest.fail("bwrap is required when CI=true")
        pytest.skip("bwrap is not installed")
    work = work_dir(
        tmp_path,
        "group in_container.py container\n",
        f"GLIDEIN_Container_Runtime bwrap\nGLIDEIN_Container_Path {bwrap}\n",
    )
    config = str(work / "glidein_config")
    os.environ["STUB_MARKER"] = "pilot-only"  # must not reach the script
    try:
        results = validation.run_all(
            validation.discover(str(work), {**validation.read_values(config)}), config, fork=True
        )
    finally:
        del os.environ["STUB_MARKER"]
    assert [(r.name, r.status, r.detail) for r in results][1] == ("in_container", "ok", "clean"), (
        results
    )
    values = validation.read_values(config)
    assert values["VO_Container_Host"] == "glidein-job"  # bwrap's hostname: it ran inside
    assert validation.published(values, results)[0]["VO_Container_Host"] == "glidein-job"
    assert not list(work.glob(".vo_sandbox_*"))


def test_a_container_script_without_a_runtime_fails_instead_of_running_outside(
    tmp_path: Path,
) -> None:
    work = work_dir(tmp_path, "group in_container.py container\n")
    config = str(work / "glidein_config")
    results = validation.run_all(
        validation.discover(str(work), validation.read_values(config)), config
    )
    assert results[1].status == "failed"
    assert "no working container runtime" in results[1].detail
    assert "VO_Container_Host" not in validation.read_values(config)
