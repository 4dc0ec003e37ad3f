"""Command-line behaviour that needs no running service."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

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


def test_fetch_without_a_job_or_all_is_a_usage_error() -> None:
    result = runner.invoke(app, ["fetch", "--pool", "http://127.0.0.1:9"])
    assert result.exit_code == 2, result.output
    assert "name a job (CLUSTER.PROC or CLUSTER) or give --all" in result.output


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


# -- user data printed literally (issue 11, injection) ------------------------------------

# Markup that crashed rich ([/bold] closes nothing), an OSC title + hyperlink, a screen
# clear, a carriage return, a bidi override and a C1 CSI: what any user may write into
# their job's arguments or attributes, and every other user's `glidewms q` then shows.
HOSTILE = "[/bold][link=http://evil]x\x1b]0;pwned\x07\x1b]8;;http://evil\x1b\\\x1b[2J\r\u202e\x9b"


def hostile_job(job_id: str, state: str = "held") -> dict[str, object]:
    return {
        "job_id": job_id,
        "owner": f"mallory{HOSTILE}",
        "q_date": 1.0,
        "state": state,
        "num_starts": 1,
        "pilot_id": f"p{HOSTILE}",
        "exit_code": 3,
        "hold_reason": f"held by {HOSTILE}",
        "cmd": f"/bin/job{HOSTILE}",
        "args": [HOSTILE, "[bold]not bold[/bold]"],
        "ad": f'[ Args = "{HOSTILE}"; Owner = "mallory" ]',
        "ad_long": f'Args = "{HOSTILE}"\nOwner = "mallory"\nNote = "[/red]"',
    }


class _HostileService(BaseHTTPRequestHandler):
    """A pool and a factory at once, answering with what users and sites wrote."""

    answers: dict[str, object] = {
        "/api/v1/jobs": [hostile_job("1.0"), hostile_job("1.1", "running")],
        "/api/v1/jobs/1.0/events": [{"time": 1.0, "type": "held", "detail": HOSTILE}],
        "/api/v1/jobs/1.1/events": [],
        "/api/v1/userprio": {
            "submitters": [
                {
                    "submitter": f"eve{HOSTILE}",
                    "group": f"g{HOSTILE}",
                    "effective_priority": 3600.0,
                    "factor": 1.0,
                    "usage": 7200.0,
                    "running_cores": 1,
                    "idle_jobs": 1,
                }
            ],
            "halflife": 86400.0,
        },
        "/api/v1/concurrency": {
            "time": 1.0,
            "limits": [
                {"name": HOSTILE, "limit": 2, "in_use": 1, "idle_jobs": 3, "blocked_jobs": 0},
                {"name": "free", "limit": None, "in_use": 0, "idle_jobs": 1, "blocked_jobs": 0},
            ],
        },
        "/api/v1/downtimes": [
            {
                "id": 1,
                "entry": "e",
                "frontend": "*",
                "start": 1.0,
                "end": None,
                "reason": HOSTILE,
                "created_by": f"admin{HOSTILE}",
            }
        ],
        "/api/v1/entries": [
            {
                "name": "e",
                "site": "S",
                "backend": "local",
                "counts": {"running": 1},
                "enabled": True,
                "paused": {"since": 1.0, "retry_at": 2.0, "reason": HOSTILE},
                "last_error": HOSTILE,
            }
        ],
        "/api/v1/glideins": [
            {
                "glidein_id": "g1",
                "entry": "e",
                "frontend": "fe",
                "group": "main",
                "state": "finished",
                "exit_reason": HOSTILE,
                "submitted_at": 1.0,
            }
        ],
        "/api/v1/glideins/g1/logs": {
            "glidein_id": "g1",
            "entry": "e",
            "frontend": "fe",
            "group": "main",
            "state": "finished",
            "exit_reason": "error",
            "submitted_at": 1.0,
            "stdout": f"line one\n{HOSTILE}\n",
            "stderr": "",
            "trail": [{"time": 1.0, "severity": "INFO", "type": "job", "content": HOSTILE}],
        },
    }

    def do_GET(self) -> None:
        answer = self.answers.get(self.path.split("?")[0])
        body = json.dumps(answer).encode()
        self.send_response(200 if answer is not None else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header(VERSION_HEADER, API_VERSION)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def hostile_service(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _HostileService)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    token = tmp_path / "t.token"
    token.write_text("not-checked\n")
    try:
        yield f"http://127.0.0.1:{server.server_port}", token
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def assert_shown_literally(result: Any) -> None:
    assert result.exit_code == 0, (result.output, result.exception)
    for raw in ("\x1b", "\x07", "\r", "\u202e", "\x9b"):
        assert raw not in result.output, repr(raw)
    assert "\\x1b]0;pwned" in result.output and "\\u202e" in result.output


@pytest.mark.parametrize(
    "command",
    [["q"], ["q", "--long"], ["history"], ["history", "-l"], ["userprio"], ["limits"]],
)
def test_user_commands_print_other_users_data_literally(
    hostile_service: tuple[str, Path], command: list[str]
) -> None:
    url, token = hostile_service
    result = runner.invoke(
        app, [*command, "--pool", url, "--token-file", str(token)], env={"COLUMNS": "1000"}
    )
    assert_shown_literally(result)
    if command == ["limits"]:
        assert "unlimited" in result.output
    elif command != ["userprio"]:
        assert "[/bold]" in result.output  # as written, not taken for markup
    if "--long" in command or "-l" in command:
        assert 'Note = "[/red]"' in result.output


@pytest.mark.parametrize(
    "command",
    [
        ["downtime", "list"],
        ["entry", "list"],
        ["search"],
        ["logs", "g1"],
    ],
)
def test_factory_commands_print_what_sites_and_frontends_wrote_literally(
    hostile_service: tuple[str, Path], command: list[str]
) -> None:
    url, token = hostile_service
    options = ["--factory", url, "--token-file", str(token)]
    result = runner.invoke(app, ["factory", *command, *options], env={"COLUMNS": "1000"})
    assert_shown_literally(result)


def test_error_messages_quoting_user_text_are_shown_literally(tmp_path: Path) -> None:
    from glidewms.cli.user import fail

    with pytest.raises(Exception):  # noqa: B017 (typer.Exit)
        raise fail(f"constraint {HOSTILE} does not parse")
    # fail() printed through rich: no crash on the markup, and then the same for the
    # factory's commands (their _fail)
    from glidewms.cli.factory_cmds import _fail

    assert _fail(f"bad {HOSTILE}").exit_code == 2


def test_explain_text_is_shown_literally(tmp_path: Path, monkeypatch) -> None:
    from glidewms.cli.literal import visible
    from glidewms.frontend.explain_text import render

    record = {"entry": f"e{HOSTILE}", "group": "main", "cycle": 1, "skipped": HOSTILE}
    shown = visible(render([record], False), lines=True)
    assert "\x1b" not in shown and "\\x1b[2J" in shown and "\n" in shown
