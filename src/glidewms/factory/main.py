"""Run the factory service from a configuration file (or the defaults)."""

from __future__ import annotations

import logging
from pathlib import Path

from glidewms.config.factory import FactoryConfig, load_factory_config
from glidewms.factory.api import create_app
from glidewms.service import serve


def load(config_path: Path | None) -> FactoryConfig:
    """Load and validate the configuration without starting anything (check-config)."""
    return load_factory_config(config_path)


def run(config_path: Path | None) -> None:
    """Load the configuration and serve until SIGINT/SIGTERM.

    ConfigError propagates with a message naming the file and key.
    """
    config = load_factory_config(config_path)
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s"
        )
    serve(
        lambda url: create_app(config, url),
        config.listen_host,
        config.listen_port,
        config.url_file,
    )
