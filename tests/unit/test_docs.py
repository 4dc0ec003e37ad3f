"""The documentation names every configuration key and every CLI command."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.main import get_command

from glidewms.cli.main import app
from glidewms.config.factory import EntryConfig, FactoryConfig
from glidewms.config.frontend import FrontendConfig, GroupConfig
from glidewms.config.pool import PoolConfig
from glidewms.config.reference import reference_markdown

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "model", [PoolConfig, FactoryConfig, EntryConfig, FrontendConfig, GroupConfig]
)
def test_every_config_key_is_documented(model):
    text = (ROOT / "docs" / "configuration.md").read_text()
    missing = [name for name in model.model_fields if f"| `{name}` |" not in text]
    assert not missing, f"docs/configuration.md lacks {model.__name__} keys {missing}"


def test_config_reference_matches_the_models():
    text = (ROOT / "docs" / "configuration.md").read_text()
    assert reference_markdown() in text, (
        "docs/configuration.md is out of date: paste the output of "
        "`python -m glidewms.config.reference` over its tables"
    )


def test_every_command_is_in_the_readme():
    readme = (ROOT / "README.md").read_text()
    commands = get_command(app).commands  # type: ignore[attr-defined]
    missing = [name for name in commands if f"glidewms {name}" not in readme]
    assert not missing, f"README.md does not mention {missing}"
