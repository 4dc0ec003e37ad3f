"""Read ``glidein_config``: the ``KEY VALUE`` file the bootstrap writes.

The format follows GlideinWMS: one key per line, the value is the rest of the
line (it may contain spaces), ``#`` starts a comment line, and a key given
twice keeps its last value (GlideinWMS scripts append to override).

Lines end at ``\n`` only, and a line holding any other control character
(CR, VT, FF, the file/group/record separators, NEL, U+2028...: each ends a
line for ``str.splitlines``, or for some other reader) is refused, as is a
file that is not UTF-8: a value smuggled past the bootstrap's own checks
cannot turn into extra lines here either (``UnsafeValue``; the pilot exits
with a validation failure). Tabs separate like spaces. Files are read with
``newline=""``: Python's universal newlines would turn a lone CR into a line
end. ``config_line`` is the writer's side of the same rule.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from typing import Union

AttrValue = Union[bool, int, float, str]

DEFAULT_IDLE_TIMEOUT = 1200
DEFAULT_OUTAGE_TOLERANCE = 900  # seconds; the bootstrap's default too
DEFAULT_LIFETIME = 86400

_INT = re.compile(r"[+-]?[0-9]+")
_FLOAT = re.compile(r"[+-]?([0-9]+\.[0-9]*|\.[0-9]+|[0-9]+)([eE][+-]?[0-9]+)?")
# Every control character but tab (a separator, as a blank is).
_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")


class ConfigError(ValueError):
    """glidein_config is missing a required key or holds an unusable value."""


class UnsafeValue(ConfigError):
    """A glidein_config line (or a value to write there) holds a control character."""


def control_character(text: str) -> str | None:
    """The first control character (tab aside) of ``text``, escaped, or None."""
    found = _CONTROL.search(text)
    return None if found is None else repr(found.group())[1:-1]


def config_line(key: str, value: str) -> str:
    """``KEY VALUE\n`` for glidein_config; UnsafeValue unless both fit on one line."""
    if not key or any(ch.isspace() for ch in key) or key.startswith("#"):
        raise UnsafeValue(f"cannot write key {key!r} to glidein_config")
    bad = control_character(key + value)
    if bad is not None:
        raise UnsafeValue(f"{key}: control character {bad} cannot be written to glidein_config")
    return f"{key} {value}\n"


def parse_lines(text: str) -> dict[str, str]:
    """Parse ``KEY VALUE`` lines; a later line for the same key wins; UnsafeValue
    for a line with a control character (tab aside)."""
    values: dict[str, str] = {}
    for number, raw in enumerate(text.split("\n"), 1):
        bad = control_character(raw)
        if bad is not None:
            key = raw.split(None, 1)[0] if raw.split() else ""
            raise UnsafeValue(f"line {number} (key {key[:64]!r}): control character {bad}")
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(None, 1)
        values[parts[0]] = parts[1].strip() if len(parts) > 1 else ""
    return values


def typed_value(text: str) -> AttrValue:
    """Give an attribute the ClassAd type its text reads as.

    Integers and floats become numbers and ``true``/``false`` (any case)
    become booleans, so that a slot's ``Requirements`` can compare them;
    everything else, including non-finite floats (not valid JSON), stays a
    string. Python's looser ``int()`` syntax (``1_000``) is not accepted.
    """
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if _INT.fullmatch(text.strip()):
        return int(text)
    if _FLOAT.fullmatch(text.strip()):
        number = float(text)
        if math.isfinite(number):
            return number
    return text


def _seconds(values: dict[str, str], key: str, default: int) -> int:
    raw = values.get(key, "")
    if raw == "":
        return default
    if not _INT.fullmatch(raw) or int(raw) < 0:
        raise ConfigError(f"{key}: expected a number of seconds, got {raw!r}")
    return int(raw)


def _amount(values: dict[str, str], key: str) -> int | None:
    """A resource amount: None for ``auto`` (detect it), else a positive int."""
    raw = values.get(key, "auto") or "auto"
    if raw.lower() == "auto":
        return None
    if not _INT.fullmatch(raw) or int(raw) <= 0:
        raise ConfigError(f"{key}: expected 'auto' or a positive integer, got {raw!r}")
    return int(raw)


@dataclass
class GlideinConfig:
    """What the agent needs from glidein_config, validated and typed."""

    pool_url: str
    glidein_id: str
    token_file: str
    work_dir: str
    factory_url: str = ""
    ca_file: str = ""  # PEM bundle https services are verified against; "" = system store
    entry: str = ""
    site: str = ""
    idle_timeout: int = DEFAULT_IDLE_TIMEOUT
    lifetime: int = DEFAULT_LIFETIME
    cpus: int | None = None
    memory: int | None = None
    heartbeat: int | None = None
    attrs: dict[str, AttrValue] = field(default_factory=dict)
    # Lifetime (docs/glidein.md): die at lifetime - die_margin; retire (no new
    # jobs) retire_before seconds earlier, minus a random share of retire_spread.
    die_margin: int = 0
    retire_before: int = 0
    retire_spread: int = 0
    tail_timeout: int = DEFAULT_IDLE_TIMEOUT  # idle limit once a job has run
    # Black-hole protection: black_hole_jobs failures within black_hole_window
    # seconds stop the pilot, which then holds the node for black_hole_hold.
    black_hole_jobs: int = 0
    black_hole_window: int = 600
    black_hole_hold: int = 0
    validation_timeout: int = 120
    # How long an unreachable pool (or factory) is waited for at registration
    # (docs/glidein.md, "Outages"): the bootstrap's --outage-tolerance.
    outage_tolerance: int = DEFAULT_OUTAGE_TOLERANCE
    config_path: str = ""
    values: dict[str, str] = field(default_factory=dict)


def load_config(path: str) -> GlideinConfig:
    """Read and validate the glidein_config at ``path``."""
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            text = handle.read()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise UnsafeValue(f"{path} is not UTF-8 text: {exc}") from None
    cfg = build_config(parse_lines(text), os.path.dirname(os.path.abspath(path)))
    cfg.config_path = os.path.abspath(path)
    return cfg


def build_config(values: dict[str, str], default_work_dir: str) -> GlideinConfig:
    """Turn parsed glidein_config values into a GlideinConfig.

    The token file falls back to ``$GLIDEIN_TOKEN_FILE`` (the bootstrap's own
    input) so that a hand-written config need not repeat it.
    """
    for key in ("GLIDEIN_Pool_URL", "GLIDEIN_Id"):
        if not values.get(key):
            raise ConfigError(f"{key} is required")
    token_file = values.get("GLIDEIN_Token_File") or os.environ.get("GLIDEIN_TOKEN_FILE", "")
    if not token_file:
        raise ConfigError("GLIDEIN_Token_File is required (or GLIDEIN_TOKEN_FILE in the env)")
    attrs: dict[str, AttrValue] = {}
    for name in filter(None, (n.strip() for n in values.get("GLIDEIN_Attrs", "").split(","))):
        if name not in values:
            raise ConfigError(f"GLIDEIN_Attrs lists {name} but no {name} line is given")
        attrs[name] = typed_value(values[name])
    lifetime = _seconds(values, "GLIDEIN_Lifetime", DEFAULT_LIFETIME)
    idle_timeout = _seconds(values, "GLIDEIN_Idle_Timeout", DEFAULT_IDLE_TIMEOUT)
    die_margin = _seconds(values, "GLIDEIN_Die_Margin", min(300, lifetime // 20))
    if die_margin >= lifetime > 0:
        raise ConfigError(
            f"GLIDEIN_Die_Margin ({die_margin}s) must be shorter than "
            f"GLIDEIN_Lifetime ({lifetime}s)"
        )
    return GlideinConfig(
        pool_url=values["GLIDEIN_Pool_URL"].rstrip("/"),
        glidein_id=values["GLIDEIN_Id"],
        token_file=token_file,
        work_dir=values.get("GLIDEIN_Work_Dir") or default_work_dir,
        factory_url=values.get("GLIDEIN_Factory_URL", "").rstrip("/"),
        ca_file=values.get("GLIDEIN_CA_File", ""),
        entry=values.get("GLIDEIN_Entry_Name", ""),
        site=values.get("GLIDEIN_Site", ""),
        idle_timeout=idle_timeout,
        lifetime=lifetime,
        cpus=_amount(values, "GLIDEIN_Cpus"),
        memory=_amount(values, "GLIDEIN_Memory"),
        heartbeat=_seconds(values, "GLIDEIN_Heartbeat", 0) or None,
        attrs=attrs,
        die_margin=die_margin,
        retire_before=_seconds(values, "GLIDEIN_Retire_Before", 0),
        retire_spread=_seconds(values, "GLIDEIN_Retire_Spread", min(300, lifetime // 20)),
        tail_timeout=_seconds(values, "GLIDEIN_Tail_Timeout", idle_timeout),
        black_hole_jobs=_seconds(values, "GLIDEIN_Black_Hole_Jobs", 10),
        black_hole_window=_seconds(values, "GLIDEIN_Black_Hole_Window", 120),
        black_hole_hold=_seconds(values, "GLIDEIN_Black_Hole_Hold", 600),
        validation_timeout=_seconds(values, "GLIDEIN_Validation_Timeout", 120),
        outage_tolerance=_seconds(values, "GLIDEIN_Outage_Tolerance", DEFAULT_OUTAGE_TOLERANCE),
        values=dict(values),
    )
