"""Configuration of the pool service."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from glidewms.security.tls import MIB, tls_pair


class PoolConfig(BaseModel):
    """`glidewms pool --config pool.yaml`; every key has a working default."""

    model_config = ConfigDict(extra="forbid")

    listen_host: str = Field("127.0.0.1", description="address to listen on")
    listen_port: int = Field(9618, ge=0, le=65535, description="0 picks a free port")
    url_file: Path | None = Field(None, description="where to write the URL once listening")
    tls_cert: Path | None = Field(
        None, description="PEM certificate (chain) to serve HTTPS with; null: plain HTTP"
    )
    tls_key: Path | None = Field(
        None, validate_default=True, description="PEM private key of tls_cert (with tls_cert)"
    )
    state_dir: Path = Field(
        Path("glidewms-state/pool"), description="database and sandbox files live here"
    )
    database_url: str | None = Field(
        None, description="SQLAlchemy URL; default SQLite in state_dir"
    )
    issuer_public_key: Path | None = Field(
        None, description="PEM public key that verifies every token (default state_dir/../keys)"
    )
    issuer_private_key: Path | None = Field(
        None, description="PEM private key used to mint pilot tokens for frontends"
    )
    claim_lease_seconds: float = Field(60.0, gt=0, description="a claim not renewed is released")
    pilot_lease_seconds: float = Field(90.0, gt=0, description="a silent pilot is declared lost")
    heartbeat_seconds: float = Field(20.0, gt=0, description="how often pilots report")
    lease_check_seconds: float = Field(1.0, gt=0, description="how often leases are checked")
    max_claim_wait: float = Field(60.0, ge=0, description="longest claim long-poll")
    max_job_restarts: int = Field(5, ge=0, description="evictions before a job is held")
    periodic_check_seconds: float = Field(
        60.0, gt=0, description="how often jobs' periodic_hold/remove/release are evaluated"
    )
    significant_attributes: list[str] = Field(
        default_factory=lambda: [
            "DESIRED_Sites",
            "DESIRED_Gatekeepers",
            "ContainerImage",
            "SingularityImage",
            "WantContainer",
            "MaxWallTimeMins",
        ],
        description="job attributes that slot Start and frontend match expressions may read "
        "beyond those a job's Requirements reference (HTCondor's SIGNIFICANT_ATTRIBUTES); "
        "applies to jobs submitted after a change",
    )
    reserve_for_large_jobs: bool = Field(
        True,
        description="a busy partitionable pilot takes no smaller job while a larger one "
        "that comes first in priority waits for its resources (docs/pool.md)",
    )
    database_lock_wait: float = Field(
        10.0,
        ge=0,
        description="seconds to wait for another pool to release the database "
        "before refusing to start",
    )
    max_pilot_token_lifetime: float = Field(
        7 * 24 * 3600.0, gt=0, description="longest pilot token a frontend may obtain"
    )
    priority_halflife: float = Field(
        86400.0, gt=0, description="seconds for a submitter's accumulated usage to halve"
    )
    priority_factors: dict[str, float] = Field(
        {}, description="per-user priority factor (higher = less share), e.g. {alice: 2.0}"
    )
    group_priority_factors: dict[str, float] = Field(
        {}, description="per accounting group (job attribute AcctGroup) factor, multiplied in"
    )
    default_priority_factor: float = Field(
        1.0, gt=0, description="factor of users not named in priority_factors"
    )

    max_body_bytes: int = Field(
        4 * MIB, ge=1024, description="largest request body, unless a key below says otherwise"
    )
    max_submit_bytes: int = Field(
        64 * MIB, ge=1024, description="largest body of a submit (POST /api/v1/jobs)"
    )
    max_upload_bytes: int = Field(
        1024 * MIB, ge=1024, description="largest sandbox file upload (PUT /api/v1/files/...)"
    )

    @field_validator("tls_key")
    @classmethod
    def _tls_pair(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return tls_pair(info.data.get("tls_cert"), value)

    @field_validator("priority_factors", "group_priority_factors")
    @classmethod
    def _positive(cls, value: dict[str, float]) -> dict[str, float]:
        bad = [name for name, factor in value.items() if not factor > 0]
        if bad:
            raise ValueError(f"factors must be positive numbers: {', '.join(bad)}")
        return value

    def resolved_database_url(self) -> str:
        from glidewms.db import sqlite_url

        return self.database_url or sqlite_url(self.state_dir / "pool.sqlite")
