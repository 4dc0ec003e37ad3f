"""`glidewms frontend`: run the frontend service."""

from __future__ import annotations

import tempfile
from pathlib import Path

from glidewms.config import ConfigError, load_config
from glidewms.config.frontend import FrontendConfig


def _read_token(path: Path, source: str, key: str) -> str:
    try:
        token = Path(path).read_text().strip()
    except OSError as exc:
        raise ConfigError(
            f"{source}: {key}: cannot read {path} ({exc.strerror}); create one with "
            f"`glidewms token --subject NAME --scope frontend --out {path}`"
        ) from None
    if not token:
        raise ConfigError(f"{source}: {key}: {path} is empty; expected a token")
    return token


def load_all(path: Path | None) -> tuple[FrontendConfig, str, dict[str, str]]:
    """The config, our own token, and the tokens of sources that have their own."""
    config = load_config(FrontendConfig, path)
    source = str(path or "frontend defaults")
    token = _read_token(config.token_file or config.state_dir / "token", source, "token_file")
    tokens: dict[str, str] = {}
    for kind, items in (("pools", config.pools), ("factories", config.factories)):
        for i, s in enumerate(items):
            if s.token_file is not None:
                tokens[s.name] = _read_token(s.token_file, source, f"{kind}[{i}].token_file")
    return config, token, tokens


def load(path: Path | None) -> tuple[FrontendConfig, str]:
    """Validate everything, the groups' VO script lists included (built in a scratch
    directory, so checking touches nothing of the running frontend's)."""
    from glidewms.frontend.vostage import VOStageError, build_all

    config, token, _ = load_all(path)
    with tempfile.TemporaryDirectory() as scratch:
        try:
            build_all(config.model_copy(update={"state_dir": Path(scratch)}))
        except VOStageError as exc:
            raise ConfigError(f"{path or 'frontend defaults'}: {exc}") from None
    return config, token


def run(path: Path | None) -> None:
    from glidewms.frontend.api import create_app
    from glidewms.frontend.service import Frontend
    from glidewms.frontend.vostage import VOStageError
    from glidewms.service import serve

    config, token, tokens = load_all(path)
    try:
        frontend = Frontend(config, token, tokens)
    except VOStageError as exc:
        raise ConfigError(f"{path or 'frontend defaults'}: {exc}") from None
    serve(
        lambda url: create_app(config, token, url, tokens, frontend),
        config.listen_host,
        config.listen_port,
        config.url_file,
        tls_cert=config.tls_cert,
        tls_key=config.tls_key,
    )
