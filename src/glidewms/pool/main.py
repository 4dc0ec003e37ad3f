"""`glidewms pool`: run the pool service."""

from __future__ import annotations

from pathlib import Path

from glidewms.config import ConfigError, load_config
from glidewms.config.pool import PoolConfig
from glidewms.service import serve


def load(path: Path | None) -> PoolConfig:
    config = load_config(PoolConfig, path)
    key = config.resolved_issuer_public_key()
    if not Path(key).is_file():
        raise ConfigError(
            f"{path or 'pool defaults'}: issuer_public_key: no public key at {key}; "
            "create one with `glidewms keys` or point issuer_public_key at it"
        )
    return config


def run(path: Path | None) -> None:
    from glidewms.pool.api import create_app
    from glidewms.pool.dblock import DatabaseInUse

    config = load(path)
    try:
        serve(
            lambda url: create_app(config, url),
            config.listen_host,
            config.listen_port,
            config.url_file,
            tls_cert=config.tls_cert,
            tls_key=config.tls_key,
        )
    except DatabaseInUse as exc:
        raise ConfigError(str(exc)) from None
