"""What an operator adds to the configs `glidewms up` writes: `--config-dir DIR`.

`glidewms up` writes one config per service (keys, URLs, state paths: things
it owns and must keep consistent with each other). An operator who wants more
than the defaults (frontend groups with overflow, a pool's fair-share
factors, several entries) puts the *rest* in files of their own:

    DIR/pool.yaml       keys of the pool's config (PoolConfig)
    DIR/frontend.yaml   keys of the frontend's config (FrontendConfig: groups...)
    DIR/entries.yaml    the factory's entries (a list, or {entries: [...]})

Each file is optional and is validated with its service's model before
anything starts, so a typo is an error naming the file and the key; keys that
`up` owns are refused with the reason rather than silently overwritten.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, TypeAdapter, ValidationError

from glidewms.config.factory import EntryConfig
from glidewms.config.frontend import FrontendConfig
from glidewms.config.loader import ConfigError, format_validation_error, load_yaml, parse_config
from glidewms.config.pool import PoolConfig

# Keys `glidewms up` sets itself: where state, keys and URLs are.
OWNED_BY_UP: dict[str, frozenset[str]] = {
    "pool": frozenset(
        {
            "url_file",
            "state_dir",
            "database_url",
            "issuer_public_key",
            "pilot_issuer_public_key",
            "pilot_issuer_private_key",
            "tls_cert",
            "tls_key",
        }
    ),
    "frontend": frozenset(
        {
            "url_file",
            "state_dir",
            "issuer_public_key",
            "pilot_issuer_public_key",
            "pool_url",
            "factory_url",
            "pools",
            "factories",
            "token_file",
            "tls_cert",
            "tls_key",
            "ca_file",
        }
    ),
}

MODELS: dict[str, type[BaseModel]] = {"pool": PoolConfig, "frontend": FrontendConfig}


@dataclass
class UpConfig:
    """The operator's additions, validated; empty when a file is absent."""

    pool: dict[str, Any] = field(default_factory=dict)
    frontend: dict[str, Any] = field(default_factory=dict)
    entries: list[dict[str, Any]] | None = None


def read_entries(path: Path) -> list[dict[str, Any]]:
    """Entries from a YAML file (a list, one entry, or {entries: [...]}), validated."""
    data = load_yaml(path)
    if isinstance(data, dict):
        data = data.get("entries", [data])
    try:
        entries = TypeAdapter(list[EntryConfig]).validate_python(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(str(path), exc)) from None
    return [e.model_dump(mode="json", exclude_unset=True) for e in entries]


def read_service(name: str, path: Path) -> dict[str, Any]:
    """One service's additions: a mapping, valid for its model, no keys `up` owns."""
    data = load_yaml(path)
    parse_config(MODELS[name], data, str(path))  # ConfigError names file and key
    assert isinstance(data, dict) or data is None  # parse_config refused the rest
    data = data or {}
    owned = sorted(OWNED_BY_UP[name] & set(data))
    if owned:
        raise ConfigError(
            f"{path}: {', '.join(owned)}: set by `glidewms up` itself (state, keys and "
            "URLs of this installation); run the service with its own --config to set them"
        )
    return dict(data)


def read_config_dir(directory: Path) -> UpConfig:
    if not directory.is_dir():
        raise ConfigError(f"{directory}: not a directory (expected pool.yaml, frontend.yaml...)")
    known = {"pool.yaml", "frontend.yaml", "entries.yaml"}
    strays = sorted(
        p.name for p in directory.iterdir() if p.suffix in (".yaml", ".yml") and p.name not in known
    )
    if strays:
        raise ConfigError(
            f"{directory}: {', '.join(strays)}: not read by `glidewms up` "
            f"(it reads {', '.join(sorted(known))})"
        )
    config = UpConfig()
    for name in ("pool", "frontend"):
        path = directory / f"{name}.yaml"
        if path.is_file():
            setattr(config, name, read_service(name, path))
    if (directory / "entries.yaml").is_file():
        config.entries = read_entries(directory / "entries.yaml")
    return config
