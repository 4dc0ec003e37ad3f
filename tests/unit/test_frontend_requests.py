"""The request the frontend sends, and the VO stage configuration."""

from __future__ import annotations

from pathlib import Path

import pytest

from glidewms.config import ConfigError
from glidewms.config.frontend import FrontendConfig
from glidewms.config.loader import parse_config
from glidewms.frontend.credentials import GroupTokens
from glidewms.frontend.service import request_body
from glidewms.frontend.vostage import VOStageError, build_all

ENTRY = {
    "idle": 2,
    "max_running": 5,
    "remove": "IDLE",
    "remove_margin": 1,
    "start_expr": "true",
    "container_image": "/img.sif",
}
TOKENS = GroupTokens({"a": "token-a", "b": "token-b"})
VO = {"url": "http://fe/stage/vo/main", "manifest_sha256": "0" * 64, "manifest_key": "K"}


def test_request_body_carries_entry_tokens_and_the_vo_stage():
    body = request_body("http://pool", TOKENS, {"a": ENTRY, "b": ENTRY}, VO)
    assert body == {
        "pool_url": "http://pool",
        "vo_stage": VO,
        "entries": {
            "a": {**ENTRY, "pilot_token": "token-a"},
            "b": {**ENTRY, "pilot_token": "token-b"},
        },
    }
    # each entry carries its own (entry-scoped) token; there is no group-wide one
    assert "pilot_token" not in body
    assert ENTRY == {
        "idle": 2,
        "max_running": 5,
        "remove": "IDLE",
        "remove_margin": 1,
        "start_expr": "true",
        "container_image": "/img.sif",
    }, "input mutated"


def test_request_body_without_a_vo_stage_has_no_key():
    assert "vo_stage" not in request_body("http://p", TOKENS, {}, None)


def test_vo_scripts_must_hold_a_scripts_list(tmp_path: Path):
    with pytest.raises(ConfigError) as err:
        parse_config(FrontendConfig, {"groups": [{"vo_scripts": str(tmp_path)}]}, "fe.yaml")
    assert "groups[0].vo_scripts" in str(err.value) and "scripts.list" in str(err.value)


def test_a_bad_vo_script_list_names_the_group_and_line(tmp_path: Path):
    (tmp_path / "scripts.list").write_text("factory missing.sh\n")
    config = FrontendConfig(
        state_dir=tmp_path / "fe", groups=[{"name": "g", "vo_scripts": tmp_path}]
    )
    with pytest.raises(VOStageError) as err:
        build_all(config)
    assert str(err.value).startswith(f"groups[0].vo_scripts ({tmp_path}): ")
    assert "scripts.list" in str(err.value)


def test_check_config_builds_the_vo_stages_aside(tmp_path: Path):
    """`glidewms frontend check-config` refuses a bad list, and writes nothing into
    the frontend's state_dir either way."""
    from glidewms.frontend.main import load

    (tmp_path / "token").write_text("t")
    (tmp_path / "vo").mkdir()
    (tmp_path / "vo" / "scripts.list").write_text("group missing.sh\n")
    path = tmp_path / "frontend.yaml"
    path.write_text(
        f"state_dir: {tmp_path / 'fe'}\ntoken_file: {tmp_path / 'token'}\n"
        f"groups: [{{name: g, vo_scripts: {tmp_path / 'vo'}}}]\n"
    )
    with pytest.raises(ConfigError) as err:
        load(path)
    assert str(err.value).startswith(f"{path}: groups[0].vo_scripts")
    (tmp_path / "vo" / "missing.sh").write_text("exit 0\n")
    assert load(path)[1] == "t"
    assert not (tmp_path / "fe").exists()
