"""Configuration of the frontend service (`frontend.yaml`).

Every pressure knob has a GlideinWMS-like default (docs/frontend.md explains
the arithmetic): ramp-up attenuation 3, idle reserve 5, 100 idle pilots per
entry, running factor 1.15, and curbs that halve a request as a limit nears.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from glidewms import classads
from glidewms.config.tls import TlsChecks
from glidewms.config.values import http_url, one_line
from glidewms.protocol import RemovalStage

# Names travel in URLs, file names and pilot options. pydantic's `pattern` is a Rust
# regex, where `$` is the end of the text (unlike Python's re.match, where it also
# matches before a trailing newline): "main\n" is refused (tests/unit/test_frontend_*).
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
GROUP_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"


class Source(BaseModel):
    """A pool or a factory this frontend talks to."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN, description="short name used by groups and explain")
    url: str = Field(description="base URL, http(s)://host:port")
    token_file: Path | None = Field(
        None, description="token for this service (frontend scope); default the frontend's own"
    )

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return http_url(value, "url")


class OverflowConfig(BaseModel):
    """Jobs idle longer than `after_seconds` may also go to entries outside their
    desired sites, as CMS overflow does."""

    model_config = ConfigDict(extra="forbid")

    after_seconds: float = Field(3600.0, gt=0, description="idle this long before overflowing")
    match_expr: str = Field(
        "true", description="ClassAd, MY = job, TARGET = entry: where old jobs may overflow to"
    )
    start_expr: str = Field(
        "true", description="ClassAd, MY = pilot slot, TARGET = job: what overflowing pilots accept"
    )

    @field_validator("match_expr", "start_expr")
    @classmethod
    def _parses(cls, value: str) -> str:
        classads.parse_expr(value)
        return value


class GroupConfig(BaseModel):
    """One frontend group: which jobs, which entries, how many pilots."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field("main", pattern=GROUP_PATTERN, description="group name")
    pool: str | None = Field(
        None,
        description="name of the pool (in `pools`) whose jobs this group serves; "
        "default the first pool",
    )
    pools: list[str] | None = Field(
        None,
        min_length=2,
        max_length=8,
        description="several pools (names in `pools`) whose jobs this group serves with "
        "the same pilots, each pilot serving them all; instead of `pool`",
    )
    pool_shares: list[int] | None = Field(
        None,
        description="with `pools`: each pool's share of the pilots (1-999), in its order; "
        "default equal",
    )
    factories: list[str] | None = Field(
        None, description="names of the factories (in `factories`) asked; default all"
    )
    match_expr: str = Field(
        "true",
        description="ClassAd expression, MY = the job's autocluster, TARGET = the entry; "
        "together with the job's own Requirements it decides where its pilots go",
    )
    start_expr: str | None = Field(
        None,
        description="ClassAd Start given to this group's pilots (MY = slot, TARGET = job); "
        "sent per entry as `start_expr`",
    )
    job_constraint: str = Field(
        "true",
        description="ClassAd constraint on autoclusters (Owner is set per owner): "
        "which jobs this group serves",
    )
    entry_constraint: str = Field(
        "true", description="ClassAd constraint on entry ads: which entries this group may use"
    )
    container_image: str | None = Field(
        None,
        description="default container image for jobs on this group's pilots; "
        "sent per entry as `container_image`",
    )
    demand_count: Literal["proportional", "straight"] = Field(
        "proportional", description="a job matching k entries counts 1/k at each, or 1 at each"
    )
    # pressure
    ramp_up_attenuation: float = Field(
        3.0, ge=1.0, description="ask for 1/N of the missing pilots per cycle"
    )
    reserve_idle: int = Field(5, ge=0, description="extra idle pilots for jobs idle long")
    old_idle_seconds: float = Field(600.0, ge=0, description="a job idle this long is old")
    max_idle_per_entry: int = Field(100, ge=0, description="most idle pilots asked at one entry")
    running_factor: float = Field(1.15, ge=1.0, description="max running = demand x factor")
    max_running_per_entry: int = Field(10000, ge=0, description="pilots alive at one entry")
    max_idle_pilots_per_entry: int = Field(
        100, ge=0, description="no new pilots while this many are idle or starting at the entry"
    )
    curb_idle_pilots_per_entry: int = Field(
        5, ge=0, description="halve the request from this many idle or starting pilots"
    )
    max_pilots_per_group: int = Field(100000, ge=0, description="pilots of the group, all entries")
    curb_pilots_per_group: int = Field(90000, ge=0, description="halve the request from here")
    max_idle_pilots_per_group: int = Field(
        1000, ge=0, description="idle or starting pilots of the group, all entries"
    )
    curb_idle_pilots_per_group: int = Field(200, ge=0, description="halve the request from here")
    # removal
    max_removal: RemovalStage = Field(
        RemovalStage.IDLE,
        description="furthest removal stage: NO, WAIT, IDLE or ALL (ALL removes "
        "running pilots: only when the group allows it here)",
    )
    removal_margin: int = Field(0, ge=0, description="pilots kept beyond the excess when removing")
    zero_demand_confirm_cycles: int = Field(
        3, ge=1, description="cycles a drop to zero demand must last before any removal"
    )
    removal_escalate_cycles: int = Field(
        3, ge=1, description="cycles in WAIT (then IDLE) before the next stage"
    )
    overflow: OverflowConfig | None = Field(None, description="null: no overflow")
    # size of `auto` entries until one of their pilots registers
    auto_cpus: int = Field(1, ge=1, description="cores assumed for an entry with cpus: auto")
    auto_memory: int = Field(2048, ge=1, description="MB assumed for an entry with memory: auto")
    auto_disk: int = Field(102400, ge=1, description="MB assumed for an entry with disk: auto")
    # credentials
    pilot_token_lifetime: float = Field(
        4 * 3600.0, gt=60, description="seconds; the pool may shorten it"
    )
    pilot_token_renew_fraction: float = Field(
        0.5, gt=0, lt=1, description="renew when less than this fraction of the life is left"
    )
    vo_scripts: Path | None = Field(
        None,
        description="directory of the group's VO validation scripts with a scripts.list "
        "(every line a `group` one): built into a signed stage the frontend serves to the "
        "group's pilots",
    )

    @field_validator("vo_scripts")
    @classmethod
    def _vo_dir(cls, value: Path | None) -> Path | None:
        if value is not None and not (value / "scripts.list").is_file():
            raise ValueError(f"expected a directory holding a scripts.list, got {value}")
        return value

    @field_validator("match_expr", "start_expr", "job_constraint", "entry_constraint")
    @classmethod
    def _parses(cls, value: str | None) -> str | None:
        if value is not None:
            classads.parse_expr(value)  # ClassAdError (a ValueError) quotes the bad text
        return value

    @field_validator("start_expr", "container_image")
    @classmethod
    def _pilot_line(cls, value: str | None) -> str | None:
        """Both reach the pilots' command line and glidein_config: one line, no control
        character (the factory refuses them too; here the operator hears it first)."""
        if value is not None:
            one_line(value, "a value given to pilots")
            if not value.strip():
                raise ValueError("must not be blank")
        return value


class FrontendConfig(TlsChecks):
    """`glidewms frontend --config frontend.yaml`."""

    model_config = ConfigDict(extra="forbid")

    listen_host: str = Field("127.0.0.1", description="address of the status API")
    listen_port: int = Field(9621, ge=0, le=65535, description="0 picks a free port")
    url_file: Path | None = Field(None, description="where to write the URL once listening")
    tls_cert: Path | None = Field(
        None, description="PEM certificate (chain) to serve HTTPS with; null: plain HTTP"
    )
    tls_key: Path | None = Field(
        None, validate_default=True, description="PEM private key of tls_cert (with tls_cert)"
    )
    ca_file: Path | None = Field(
        None,
        description="PEM CA bundle the pools' and factories' certificates are verified "
        "against; null: the system store",
    )
    max_body_bytes: int = Field(64 * 1024, ge=1024, description="largest request body")
    public_url: str | None = Field(
        None,
        description="the URL pilots reach this frontend at (its VO stages); default the "
        "listening address",
    )
    state_dir: Path = Field(Path("glidewms-state/frontend"), description="this frontend's files")
    timeseries_seconds: float = Field(
        60.0,
        ge=0,
        le=86400,
        description="sample the time series the web console plots every this many "
        "seconds, into state_dir/timeseries.sqlite (0: off; docs/operations.md)",
    )
    issuer_public_key: Path | None = Field(
        None, description="verifies tokens (default state_dir/../keys/issuer.pub)"
    )
    pilot_issuer_public_key: Path | None = Field(
        None,
        description="verifies pilot tokens only (default state_dir/../keys/pilot_issuer.pub "
        "if it exists)",
    )
    pool_url: str = Field(
        "http://127.0.0.1:9618", description="the pool, when `pools` is empty (named `pool`)"
    )
    factory_url: str = Field(
        "http://127.0.0.1:9620",
        description="the factory, when `factories` is empty (named `factory`)",
    )
    pools: list[Source] = Field(default_factory=list, description="pools watched; see Source")
    factories: list[Source] = Field(default_factory=list, description="factories asked")
    token_file: Path | None = Field(
        None, description="this frontend's own token (frontend scope); default state_dir/token"
    )
    cycle_seconds: float = Field(10.0, gt=0, description="seconds between decisions")
    http_timeout: float = Field(10.0, gt=0, description="per query to a pool or factory")
    explain_history: int = Field(
        5000,
        ge=1,
        le=1_000_000,
        description="explanation records kept per group and entry, at most (a record "
        "covers one cycle, or a run of cycles that decided alike); before 2026-12 this "
        "counted cycles, default 20",
    )
    explain_history_hours: float = Field(
        24.0,
        gt=0,
        le=24 * 90,
        description="hours explanations are kept (in state_dir/explain.jsonl across "
        "restarts), unless `explain_history` records come first",
    )
    max_pilots_global: int = Field(100000, ge=0, description="pilots of all groups")
    curb_pilots_global: int = Field(90000, ge=0, description="halve requests from here")
    max_idle_pilots_global: int = Field(1000, ge=0, description="idle or starting, all groups")
    curb_idle_pilots_global: int = Field(200, ge=0, description="halve requests from here")
    groups: list[GroupConfig] = Field(
        default_factory=lambda: [GroupConfig()], description="default: one group, main"
    )

    @field_validator("public_url", "pool_url", "factory_url")
    @classmethod
    def _urls(cls, value: str | None, info: ValidationInfo) -> str | None:
        """Pool and factory URLs go to the factory and on to every pilot's command line
        (and glidein_config): parsed, one line, no blanks."""
        return None if value is None else http_url(value, str(info.field_name))

    @model_validator(mode="after")
    def _references(self) -> FrontendConfig:
        pools = {p.name for p in self.all_pools()}
        factories = {f.name for f in self.all_factories()}
        seen: set[str] = set()
        for i, group in enumerate(self.groups):
            if group.name in seen:
                raise ValueError(f"groups[{i}].name: {group.name!r} is used twice")
            seen.add(group.name)
            if group.pool is not None and group.pool not in pools:
                raise ValueError(
                    f"groups[{i}].pool: no pool named {group.pool!r} (known: {sorted(pools)})"
                )
            if group.pools is not None:
                if group.pool is not None:
                    raise ValueError(f"groups[{i}]: give pool or pools, not both")
                for name in group.pools:
                    if name not in pools:
                        raise ValueError(
                            f"groups[{i}].pools: no pool named {name!r} (known: {sorted(pools)})"
                        )
                if len(set(group.pools)) != len(group.pools):
                    raise ValueError(f"groups[{i}].pools: a pool is named twice")
            shares = group.pool_shares
            if shares is not None and (
                group.pools is None
                or len(shares) != len(group.pools)
                or not all(1 <= s <= 999 for s in shares)
            ):
                raise ValueError(
                    f"groups[{i}].pool_shares: one integer 1-999 per pool of groups[{i}].pools"
                )
            for name in group.factories or []:
                if name not in factories:
                    raise ValueError(
                        f"groups[{i}].factories: no factory named {name!r} "
                        f"(known: {sorted(factories)})"
                    )
        for kind, items in (("pools", self.pools), ("factories", self.factories)):
            names = [s.name for s in items]
            if len(names) != len(set(names)):
                raise ValueError(f"{kind}: names must be unique, got {names}")
        return self

    def resolved_issuer_public_key(self) -> Path:
        return self.issuer_public_key or Path(self.state_dir).parent / "keys" / "issuer.pub"

    def resolved_pilot_issuer_public_key(self) -> Path | None:
        default = Path(self.state_dir).parent / "keys" / "pilot_issuer.pub"
        return self.pilot_issuer_public_key or (default if default.is_file() else None)

    def all_pools(self) -> list[Source]:
        return self.pools or [Source(name="pool", url=self.pool_url)]

    def all_factories(self) -> list[Source]:
        return self.factories or [Source(name="factory", url=self.factory_url)]

    def group_pool(self, group: GroupConfig) -> Source:
        pools = self.all_pools()
        wanted = group.pools[0] if group.pools else group.pool
        return next((p for p in pools if p.name == wanted), pools[0])

    def group_pools(self, group: GroupConfig) -> list[tuple[Source, int]]:
        """The pools the group's pilots serve, with their shares; the first is
        `group_pool`'s. One pool, share 1, for a group without `pools`."""
        if not group.pools:
            return [(self.group_pool(group), 1)]
        by_name = {p.name: p for p in self.all_pools()}
        shares = group.pool_shares or [1] * len(group.pools)
        return [(by_name[n], s) for n, s in zip(group.pools, shares, strict=True)]

    def group_factories(self, group: GroupConfig) -> list[Source]:
        wanted = group.factories
        return [f for f in self.all_factories() if wanted is None or f.name in wanted]
