"""Configuration of the frontend service."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from glidewms import classads


class GroupConfig(BaseModel):
    """One frontend group: which jobs, which entries, how many pilots."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field("main", pattern=r"^[A-Za-z0-9_.-]+$", description="group name")
    match_expr: str = Field(
        "true",
        description="ClassAd expression, MY = the job's autocluster, TARGET = the entry; "
        "together with the job's own Requirements it decides where its pilots go",
    )
    max_idle_per_entry: int = Field(100, ge=0, description="pilots waiting at one entry")
    max_running_per_entry: int = Field(1000, ge=0, description="pilots alive at one entry")
    running_factor: float = Field(1.15, ge=1.0, description="max running = demand x factor")
    pilot_token_lifetime: float = Field(
        24 * 3600.0, gt=60, description="seconds; renewed when half of it is gone"
    )

    @field_validator("match_expr")
    @classmethod
    def _parses(cls, value: str) -> str:
        classads.parse_expr(value)
        return value


class FrontendConfig(BaseModel):
    """`glidewms frontend --config frontend.yaml`."""

    model_config = ConfigDict(extra="forbid")

    listen_host: str = Field("127.0.0.1", description="address of the status API")
    listen_port: int = Field(9621, ge=0, le=65535, description="0 picks a free port")
    url_file: Path | None = Field(None, description="where to write the URL once listening")
    state_dir: Path = Field(Path("glidewms-state/frontend"), description="this frontend's files")
    issuer_public_key: Path | None = Field(
        None, description="verifies tokens (default state_dir/../keys/issuer.pub)"
    )
    pool_url: str = Field("http://127.0.0.1:9618", description="the pool this frontend serves")
    factory_url: str = Field("http://127.0.0.1:9620", description="the factory it asks")
    token_file: Path | None = Field(
        None, description="this frontend's own token (frontend scope); default state_dir/token"
    )
    cycle_seconds: float = Field(10.0, gt=0, description="seconds between decisions")
    http_timeout: float = Field(10.0, gt=0, description="per query to a pool or factory")
    groups: list[GroupConfig] = Field(
        default_factory=lambda: [GroupConfig()], description="default: one group, main"
    )
