"""Configuration of the web console (`glidewms web --config web.yaml`)."""

from __future__ import annotations

from pathlib import Path

from pydantic import ConfigDict, Field, ValidationInfo, field_validator

from glidewms.config.tls import TlsChecks
from glidewms.config.values import http_url


class WebConfig(TlsChecks):
    """The console holds no data of its own: every page is read from the
    services with the visitor's token (docs/operations.md, "Web console")."""

    model_config = ConfigDict(extra="forbid")

    listen_host: str = Field("127.0.0.1", description="address to listen on")
    listen_port: int = Field(9622, ge=0, le=65535, description="0 picks a free port")
    url_file: Path | None = Field(None, description="where to write the URL once listening")
    tls_cert: Path | None = Field(
        None, description="PEM certificate (chain) to serve HTTPS with; null: plain HTTP"
    )
    tls_key: Path | None = Field(
        None, validate_default=True, description="PEM private key of tls_cert (with tls_cert)"
    )
    ca_file: Path | None = Field(
        None, description="CA bundle the services' certificates are verified with"
    )
    pool_url: str = Field(description="the pool's base URL, http(s)://host:port")
    factory_url: str | None = Field(None, description="the factory's base URL (its pages)")
    frontend_url: str | None = Field(None, description="the frontend's base URL (its pages)")
    session_seconds: float = Field(
        8 * 3600.0, gt=0, le=7 * 86400.0, description="a login lasts this long unused"
    )
    max_sessions: int = Field(
        1000, ge=1, le=100000, description="sessions kept at once (the oldest unused go first)"
    )
    token_dirs: list[Path] = Field(
        default_factory=list,
        description="operators may log in with the path of a token file in one of these "
        "directories on the console's machine instead of pasting it (empty: off)",
    )
    request_timeout: float = Field(
        15.0, gt=0, le=300, description="seconds to wait for a service's answer"
    )

    @field_validator("pool_url", "factory_url", "frontend_url")
    @classmethod
    def _url(cls, value: str | None, info: ValidationInfo) -> str | None:
        return None if value is None else http_url(value, info.field_name or "url")
