"""`glidewms frontend`: run the frontend service."""

from __future__ import annotations

from pathlib import Path

from glidewms.config import ConfigError, load_config
from glidewms.config.frontend import FrontendConfig
from glidewms.service import serve


def load(path: Path | None) -> tuple[FrontendConfig, str]:
    config = load_config(FrontendConfig, path)
    token_file = config.token_file or config.state_dir / "token"
    try:
        token = Path(token_file).read_text().strip()
    except OSError as exc:
        raise ConfigError(
            f"{path or 'frontend defaults'}: token_file: cannot read {token_file} "
            f"({exc.strerror}); create one with `glidewms token --subject NAME --scope frontend "
            f"--out {token_file}`"
        ) from None
    return config, token


def run(path: Path | None) -> None:
    from glidewms.frontend.api import create_app

    config, token = load(path)
    serve(lambda url: create_app(config, token, url), config.listen_host, config.listen_port,
          config.url_file)
