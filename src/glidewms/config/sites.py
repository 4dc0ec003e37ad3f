"""How an entry reaches its site: the `batch:`, `ssh:`, `condor:` and `isolation:` sections.

One model per kind of contact, each validating what its backend will put in a
command line, a job script or a submit description: single words, single
lines, host names, absolute credential paths. `EntryConfig`
(config/factory.py) holds one of them per entry.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from glidewms.config.values import one_line

# Every pattern here is used with fullmatch (`$` with re.match also accepts a
# trailing newline, which would start a new line of a job script).
# Environment variable names handed to batch commands and to pilots.
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
WORD = re.compile(r"[A-Za-z0-9_.@:+-]{1,128}")
SCHEDD_NAME = re.compile(r"[A-Za-z0-9_.@-]{1,253}")
REMOTE_USER = re.compile(r"[\w.-]*", re.ASCII)
TAG = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def check_environment(value: dict[str, str]) -> dict[str, str]:
    """Names a shell can export, values on one line: they end up in job scripts."""
    for key, item in value.items():
        if not ENV_NAME.fullmatch(key):
            raise ValueError(f"environment variable name {key!r} is not a shell identifier")
        one_line(item, f"environment variable {key!r}")
    return value


class BatchConfig(BaseModel):
    """How to reach a batch system's queue (Slurm, Grid Engine, PBS, LSF).

    `options` are extra submit options in the batch system's own syntax
    (`--qos=normal`, `-l h_vmem=2G`), placed in the job script's directives.
    `env` is the environment of the batch *commands* (e.g. `SLURM_CONF`,
    `SGE_ROOT`), not of the pilots (that is the entry's `environment`).
    """

    model_config = ConfigDict(extra="forbid")

    queue: str | None = Field(default=None, description="partition (Slurm) or queue name")
    account: str | None = Field(default=None, description="account to charge (Slurm -A, LSF -P)")
    project: str | None = Field(default=None, description="project (Grid Engine -P, PBS -P)")
    options: list[str] = Field(default_factory=list, description="extra submit options")
    env: dict[str, str] = Field(default_factory=dict, description="environment of batch commands")
    log_dir: str | None = Field(
        default=None, description="where pilots' stdout/stderr go; default under state_dir"
    )
    array_size: int = Field(default=500, ge=1, le=10000, description="most pilots per job array")
    command_timeout: float = Field(default=60.0, gt=0, description="seconds per batch command")
    command_prefix: list[str] = Field(
        default_factory=list,
        description="run batch commands as another account, e.g. [runuser, -u, pilots, --]; "
        "needs log_dir (a directory that account can write)",
    )
    parallel_environment: str = Field(
        default="smp", description="Grid Engine parallel environment of multi-core pilots"
    )
    gpu_complex: str = Field(
        default="gpu",
        description="Grid Engine consumable complex that counts GPUs (-l NAME=N); "
        "sites name it differently",
    )

    @field_validator("queue", "account", "project", "parallel_environment", "gpu_complex")
    @classmethod
    def _word(cls, value: str | None) -> str | None:
        if value is not None and not WORD.fullmatch(value):
            raise ValueError("expected a single word (letters, digits, '_.@:+-')")
        return value

    @field_validator("options")
    @classmethod
    def _options(cls, value: list[str]) -> list[str]:
        for option in value:
            one_line(option, f"option {option!r}")
        return value

    @field_validator("env")
    @classmethod
    def _env(cls, value: dict[str, str]) -> dict[str, str]:
        return check_environment(value)

    @field_validator("command_prefix")
    @classmethod
    def _prefix(cls, value: list[str]) -> list[str]:
        for word in value:
            one_line(word, "command_prefix")
        return value

    @field_validator("log_dir")
    @classmethod
    def _log_dir(cls, value: str | None) -> str | None:
        return None if value is None else one_line(value, "log_dir")

    @model_validator(mode="after")
    def _prefix_needs_log_dir(self) -> BatchConfig:
        if self.command_prefix and not (self.log_dir and self.log_dir.startswith("/")):
            raise ValueError(
                "command_prefix needs log_dir: an absolute directory the batch account can "
                "write (the factory's state_dir is private to the factory)"
            )
        return self


class SshConfig(BaseModel):
    """A remote login node reached over SSH (BOSCO style) and the batch system there."""

    model_config = ConfigDict(extra="forbid")

    host: str = Field(min_length=1, description="login node host name or address")
    port: int = Field(default=22, ge=1, le=65535)
    user: str = Field(min_length=1, description="account on the login node")
    key_file: Path = Field(description="private key of this entry (0600)")
    known_hosts: Path | None = Field(
        default=None, description="known_hosts file; default ~/.ssh/known_hosts"
    )
    batch_system: Literal["slurm", "sge", "pbs", "lsf"] = Field(default="slurm")
    remote_dir: str = Field(
        default=".glidewms", description="pilot files and logs, relative to the remote home"
    )
    max_connections: int = Field(default=2, ge=1, le=64, description="connections at once")

    @field_validator("host", "user", "remote_dir")
    @classmethod
    def _line(cls, value: str) -> str:
        """They reach ssh and remote command lines: one line, no blank in host or user."""
        one_line(value, "ssh")
        if value != value.strip():
            raise ValueError(f"no leading or trailing blanks, got {value!r}")
        return value


# A DNS host name or an IPv4 address: HTCondor-CE hosts and schedd names.
HOST_NAME = re.compile(
    r"(?=.{1,253}\Z)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)
# A submit command name (`request_gpus`, `+MyAttr`, `My.Attr`).
SUBMIT_KEY = re.compile(r"\+?[A-Za-z_][A-Za-z0-9_.]{0,127}")


def _host(value: str | None, what: str) -> str | None:
    if value is not None and not HOST_NAME.fullmatch(value):
        raise ValueError(f"{what}: expected a host name such as ce.example.org, got {value!r}")
    return value


class CondorConfig(BaseModel):
    """An HTCondor-G / HTCondor-CE entry: which schedd submits, where jobs are routed.

    `grid_type: condor` sends pilots to an HTCondor-CE (`grid_resource =
    condor <ce_host> <ce_host>:<ce_port>`); `batch` to a batch system through
    the schedd's blahp (`grid_resource = batch <batch_system> [<remote>]`).
    `x509` and `scitoken` are paths of credential *files* the schedd forwards
    to the CE; their content never appears in a submit description or a log.
    """

    model_config = ConfigDict(extra="forbid")

    grid_type: Literal["condor", "batch"] = Field(
        default="condor", description="condor: an HTCondor-CE; batch: a blahp batch system"
    )
    ce_host: str | None = Field(default=None, description="HTCondor-CE host (grid_type condor)")
    ce_port: int = Field(default=9619, ge=1, le=65535, description="HTCondor-CE port")
    batch_system: Literal["slurm", "pbs", "lsf", "sge", "condor"] | None = Field(
        default=None, description="grid_type batch: the batch system behind the blahp"
    )
    remote: str | None = Field(
        default=None, description="grid_type batch: user@host of a remote login node (BOSCO)"
    )
    schedd: str = Field(default="local", description="'local' or the name of a schedd")
    collector: str | None = Field(
        default=None, description="collector that locates a named schedd; default the pool's"
    )
    x509: Path | None = Field(default=None, description="X.509 proxy file (absolute path)")
    scitoken: Path | None = Field(default=None, description="SciToken file (absolute path)")
    factory_tag: str = Field(
        default="glidewms", description="marks this factory's jobs in a shared schedd"
    )
    submit: dict[str, str] = Field(
        default_factory=dict, description="extra submit commands, e.g. {+Owner_VO: '\"cms\"'}"
    )

    @field_validator("ce_host")
    @classmethod
    def _ce_host(cls, value: str | None) -> str | None:
        return _host(value, "ce_host")

    @field_validator("schedd")
    @classmethod
    def _schedd(cls, value: str) -> str:
        if value != "local" and not SCHEDD_NAME.fullmatch(value):
            raise ValueError("expected 'local' or a schedd name such as schedd@host.example.org")
        return value

    @field_validator("collector")
    @classmethod
    def _collector(cls, value: str | None) -> str | None:
        host, _, port = (value or "").partition(":")
        if value is not None and (
            not HOST_NAME.fullmatch(host) or (port and not (port.isascii() and port.isdigit()))
        ):
            raise ValueError(f"expected host[:port], got {value!r}")
        return value

    @field_validator("remote")
    @classmethod
    def _remote(cls, value: str | None) -> str | None:
        user, _, host = (value or "").rpartition("@")
        if value is not None and (not HOST_NAME.fullmatch(host) or not REMOTE_USER.fullmatch(user)):
            raise ValueError(f"expected [user@]host, got {value!r}")
        return value

    @field_validator("x509", "scitoken")
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_absolute():
            raise ValueError(f"expected an absolute path of a file, got {str(value)!r}")
        return value

    @field_validator("factory_tag")
    @classmethod
    def _tag(cls, value: str) -> str:
        if not TAG.fullmatch(value):
            raise ValueError("expected a word: letters, digits, '_', '.', '-'")
        return value

    @field_validator("submit")
    @classmethod
    def _submit(cls, value: dict[str, str]) -> dict[str, str]:
        for key, item in value.items():
            if not SUBMIT_KEY.fullmatch(key):
                raise ValueError(
                    f"submit command {key!r}: expected a name such as request_gpus or +MyAttribute"
                )
            one_line(item, f"submit command {key!r}")
        return value

    @model_validator(mode="after")
    def _contact(self) -> CondorConfig:
        if self.grid_type == "condor" and self.ce_host is None:
            raise ValueError("grid_type condor needs ce_host (the HTCondor-CE host name)")
        if self.grid_type == "batch" and self.batch_system is None:
            raise ValueError("grid_type batch needs batch_system (slurm, pbs, lsf, sge, condor)")
        return self


# A login name useradd would accept (jobs of local pilots run as it when root).
ACCOUNT_NAME = re.compile(r"[a-z_][a-z0-9_.-]{0,31}")


class JobIsolationConfig(BaseModel):
    """How the jobs of a local entry's pilots are kept from this machine's services
    (backend local only; docs/security.md, "Jobs cannot read the services' secrets").

    `auto`: as root, jobs run as `account`; otherwise each job runs in a
    bubblewrap sandbox that hides the services' files; when neither is possible
    the factory refuses to start, unless `allow_unisolated`.
    """

    model_config = ConfigDict(extra="forbid")

    mode: Literal["auto", "account", "sandbox", "none"] = Field(
        default="auto",
        description="auto, account (root: jobs run as `account`), sandbox (bubblewrap) or "
        "none (jobs run as the factory's account and can read its files)",
    )
    account: str = Field(
        default="nobody", description="the unprivileged account jobs run as in mode account"
    )
    hidden_paths: list[str] = Field(
        default_factory=lambda: ["~"],
        description="mode sandbox: more paths jobs must not see (`~`: the factory "
        "account's home); the state_dir, the pilot's work dir and its token's directory "
        "always are",
    )
    bwrap: str = Field(default="bwrap", description="the bubblewrap command of mode sandbox")
    allow_unisolated: bool = Field(
        default=False,
        description="mode auto with neither root nor a working bubblewrap: run jobs "
        "unisolated (said at every pilot start) instead of refusing to start",
    )

    @field_validator("account")
    @classmethod
    def _account(cls, value: str) -> str:
        if not ACCOUNT_NAME.fullmatch(value) or value == "root":
            raise ValueError(f"expected an unprivileged account name, got {value!r}")
        return value

    @field_validator("hidden_paths")
    @classmethod
    def _hidden(cls, value: list[str]) -> list[str]:
        for path in value:
            one_line(path, "hidden_paths")
            if "," in path or not (path == "~" or path.startswith(("/", "~/"))) or path == "/":
                raise ValueError(
                    f"hidden_paths: expected an absolute path (or ~), no comma, got {path!r}"
                )
        return value

    @field_validator("bwrap")
    @classmethod
    def _bwrap(cls, value: str) -> str:
        return one_line(value, "bwrap")
