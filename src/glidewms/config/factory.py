"""Typed configuration of the factory: the service settings and its entries.

An *entry* is one place the factory knows how to start pilots (a site plus the
backend that reaches it, its resources, limits and the attributes published to
frontends). Entries live inline under `entries:` or in separate YAML files
listed under `entry_files:` (one entry or a list per file), so a generated site
catalogue and hand-curated entries can be kept apart and merged here.

Every model forbids unknown keys: a typo such as `max_pilot` must be reported
with its key path, not silently ignored while the default applies.

The sections that say how an entry reaches its site (`batch:`, `ssh:`,
`condor:`) are in `config/sites.py`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from glidewms.config.loader import (
    ConfigError,
    format_validation_error,
    load_yaml,
    parse_config,
)
from glidewms.config.sites import (
    BatchConfig,
    CondorConfig,
    JobIsolationConfig,
    SshConfig,
    check_environment,
)
from glidewms.config.tls import TlsChecks
from glidewms.config.values import one_line
from glidewms.db import sqlite_url
from glidewms.security.tls import MIB

__all__ = [
    "BackendKind",
    "BatchConfig",
    "CondorConfig",
    "EntryConfig",
    "FactoryConfig",
    "FrontendLimits",
    "JobIsolationConfig",
    "RecoveryConfig",
    "SshConfig",
    "load_entry_file",
    "load_factory_config",
]

# Entry names end up in glidein ids, log paths and URLs: keep them path-safe.
# Both patterns are used with fullmatch: `$` would also match before a trailing newline.
ENTRY_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")
# Attribute names become ClassAd attributes of the pilot's slot.
ATTRIBUTE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")

# glidein_config keys the bootstrap writes from its own options: not attributes.
RESERVED_ATTRIBUTES = frozenset(
    [
        "GLIDEIN_Factory_URL",
        "GLIDEIN_Pool_URL",
        "GLIDEIN_Id",
        "GLIDEIN_Entry_Name",
        "GLIDEIN_Site",
        "GLIDEIN_Idle_Timeout",
        "GLIDEIN_Lifetime",
        "GLIDEIN_Cpus",
        "GLIDEIN_Memory",
        "GLIDEIN_Heartbeat",
        "GLIDEIN_Work_Dir",
        "GLIDEIN_Token_File",
        "GLIDEIN_Attrs",
        "GLIDEIN_CA_File",
        # job isolation of local pilots: the factory's own settings (config/sites.py)
        "GLIDEIN_Job_Isolation",
        "GLIDEIN_Job_Account",
        "GLIDEIN_Job_Hidden",
        "GLIDEIN_Job_Bwrap",
    ]
)

AttributeValue = str | int | float | bool
ResourceAmount = int | Literal["auto"]


BackendKind = Literal["local", "slurm", "sge", "pbs", "lsf", "ssh", "htcondor"]


def _positive_or_auto(value: object) -> object:
    """Accept a positive integer (or its string form) or the word `auto`."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    if isinstance(value, bool):
        raise ValueError("expected a positive integer or 'auto', got a boolean")
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, int) and value >= 1:
        return value
    raise ValueError("expected a positive integer or 'auto'")


class RecoveryConfig(BaseModel):
    """How an entry recovers from failures: pauses, held pilots, stale pilots.

    Failing submissions back off (doubling from the cycle time) and, after
    `pause_after_failures` in a row, pause the entry until an operator resumes
    it or `pause_cooldown` passes: a broken site never sees a submit storm.
    Pilots that fail at the site (validation failed, an exit before the first
    job, a black hole) make a streak: each one halves the pilots the entry gets
    per cycle, a pilot that did its work shrinks the streak by
    `pilot_success_decay`, and `pause_after_pilot_failures` in the streak pause
    the entry. A paused entry sends one probe pilot after `probe_interval`
    seconds, doubling after each probe that fails up to `probe_interval_max`;
    a pilot that validates and registers resumes the entry (docs/factory.md,
    "Entry health").
    A held pilot is released at most `max_releases` times, the n-th time no
    sooner than `release_backoff * 2**(n-1)` seconds after it was held; then it
    is removed. A pilot queued longer than `max_queued_time`, or running longer
    than the walltime plus `walltime_grace`, is stale and removed.
    """

    model_config = ConfigDict(extra="forbid")

    pause_after_failures: int = Field(
        default=5, ge=1, description="consecutive failed submissions that pause the entry"
    )
    pause_cooldown: float = Field(
        default=3600.0,
        gt=0,
        description="seconds an entry paused by failed submissions waits before one more try",
    )
    pause_after_pilot_failures: int = Field(
        default=5,
        ge=1,
        description="pilot failures in the streak (validation, exit before the first job, "
        "black hole) that pause the entry",
    )
    pilot_success_decay: float = Field(
        default=0.5,
        ge=0,
        lt=1,
        description="the streak is multiplied by this (rounded down) for each pilot that "
        "did its work; 0 forgets it at once",
    )
    probe_interval: float = Field(
        default=600.0, gt=0, description="seconds from a pause to its first probe pilot"
    )
    probe_interval_max: float = Field(
        default=14400.0, gt=0, description="longest wait between probes (doubling after each)"
    )
    max_releases: int = Field(
        default=3, ge=0, description="times a held pilot is released before it is removed"
    )
    release_backoff: float = Field(
        default=60.0, ge=0, description="seconds held before the first release (doubling)"
    )
    max_queued_time: float = Field(
        default=172800.0, gt=0, description="seconds queued at the site before removal"
    )
    walltime_grace: float = Field(
        default=3600.0, ge=0, description="seconds beyond the walltime a pilot may run"
    )


class FrontendLimits(BaseModel):
    """Limits of one frontend at one entry (on top of the entry's own)."""

    model_config = ConfigDict(extra="forbid")

    max_pilots: int | None = Field(default=None, ge=0, description="its pilots alive at once")
    max_idle: int | None = Field(default=None, ge=0, description="its pilots queued at once")


class EntryConfig(BaseModel):
    """One entry: where pilots start, with what resources, under which limits."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="unique entry name: a letter, then letters, digits, _ or -")
    site: str = Field(min_length=1, max_length=128, description="site name given to pilots")
    backend: BackendKind = Field(
        default="local",
        description="how pilots are started: local, slurm, sge, pbs, lsf, ssh, htcondor",
    )
    batch: BatchConfig = Field(
        default_factory=BatchConfig, description="queue, account and options of a batch system"
    )
    ssh: SshConfig | None = Field(
        default=None, description="for backend ssh: the remote login node and its batch system"
    )
    condor: CondorConfig | None = Field(
        default=None, description="for backend htcondor: the schedd and the CE (grid_resource)"
    )
    environment: dict[str, str] = Field(
        default_factory=dict, description="environment given to pilots at this site"
    )
    cpus: ResourceAmount = Field(default=1, description="cores per pilot, or auto")
    memory: ResourceAmount = Field(default=2048, description="MB per pilot, or auto")
    disk: ResourceAmount = Field(default="auto", description="MB of scratch per pilot, or auto")
    gpus: int = Field(
        default=0,
        ge=0,
        le=64,
        description="GPUs per pilot asked of the batch system (Slurm --gres, PBS ngpus...) "
        "and announced to frontends; the pilot's own detection decides what it offers",
    )
    walltime: int = Field(default=86400, ge=60, description="pilot lifetime in seconds")
    idle_timeout: int = Field(
        default=1200, ge=0, description="seconds a pilot waits for work before it exits"
    )
    attributes: dict[str, AttributeValue] = Field(
        default_factory=dict, description="published to frontends and given to pilots as --attr"
    )
    max_pilots: int = Field(default=50, ge=0, description="pilots alive at once, all frontends")
    max_idle: int = Field(default=10, ge=0, description="pilots queued at once, all frontends")
    max_held: int = Field(
        default=5, ge=0, description="no submission while this many pilots are held here"
    )
    max_per_cycle: int = Field(default=10, ge=0, description="submissions per factory cycle")
    allowed_frontends: list[str] | None = Field(
        default=None, description="frontend names allowed to request pilots here; null = any"
    )
    frontend_limits: dict[str, FrontendLimits] = Field(
        default_factory=dict, description="per frontend name: max_pilots, max_idle"
    )
    recovery: RecoveryConfig = Field(
        default_factory=RecoveryConfig, description="pauses, held and stale pilots"
    )
    work_dir: str = Field(default="auto", min_length=1, description="pilot work dir, or auto")
    enabled: bool = Field(default=True, description="false: no new pilots, existing ones stay")
    isolation: JobIsolationConfig = Field(
        default_factory=JobIsolationConfig,
        description="backend local: how its pilots' jobs are kept from this machine's "
        "services (mode, account, hidden_paths...; see below)",
    )

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not ENTRY_NAME.fullmatch(value):
            raise ValueError(
                "must start with a letter and contain only letters, digits, '_' or '-' "
                "(at most 64 characters)"
            )
        return value

    @field_validator("site")
    @classmethod
    def _site(cls, value: str) -> str:
        one_line(value, "site")
        if any(ch.isspace() for ch in value):
            raise ValueError("must not contain whitespace")
        return value

    @field_validator("cpus", "memory", "disk", mode="before")
    @classmethod
    def _resource(cls, value: object) -> object:
        return _positive_or_auto(value)

    @field_validator("attributes", mode="before")
    @classmethod
    def _attribute_values(cls, value: object) -> object:
        if isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(item, str | int | float | bool):
                    raise ValueError(
                        f"attribute {key!r}: expected a string, number or boolean, "
                        f"got {type(item).__name__}"
                    )
        return value

    @field_validator("attributes")
    @classmethod
    def _attributes(cls, value: dict[str, AttributeValue]) -> dict[str, AttributeValue]:
        for key, item in value.items():
            if not ATTRIBUTE_NAME.fullmatch(key):
                raise ValueError(
                    f"attribute name {key!r} must be a ClassAd identifier "
                    "(letters, digits, '_', not starting with a digit)"
                )
            if key in RESERVED_ATTRIBUTES:
                raise ValueError(
                    f"attribute {key!r} is set by the factory from the entry itself "
                    "(name, site, cpus, memory, walltime...)"
                )
            if isinstance(item, str):
                # a glidein_config line on the pilot: one line, no control character
                one_line(item, f"attribute {key!r}")
        return value

    @field_validator("work_dir")
    @classmethod
    def _work_dir(cls, value: str) -> str:
        one_line(value, "work_dir")
        if value != "auto" and not value.startswith("/") and not value.startswith("$"):
            raise ValueError("expected 'auto', an absolute path or a path starting with $VAR")
        return value

    @field_validator("environment")
    @classmethod
    def _environment(cls, value: dict[str, str]) -> dict[str, str]:
        return check_environment(value)

    @model_validator(mode="after")
    def _ssh_needs_contact(self) -> EntryConfig:
        if self.backend == "ssh" and self.ssh is None:
            raise ValueError("backend ssh needs an `ssh:` section (host, user, key_file...)")
        if self.backend == "htcondor" and self.condor is None:
            raise ValueError("backend htcondor needs a `condor:` section (ce_host, schedd...)")
        return self

    def allows(self, frontend: str) -> bool:
        """Whether `frontend` may request pilots at this entry."""
        return self.allowed_frontends is None or frontend in self.allowed_frontends


def default_entries() -> list[EntryConfig]:
    """The embedded set-up: pilots as local processes on this machine."""
    return [EntryConfig(name="local", site="LOCAL", backend="local")]


class FactoryConfig(TlsChecks):
    """The factory service: where it listens, keeps state, and its entries."""

    model_config = ConfigDict(extra="forbid")

    listen_host: str = Field(default="127.0.0.1", description="address to listen on")
    listen_port: int = Field(default=9620, ge=0, le=65535, description="0 = any free port")
    url_file: Path | None = Field(default=None, description="where to write the URL once up")
    tls_cert: Path | None = Field(
        None, description="PEM certificate (chain) to serve HTTPS with; null: plain HTTP"
    )
    tls_key: Path | None = Field(
        None, validate_default=True, description="PEM private key of tls_cert (with tls_cert)"
    )
    ca_file: Path | None = Field(
        default=None,
        description="PEM CA bundle pilots verify the factory, pool and VO stages against; "
        "sent to each pilot (--ca-cert); null: the worker node's system store",
    )
    max_body_bytes: int = Field(default=4 * MIB, ge=1024, description="largest request body")
    public_url: str | None = Field(
        default=None,
        pattern=r"^https?://[^\s/]+$",
        description="the URL pilots call the factory at (the name its certificate carries, "
        "or a reverse proxy's); default the listening address",
    )
    state_dir: Path = Field(
        default=Path("./glidewms-state/factory"),
        description="database, stage, pilot logs and credentials live here",
    )
    timeseries_seconds: float = Field(
        60.0,
        ge=0,
        le=86400,
        description="sample the time series the web console plots every this many "
        "seconds, into the database (0: off; docs/operations.md)",
    )
    issuer_public_key: Path | None = Field(
        default=None, description="issuer public key; default <state_dir>/../keys/issuer.pub"
    )
    pilot_issuer_public_key: Path | None = Field(
        default=None,
        description="pilot issuer public key (verifies pilot tokens only); default "
        "<state_dir>/../keys/pilot_issuer.pub if it exists",
    )
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default SQLite in state_dir"
    )
    cycle_seconds: float = Field(
        default=5.0, gt=0, le=3600, description="seconds between convergence passes"
    )
    log_retention_days: float = Field(
        default=30.0, gt=0, description="days pilot logs stay in <state_dir>/archive"
    )
    glidein_retention_days: float = Field(
        default=30.0,
        gt=0,
        description="days an ended pilot's row (state, exit, report) is kept once its logs "
        "are archived; the pilot totals in /metrics count the rows kept",
    )
    entries: list[EntryConfig] = Field(
        default_factory=default_entries, description="default: one local entry"
    )
    entry_files: list[Path] = Field(
        default_factory=list, description="YAML files with one entry or a list, merged in"
    )

    @field_validator("entries")
    @classmethod
    def _unique_entries(cls, value: list[EntryConfig]) -> list[EntryConfig]:
        seen: set[str] = set()
        for entry in value:
            if entry.name in seen:
                raise ValueError(f"entry name {entry.name!r} appears more than once")
            seen.add(entry.name)
        return value

    def resolved_issuer_public_key(self) -> Path:
        return self.issuer_public_key or self.state_dir.parent / "keys" / "issuer.pub"

    def resolved_pilot_issuer_public_key(self) -> Path | None:
        default = self.state_dir.parent / "keys" / "pilot_issuer.pub"
        return self.pilot_issuer_public_key or (default if default.is_file() else None)

    def resolved_database_url(self) -> str:
        return self.database_url or sqlite_url(self.state_dir / "factory.db")

    def entry(self, name: str) -> EntryConfig | None:
        return next((e for e in self.entries if e.name == name), None)


_ENTRY_LIST = TypeAdapter(list[EntryConfig])


def load_entry_file(path: Path) -> list[EntryConfig]:
    """Read one entry file: a mapping (one entry) or a list of mappings."""
    data = load_yaml(path)
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        kind = type(data).__name__
        raise ConfigError(f"{path}: expected an entry mapping or a list of them, got {kind}")
    try:
        return _ENTRY_LIST.validate_python(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(str(path), exc)) from None


def load_factory_config(path: Path | None) -> FactoryConfig:
    """Load the factory configuration and merge its entry files.

    Entry files are resolved relative to the configuration file's directory.
    When entry files are given and `entries:` is not, the default local entry is
    not added: the operator has said where pilots go.
    """
    if path is None:
        return FactoryConfig()
    config = parse_config(FactoryConfig, load_yaml(path), str(path))
    if not config.entry_files:
        return config
    base = Path(path).parent
    entries = list(config.entries) if "entries" in config.model_fields_set else []
    origin = {e.name: f"{path} (entries)" for e in entries}
    for entry_file in config.entry_files:
        full = entry_file if entry_file.is_absolute() else base / entry_file
        for entry in load_entry_file(full):
            if entry.name in origin:
                raise ConfigError(
                    f"{full}: entry {entry.name!r} is already defined in {origin[entry.name]}"
                )
            origin[entry.name] = str(full)
            entries.append(entry)
    return config.model_copy(update={"entries": entries})
