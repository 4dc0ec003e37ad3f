"""`glidewms web`: run the web console."""

from __future__ import annotations

from pathlib import Path

from glidewms.config import load_config
from glidewms.config.web import WebConfig
from glidewms.service import serve


def load(path: Path | None) -> WebConfig:
    return load_config(WebConfig, path)


def run(path: Path | None) -> None:
    from glidewms.web.app import create_app

    config = load(path)
    serve(
        lambda url: create_app(config, url),
        config.listen_host,
        config.listen_port,
        config.url_file,
        tls_cert=config.tls_cert,
        tls_key=config.tls_key,
    )
