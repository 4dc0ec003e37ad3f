"""Entries generated from a site catalogue (CRIC-style JSON) and operator overrides.

A catalogue lists sites, their computing elements (CEs) and the queues behind
them, as WLCG's CRIC does. The factory does not trust it blindly: an
operator's overrides file says which CE flavours map to which backend (and
with which contact settings), which sites are wanted, and per entry what to
change or drop. The merge is *defaults < catalogue < overrides*:

```yaml
defaults: {max_pilots: 20, max_idle: 5, idle_timeout: 900}   # under every entry
flavours:                    # CE flavour -> the entry fields that reach it
  HTCONDOR-CE: {condor: {x509: /etc/glidewms/proxy}}   # over the default (below)
  SSH: {backend: ssh, ssh: {user: pilots, key_file: /etc/glidewms/keys/site}}
  ARC-CE: null               # no entries for this flavour
include: ["T2_*"]            # site name patterns (fnmatch); default all
exclude: ["T2_XX_*"]
entries:                     # per generated entry name: fields to change; null drops it
  T2_DE_DESY_arc-ce01_grid: {max_pilots: 100}
```

An HTCondor-CE maps to the `htcondor` backend by default (`condor.ce_host`
and `ce_port` from the CE's endpoint): its mapping in `flavours:`, if any,
is merged over that default unless it names another backend. Other flavours
need a mapping.

Everything here is pure: `generate()` returns entries as plain dicts (each
checked by `EntryConfig`, so a bad override is named with its entry) and
what it skipped and why; `diff_entries()` says what applying would change.
"""

from __future__ import annotations

import difflib
import fnmatch
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from glidewms.config.factory import EntryConfig
from glidewms.config.loader import ConfigError, format_validation_error, load_yaml

SAMPLE = Path(__file__).resolve().parent.parent / "data" / "cric_sample.json"
ACTIVE = "ACTIVE"
UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


class Queue(BaseModel):
    """A batch queue behind a CE, with the size of one pilot slot there."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(min_length=1)
    state: str = ACTIVE
    cores: int = Field(default=1, ge=1)
    memory_mb: int = Field(default=2000, ge=1)
    walltime_minutes: int = Field(default=1440, ge=1)
    gpus: int = Field(default=0, ge=0)
    gpu_model: str | None = None
    os: str | None = None
    arch: str | None = None


class ComputingElement(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str = Field(min_length=1)
    flavour: str = Field(min_length=1)
    endpoint: str = Field(min_length=1)
    jobmanager: str | None = None
    state: str = ACTIVE
    queues: list[Queue] = Field(default_factory=list)


class Site(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str = Field(min_length=1)
    tier_level: int | None = None
    country: str | None = None
    country_code: str | None = None
    state: str = ACTIVE
    vos: list[str] = Field(default_factory=list)
    ces: list[ComputingElement] = Field(default_factory=list)


class Catalogue(BaseModel):
    model_config = ConfigDict(extra="allow")

    sites: dict[str, Site]


class Overrides(BaseModel):
    """The operator's file (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")

    defaults: dict[str, Any] = Field(default_factory=dict)
    flavours: dict[str, dict[str, Any] | None] = Field(default_factory=dict)
    include: list[str] = Field(default_factory=lambda: ["*"])
    exclude: list[str] = Field(default_factory=list)
    entries: dict[str, dict[str, Any] | None] = Field(default_factory=dict)


def load_catalogue(path: Path | None = None) -> Catalogue:
    """Read a catalogue JSON (default: the shipped sample); errors name the file and key."""
    path = path or SAMPLE
    try:
        data = json.loads(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}:{exc.lineno}: not JSON: {exc.msg}") from None
    try:
        return Catalogue.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(str(path), exc)) from None


def load_overrides(path: Path | None) -> Overrides:
    if path is None:
        return Overrides()
    try:
        return Overrides.model_validate(load_yaml(path) or {})
    except ValidationError as exc:
        raise ConfigError(format_validation_error(str(path), exc)) from None


def deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """`top` over `base`; mappings merge key by key, anything else is replaced."""
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def entry_name(site: str, ce: str, queue: str) -> str:
    """`<site>_<first label of the CE host>_<queue>`, path-safe, at most 64 characters."""
    host = ce.split(":")[0].split(".")[0]
    name = UNSAFE.sub("-", f"{site}_{host}_{queue}").strip("-_")
    return name[:64]


def catalogue_fields(site: Site, ce: ComputingElement, queue: Queue) -> dict[str, Any]:
    """What the catalogue says about one entry (before the flavour's and the operator's)."""
    attributes: dict[str, Any] = {
        "GLIDEIN_CE": ce.endpoint,
        "GLIDEIN_CE_Flavour": ce.flavour,
        "GLIDEIN_Site_Tier": site.tier_level or 0,
    }
    for key, value in (
        ("GLIDEIN_Country", site.country_code),
        ("GLIDEIN_OS", queue.os),
        ("GLIDEIN_Arch", queue.arch),
        ("GLIDEIN_GPU_Model", queue.gpu_model),
        ("GLIDEIN_Batch_System", ce.jobmanager),
    ):
        if value:
            attributes[key] = value
    if site.vos:
        attributes["GLIDEIN_Supported_VOs"] = ",".join(site.vos)
    fields: dict[str, Any] = {"site": site.name, "cpus": queue.cores, "memory": queue.memory_mb}
    if queue.gpus:
        # a GPU queue: asked of the batch system and announced to frontends as the
        # entry's GPUs (observe.entry_size); what pilots offer is what they detect
        fields["gpus"] = queue.gpus
    fields.update(
        {
            "walltime": queue.walltime_minutes * 60,
            "attributes": attributes,
            "batch": {"queue": queue.name},
        }
    )
    return fields


def default_flavour(ce: ComputingElement) -> dict[str, Any] | None:
    """The entry fields that reach a CE when the overrides do not say otherwise."""
    if ce.flavour.upper() != "HTCONDOR-CE":
        return None
    host, _, port = ce.endpoint.partition(":")
    condor: dict[str, Any] = {"ce_host": host or ce.name}
    if port.isdigit():
        condor["ce_port"] = int(port)
    return {"backend": "htcondor", "condor": condor}


def flavour_fields(ce: ComputingElement, overrides: Overrides) -> dict[str, Any] | None:
    """The operator's mapping of the CE's flavour over the default one (None: skip)."""
    default = default_flavour(ce)
    if ce.flavour not in overrides.flavours:
        return default
    mapped = overrides.flavours[ce.flavour]
    if mapped is None or default is None:
        return mapped
    if mapped.get("backend", default["backend"]) != default["backend"]:
        return mapped  # another backend: the default's contact does not apply
    return deep_merge(default, mapped)


@dataclass
class Generated:
    entries: list[dict[str, Any]]
    skipped: list[str] = field(default_factory=list)  # "<what>: <why>"


def _wanted(name: str, overrides: Overrides) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in overrides.include) and not any(
        fnmatch.fnmatchcase(name, p) for p in overrides.exclude
    )


def generate(catalogue: Catalogue, overrides: Overrides, source: str = "catalogue") -> Generated:
    """Entries for every active queue of every active CE of every wanted active site.

    A CE whose flavour has no mapping (or maps to null) is skipped with its
    reason; an entry the overrides set to null is dropped. Each result is
    validated as an `EntryConfig`: ConfigError names the entry and the key.
    """
    out = Generated([])
    names: set[str] = set()  # entries made
    seen: set[str] = set()  # entry names the catalogue has, made or not
    for site in sorted(catalogue.sites.values(), key=lambda s: s.name):
        if not _wanted(site.name, overrides):
            continue
        if site.state != ACTIVE:
            out.skipped.append(f"site {site.name}: state {site.state}")
            continue
        for ce in site.ces:
            if ce.state != ACTIVE:
                out.skipped.append(f"CE {ce.name} ({site.name}): state {ce.state}")
                continue
            flavour = flavour_fields(ce, overrides)
            if flavour is None:
                why = (
                    "mapped to null"
                    if ce.flavour in overrides.flavours
                    else "no backend for this flavour (map it under flavours:)"
                )
                out.skipped.append(f"CE {ce.name} ({site.name}): {ce.flavour}: {why}")
                continue
            for queue in ce.queues:
                name = entry_name(site.name, ce.name, queue.name)
                seen.add(name)
                if queue.state != ACTIVE:
                    out.skipped.append(f"entry {name}: queue state {queue.state}")
                    continue
                if name in overrides.entries and overrides.entries[name] is None:
                    out.skipped.append(f"entry {name}: dropped by the overrides")
                    continue
                if name in names:
                    raise ConfigError(f"{source}: two queues make the entry name {name!r}")
                names.add(name)
                merged = deep_merge(
                    deep_merge(
                        deep_merge(overrides.defaults, catalogue_fields(site, ce, queue)), flavour
                    ),
                    overrides.entries.get(name) or {},
                )
                out.entries.append(_checked({"name": name, **merged}, name))
    unknown = sorted(set(overrides.entries) - seen)
    if unknown:
        out.skipped.append(
            f"overrides for entries the catalogue does not make: {', '.join(unknown)}"
        )
    return out


def _checked(entry: dict[str, Any], name: str) -> dict[str, Any]:
    try:
        EntryConfig.model_validate(entry)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(f"generated entry {name}", exc)) from None
    return entry


@dataclass
class EntryDiff:
    added: list[str]
    removed: list[str]
    changed: dict[str, list[str]]  # entry -> the keys that differ ("batch.queue")
    text: str  # a unified diff of the YAML

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed)


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flat(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def entries_yaml(entries: list[dict[str, Any]]) -> str:
    return yaml.safe_dump(entries, sort_keys=False, default_flow_style=False)


def diff_entries(
    old: list[dict[str, Any]],
    new: list[dict[str, Any]],
    old_name: str = "current",
    new_name: str = "generated",
) -> EntryDiff:
    """What replacing `old` by `new` changes, entry by entry, and as a text diff."""
    before = {e["name"]: e for e in old}
    after = {e["name"]: e for e in new}
    changed: dict[str, list[str]] = {}
    for name in sorted(set(before) & set(after)):
        a, b = _flat(before[name]), _flat(after[name])
        keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        if keys:
            changed[name] = keys
    text = "".join(
        difflib.unified_diff(
            entries_yaml(old).splitlines(keepends=True),
            entries_yaml(new).splitlines(keepends=True),
            old_name,
            new_name,
        )
    )
    return EntryDiff(
        sorted(set(after) - set(before)), sorted(set(before) - set(after)), changed, text
    )


def read_entries(path: Path) -> list[dict[str, Any]]:
    """An entries file as plain dicts ([] when it does not exist yet)."""
    if not path.exists():
        return []
    data = load_yaml(path)
    if data is None:
        return []
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list) or not all(isinstance(e, dict) and "name" in e for e in data):
        raise ConfigError(f"{path}: expected a list of entries (mappings with a name)")
    return data
