"""Run the factory service from a configuration file (or the defaults)."""

from __future__ import annotations

import logging
from pathlib import Path

from glidewms.config.factory import FactoryConfig, load_factory_config
from glidewms.config.loader import ConfigError
from glidewms.extras import MissingExtra
from glidewms.factory.api import create_app
from glidewms.factory.backends import BACKENDS, ssh
from glidewms.factory.backends.ssh import REMOTE_BACKENDS
from glidewms.service import serve


def load(config_path: Path | None) -> FactoryConfig:
    """Load and validate the configuration without starting anything (check-config)."""
    config = load_factory_config(config_path)
    check_backends(config, str(config_path or "(defaults)"))
    return config


def check_backends(config: FactoryConfig, source: str) -> None:
    """Every entry's backend must be one this factory implements."""
    for i, entry in enumerate(config.entries):
        if entry.ssh is not None and entry.ssh.batch_system not in REMOTE_BACKENDS:
            raise ConfigError(
                f"{source}: entries[{i}].ssh.batch_system: {entry.ssh.batch_system!r} is not "
                f"implemented over SSH yet (implemented: {', '.join(sorted(REMOTE_BACKENDS))})"
            )
        if (entry.ssh is not None or entry.backend == "ssh") and not ssh.HAS_ASYNCSSH:
            raise MissingExtra(
                f"{source}: entries[{i}] ({entry.name}), reached over SSH,", "asyncssh"
            )
        if entry.backend not in BACKENDS:
            raise ConfigError(
                f"{source}: entries[{i}].backend: {entry.backend!r} is not implemented yet "
                f"(implemented: {', '.join(sorted(BACKENDS))})"
            )


def run(config_path: Path | None) -> None:
    """Load the configuration and serve until SIGINT/SIGTERM.

    ConfigError propagates with a message naming the file and key.
    """
    config = load(config_path)
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s"
        )
    serve(
        lambda url: create_app(config, url, reloader=lambda: load(config_path)),
        config.listen_host,
        config.listen_port,
        config.url_file,
        tls_cert=config.tls_cert,
        tls_key=config.tls_key,
    )
