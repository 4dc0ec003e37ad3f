"""`glidewms up --config-dir`: the operator's additions, validated before any start."""

from __future__ import annotations

from pathlib import Path

import pytest

from glidewms.config import ConfigError
from glidewms.config.pool import PoolConfig
from glidewms.launcher import Options, pool_settings
from glidewms.up_config import read_config_dir

OVERFLOW_GROUP = {"name": "main", "overflow": {"after_seconds": 60}}


def write(directory: Path, name: str, text: str) -> None:
    (directory / name).write_text(text)


def test_each_file_is_optional_and_read(tmp_path: Path) -> None:
    assert read_config_dir(tmp_path).pool == {}
    write(tmp_path, "pool.yaml", "priority_halflife: 600\n")
    write(tmp_path, "frontend.yaml", "groups:\n  - name: cms\n    overflow: {after_seconds: 60}\n")
    write(tmp_path, "entries.yaml", "- {name: a, site: A, backend: local}\n")
    config = read_config_dir(tmp_path)
    assert config.pool == {"priority_halflife": 600}
    assert config.frontend["groups"][0]["name"] == "cms"
    assert config.entries is not None and config.entries[0]["name"] == "a"


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("pool.yaml", "priority_halflive: 600\n", r"pool\.yaml.*priority_halflive"),
        ("pool.yaml", "state_dir: /elsewhere\n", r"pool\.yaml: state_dir: set by `glidewms up`"),
        ("frontend.yaml", "pool_url: http://x\n", r"frontend\.yaml: pool_url: set by"),
        ("frontend.yaml", "- just a list\n", r"frontend\.yaml: expected a mapping"),
        ("entries.yaml", "- {name: a, backend: teleport}\n", r"entries\.yaml.*backend"),
        ("factory.yaml", "entries: []\n", r"factory\.yaml: not read by `glidewms up`"),
    ],
)
def test_mistakes_name_the_file_and_key(tmp_path: Path, name: str, text: str, message: str) -> None:
    write(tmp_path, name, text)
    with pytest.raises(ConfigError, match=f"(?s){message}"):
        read_config_dir(tmp_path)


def test_overflow_makes_qdate_significant() -> None:
    defaults = PoolConfig().significant_attributes
    assert "QDate" not in defaults
    assert pool_settings(Options()) == {}
    for options in (
        Options(frontend_groups=[OVERFLOW_GROUP]),
        Options(extra_frontend={"groups": [OVERFLOW_GROUP]}),
    ):
        assert pool_settings(options)["significant_attributes"] == [*defaults, "QDate"]
    chosen = Options(
        extra_pool={"significant_attributes": ["qdate", "X"]}, frontend_groups=[OVERFLOW_GROUP]
    )
    assert pool_settings(chosen)["significant_attributes"] == ["qdate", "X"]
