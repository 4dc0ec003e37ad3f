"""Command-line behaviour that needs no running service."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from glidewms.cli.main import app
from glidewms.protocol import API_MAJOR, API_MINOR, API_VERSION, VERSION_HEADER

runner = CliRunner()


def test_bad_entries_file_is_refused_before_anything_starts(tmp_path: Path):
    bad = tmp_path / "entries.yaml"
    bad.write_text("- name: big\n  site: X\n  cpus: many\n")
    result = runner.invoke(
        app, ["demo", "--entries", str(bad), "--state-dir", str(tmp_path / "demo")]
    )
    assert result.exit_code == 2
    assert "entries.yaml" in result.output and "[0].cpus" in result.output
    assert not (tmp_path / "demo").exists()


def test_demo_refuses_to_wipe_a_directory_it_did_not_make(tmp_path: Path):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    result = runner.invoke(app, ["demo", "--state-dir", str(precious)])
    assert result.exit_code == 2
    assert (precious / "thesis.tex").read_text() == "years of work"


def test_user_commands_explain_how_to_find_the_pool(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for var in ("GLIDEWMS_POOL_URL", "GLIDEWMS_TOKEN_FILE", "GLIDEWMS_STATE"):
        monkeypatch.delenv(var, raising=False)
    result = runner.invoke(app, ["q"])
    assert result.exit_code == 1
    assert "glidewms up" in result.output and "GLIDEWMS_POOL_URL" in result.output


def test_token_is_written_to_a_private_file_never_printed(tmp_path: Path):
    assert runner.invoke(app, ["keys", str(tmp_path / "keys")]).exit_code == 0
    out = tmp_path / "t.token"
    result = runner.invoke(
        app,
        [
            "token",
            "--subject",
            "alice",
            "--scope",
            "user",
            "--out",
            str(out),
            "--key",
            str(tmp_path / "keys" / "issuer.key"),
        ],
    )
    assert result.exit_code == 0, result.output
    token = out.read_text().strip()
    assert token and token not in result.output
    assert out.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize(
    "command",
    [
        ["q", "1.x"],
        ["history", "7", "x"],
        ["rm", "1.0", "1."],
        ["hold", ".3"],
        ["release", "1.2.3"],
        ["fetch", "1.x"],
        ["qedit", "1.x", "RequestMemory", "2048"],
    ],
)
def test_a_malformed_job_id_is_a_one_line_usage_error(command: list[str]) -> None:
    """Checked before the pool is looked for: exit 2 (usage), not a traceback."""
    result = runner.invoke(
        app, [*command, "--pool", "http://127.0.0.1:9", "--token-file", "/nonexistent"]
    )
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: not a job id"), result.output


class _FakePool(BaseHTTPRequestHandler):
    """Answers every GET with an empty job list, naming `version` as its protocol."""

    version = API_VERSION

    def do_GET(self) -> None:
        body = b"[]"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header(VERSION_HEADER, self.version)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def fake_pool(tmp_path: Path) -> Iterator[tuple[list[str], type[_FakePool]]]:
    """CLI options pointing at a stand-in pool (a real HTTP server on loopback)
    and its handler class, whose `version` a test sets."""
    handler = type("Pool", (_FakePool,), {})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    token = tmp_path / "user.token"
    token.write_text("not-checked-by-the-stand-in\n")
    try:
        yield (
            ["--pool", f"http://127.0.0.1:{server.server_port}", "--token-file", str(token)],
            handler,
        )
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_a_pool_of_another_major_version_is_a_clear_error(fake_pool) -> None:
    options, handler = fake_pool
    handler.version = f"{API_MAJOR + 1}.0"
    result = runner.invoke(app, ["q", *options])
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert f"speaks protocol '{API_MAJOR + 1}.0'" in result.output
    assert "Traceback" not in result.output


def test_a_newer_minor_version_of_the_pool_is_fine(fake_pool) -> None:
    options, handler = fake_pool
    handler.version = f"{API_MAJOR}.{API_MINOR + 5}"
    result = runner.invoke(app, ["q", *options])
    assert result.exit_code == 0, result.output
    assert "0 jobs" in result.output
