"""Configuration of the pool service."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from pydantic import ConfigDict, Field, field_validator, model_validator

from glidewms.classad_limits import DEFAULT_LIMITS, AdLimits
from glidewms.classads import CEILING
from glidewms.config.tls import TlsChecks
from glidewms.pool.concurrency import NAME as CONCURRENCY_NAME
from glidewms.pool.concurrency import LimitConfig
from glidewms.security.tls import MIB


class PoolConfig(TlsChecks):
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
    timeseries_seconds: float = Field(
        60.0,
        ge=0,
        le=86400,
        description="sample the time series the web console plots every this many "
        "seconds, into the database (0: off; docs/operations.md)",
    )
    database_url: str | None = Field(
        None, description="SQLAlchemy URL; default SQLite in state_dir"
    )
    issuer_public_key: Path | None = Field(
        None,
        description="PEM public key of the installation's issuer, which verifies every token "
        "(default state_dir/../keys/issuer.pub)",
    )
    pilot_issuer_public_key: Path | None = Field(
        None,
        description="PEM public key of the pilot issuer, which verifies pilot tokens only "
        "(default state_dir/../keys/pilot_issuer.pub if it exists; without one, tokens of "
        "the pilot issuer are refused)",
    )
    pilot_issuer_private_key: Path | None = Field(
        None,
        description="PEM private key of the pilot issuer, with which the pool mints pilot "
        "tokens for frontends (default state_dir/../keys/pilot_issuer.key if it exists); it "
        "can sign nothing but pilot tokens. The pool never takes the installation's issuer.key",
    )
    name: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9_.-]+$",
        max_length=64,
        description="this pool's name, when pools share a pilot issuer key: the pilot "
        "tokens it mints carry it (`pool` claim), and a pilot token naming another pool "
        "is refused here (a pilot serving several pools sends each its own token)",
    )
    claim_lease_seconds: float = Field(60.0, gt=0, description="a claim not renewed is released")
    pilot_lease_seconds: float = Field(90.0, gt=0, description="a silent pilot is declared lost")
    heartbeat_seconds: float = Field(20.0, gt=0, description="how often pilots report")
    lease_check_seconds: float = Field(1.0, gt=0, description="how often leases are checked")
    max_claim_wait: float = Field(
        120.0, ge=0, description="longest claim long-poll (an idle pilot re-polls this often)"
    )
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
        {},
        description="per accounting group factor, multiplied in: the group of a job's "
        "AccountingGroup (group.user), else its AcctGroup (docs/pool.md)",
    )
    default_priority_factor: float = Field(
        1.0, gt=0, description="factor of users not named in priority_factors"
    )
    concurrency_limits: dict[str, float] = Field(
        {},
        description="per concurrency limit name (case-insensitive; `db`, `license.matlab`), "
        "the most running jobs may hold of it at once (HTCondor's NAME_LIMIT); a job takes "
        "its `concurrency_limits = name[:amount]` (docs/pool.md)",
    )
    concurrency_limit_default: float | None = Field(
        None,
        ge=0,
        description="the limit of names not in concurrency_limits nor covered by a prefix "
        "default (HTCondor's CONCURRENCY_LIMIT_DEFAULT); null: unlimited",
    )
    concurrency_limit_prefix_defaults: dict[str, float] = Field(
        {},
        description="the limit of each dotted name `prefix.rest` not in concurrency_limits, "
        "per prefix (HTCondor's CONCURRENCY_LIMIT_DEFAULT_<prefix>), e.g. {license: 30}",
    )

    # What the pool accepts and keeps (docs/security.md, "Crashes and exhaustion
    # from input"): bounds on ClassAd text before the library sees it, and caps
    # on what one request or one job may make the pool store.
    max_expression_bytes: int = Field(
        DEFAULT_LIMITS.max_expression_bytes,
        ge=64,
        le=CEILING.max_expression_bytes,
        description="longest expression given alone: a constraint, a qedit value, GLIDEIN_Start",
    )
    max_expression_operators: int = Field(
        DEFAULT_LIMITS.max_operators,
        ge=16,
        le=CEILING.max_operators,
        description="most operators in one expression or attribute value (the ClassAd "
        "library crashes on ~40k-deep trees)",
    )
    max_expression_nesting: int = Field(
        DEFAULT_LIMITS.max_nesting,
        ge=4,
        le=CEILING.max_nesting,
        description="deepest bracket nesting in one expression",
    )
    max_ad_attributes: int = Field(
        DEFAULT_LIMITS.max_attributes,
        ge=16,
        le=CEILING.max_attributes,
        description="most attributes in a job ad or a pilot's slot ad",
    )
    max_attribute_bytes: int = Field(
        DEFAULT_LIMITS.max_value_bytes,
        ge=256,
        le=CEILING.max_value_bytes,
        description="largest attribute value (and job argument or environment value)",
    )
    max_ad_bytes: int = Field(
        DEFAULT_LIMITS.max_ad_bytes,
        ge=1024,
        le=CEILING.max_ad_bytes,
        description="largest job (its ad, arguments and environment together) or slot ad",
    )
    max_jobs_per_request: int = Field(
        100_000, ge=1, description="most jobs one submit queues, and job ids one action names"
    )
    max_staging_clusters: int = Field(
        4,
        ge=1,
        description="clusters one user may be sending in chunks at once (not yet committed)",
    )
    max_procs_per_cluster: int = Field(
        10_000_000,
        ge=1,
        description="most jobs of one cluster sent in chunks (late materialisation, "
        "max_materialize/max_idle, or a plain cluster too large for one body)",
    )
    max_events_per_job: int = Field(
        1000, ge=10, description="events kept per job: the first and the latest ones"
    )
    max_outputs_per_job: int = Field(
        1000, ge=1, description="output files a completion may record for one job"
    )
    bulk_batch_size: int = Field(
        1000,
        ge=1,
        description="jobs per transaction of a submit, and of a hold/release/remove/edit; "
        "pilot turns get the store between batches",
    )

    history_retention_days: float = Field(
        30.0,
        gt=0,
        description="finished (completed or removed) jobs are purged from the history this "
        "long after they finished, with their events, streams and file references",
    )
    events_retention_days: float = Field(
        90.0,
        gt=0,
        description="events older than this are purged, even those of jobs still queued",
    )
    sandbox_retention_days: float = Field(
        7.0,
        gt=0,
        description="a sandbox file no job references any more (an upload never submitted, "
        "the inputs and outputs of purged jobs) is deleted once it is this old",
    )
    retention_check_seconds: float = Field(
        600.0, gt=0, description="how often the upkeep purges what is past retention"
    )
    retention_batch: int = Field(
        500,
        ge=1,
        le=100_000,
        description="rows or files one purge transaction removes; turns get the store "
        "between batches",
    )

    @model_validator(mode="before")
    @classmethod
    def _no_installation_key(cls, data: Any) -> Any:
        """The key that mints admin tokens has no place in the one service jobs reach."""
        if isinstance(data, dict) and "issuer_private_key" in data:
            raise ValueError(
                "issuer_private_key: the pool no longer holds the installation's issuer key; "
                "give it pilot_issuer_private_key (`glidewms keys` creates pilot_issuer.key), "
                "which can mint pilot tokens only"
            )
        return data

    max_body_bytes: int = Field(
        4 * MIB, ge=1024, description="largest request body, unless a key below says otherwise"
    )
    max_submit_bytes: int = Field(
        64 * MIB, ge=1024, description="largest body of a submit (POST /api/v1/jobs)"
    )
    max_upload_bytes: int = Field(
        128 * MIB,
        ge=1024,
        description="largest sandbox file upload (PUT /api/v1/files/...; 413 from "
        "Content-Length, or while streaming)",
    )

    @field_validator("priority_factors", "group_priority_factors")
    @classmethod
    def _positive(cls, value: dict[str, float]) -> dict[str, float]:
        bad = [name for name, factor in value.items() if not factor > 0]
        if bad:
            raise ValueError(f"factors must be positive numbers: {', '.join(bad)}")
        return value

    @field_validator("concurrency_limits", "concurrency_limit_prefix_defaults")
    @classmethod
    def _limit_names(cls, value: dict[str, float]) -> dict[str, float]:
        """Names as jobs write them (compared lower-case); limits are counts, >= 0."""
        out: dict[str, float] = {}
        for name, limit in value.items():
            low = name.lower()
            if not CONCURRENCY_NAME.fullmatch(low):
                raise ValueError(f"{name!r} is not a limit name (letters, digits, _ . -)")
            if not (limit >= 0 and math.isfinite(limit)):
                raise ValueError(f"{name}: the limit must be a number >= 0, not {limit}")
            if low in out:
                raise ValueError(f"{name}: named twice (names ignore case)")
            out[low] = float(limit)
        return out

    def limit_config(self) -> LimitConfig:
        """What the matchmaker holds jobs' concurrency limits to."""
        return LimitConfig(
            dict(self.concurrency_limits),
            self.concurrency_limit_default,
            dict(self.concurrency_limit_prefix_defaults),
        )

    def ad_limits(self) -> AdLimits:
        """The bounds every ClassAd from outside is held to (glidewms.classads)."""
        return AdLimits(
            max_expression_bytes=self.max_expression_bytes,
            max_operators=self.max_expression_operators,
            max_nesting=self.max_expression_nesting,
            max_attributes=self.max_ad_attributes,
            max_value_bytes=self.max_attribute_bytes,
            max_ad_bytes=self.max_ad_bytes,
        )

    def resolved_issuer_public_key(self) -> Path:
        return self.issuer_public_key or self.state_dir.parent / "keys" / "issuer.pub"

    def resolved_pilot_issuer_public_key(self) -> Path | None:
        default = self.state_dir.parent / "keys" / "pilot_issuer.pub"
        return self.pilot_issuer_public_key or (default if default.is_file() else None)

    def resolved_pilot_issuer_private_key(self) -> Path | None:
        default = self.state_dir.parent / "keys" / "pilot_issuer.key"
        return self.pilot_issuer_private_key or (default if default.is_file() else None)

    def resolved_database_url(self) -> str:
        from glidewms.db import sqlite_url

        return self.database_url or sqlite_url(self.state_dir / "pool.sqlite")
