"""Command-line behaviour that needs no running service."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from glidewms.cli.main import app

runner = CliRunner()


def test_bad_entries_file_is_refused_before_anything_starts(tmp_path: Path):
    bad = tmp_path / "entries.yaml"
    bad.write_text("- name: big\n  site: X\n  cpus: many\n")
    result = runner.invoke(app, ["demo", "--entries", str(bad), "--state-dir",
                                 str(tmp_path / "demo")])
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
    result = runner.invoke(app, ["token", "--subject", "alice", "--scope", "user", "--out",
                                 str(out), "--key", str(tmp_path / "keys" / "issuer.key")])
    assert result.exit_code == 0, result.output
    token = out.read_text().strip()
    assert token and token not in result.output
    assert out.stat().st_mode & 0o777 == 0o600
