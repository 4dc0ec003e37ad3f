"""Concurrency limits: at most N running jobs may hold a named resource.

HTCondor's semantics: a job's ``ConcurrencyLimits`` is a comma (or space)
separated list of ``name[:amount]`` (amount 1 when left out, a fraction
allowed), names case-insensitive. The pool is configured per name (HTCondor's
``NAME_LIMIT``), per prefix of dotted names (``CONCURRENCY_LIMIT_DEFAULT_<prefix>``
for every ``prefix.*`` not named) and with a default for every other name
(``CONCURRENCY_LIMIT_DEFAULT``; unlimited when not set). A job is matched
only if, for each of its names, what running jobs hold plus its own amount
stays within that name's limit.

Usage is counted on running jobs (claims), never stored: the limits a job
holds are those of its autocluster (``ConcurrencyLimits`` is one of its
significant attributes, evaluated against the job at submit), and the queue
index already counts running jobs per autocluster, so what is in use is a
sum over the autoclusters that name limits, and is given back exactly when
a job stops running, whatever the path (exit, eviction, hold, removal, lost
pilot).

Everything here is pure; choosing.py and reports.py hold the state.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

MAX_NAMES = 32  # names one job may hold: bounded before anything is counted
MAX_NAME_CHARS = 128
NAME = re.compile(r"[a-z0-9_][a-z0-9_.\-]{0,127}")
_ENTRY = re.compile(r"([^:\s]+)(?::([^:\s]*))?")


class BadLimits(ValueError):
    """A ConcurrencyLimits value the pool cannot read; the job never runs."""


@dataclass(frozen=True)
class LimitConfig:
    """The pool's limits (PoolConfig's concurrency_* keys, names lower-case)."""

    limits: Mapping[str, float] = field(default_factory=dict)
    default: float | None = None  # None: names not configured are unlimited
    prefix_defaults: Mapping[str, float] = field(default_factory=dict)


def parse(text: str) -> dict[str, float]:
    """``"db, license.matlab:2"`` -> {"db": 1.0, "license.matlab": 2.0}.

    A name given twice adds up (HTCondor charges each mention). Amounts must
    be finite and positive; BadLimits says what is wrong with which entry."""
    out: dict[str, float] = {}
    for raw in re.split(r"[,\s]+", text.strip()):
        if not raw:
            continue
        found = _ENTRY.fullmatch(raw)
        name = found.group(1).lower() if found else ""
        if not found or not NAME.fullmatch(name):
            raise BadLimits(f"{raw[:60]!r} is not a limit name (letters, digits, _ . -)")
        amount = 1.0
        if found.group(2) is not None:
            try:
                amount = float(found.group(2))
            except ValueError:
                raise BadLimits(f"{raw[:60]!r}: the amount is not a number") from None
            if not math.isfinite(amount) or amount <= 0:
                raise BadLimits(f"{raw[:60]!r}: the amount must be a positive number")
        out[name] = out.get(name, 0.0) + amount
        if len(out) > MAX_NAMES:
            raise BadLimits(f"more than {MAX_NAMES} limit names")
    return out


def normalized(wanted: Mapping[str, float]) -> str:
    """The canonical text of parsed limits: equal texts, equal limits."""
    return ",".join(f"{n}:{wanted[n]:g}" for n in sorted(wanted))


def limit_for(name: str, config: LimitConfig) -> float | None:
    """The most of `name` running jobs may hold at once; None: unlimited.
    Its own limit, else its prefix's default (``prefix.rest``), else the
    pool's default."""
    own = config.limits.get(name)
    if own is not None:
        return own
    if "." in name:
        prefix = config.prefix_defaults.get(name.split(".", 1)[0])
        if prefix is not None:
            return prefix
    return config.default


def exceeded(
    wanted: Mapping[str, float], in_use: Mapping[str, float], config: LimitConfig
) -> str | None:
    """The first name (sorted) whose limit one more job wanting `wanted`
    would exceed, or None when it may start."""
    for name in sorted(wanted):
        limit = limit_for(name, config)
        if limit is not None and in_use.get(name, 0.0) + wanted[name] > limit + 1e-9:
            return name
    return None


def in_use(
    running: Mapping[int, int], wanted_by: Mapping[int, Mapping[str, float]]
) -> dict[str, float]:
    """What running jobs hold: per autocluster that names limits, its running
    jobs times its amounts."""
    out: dict[str, float] = {}
    for ac, wanted in wanted_by.items():
        n = running.get(ac, 0)
        if n > 0:
            for name, amount in wanted.items():
                out[name] = out.get(name, 0.0) + n * amount
    return out


def take(in_use: dict[str, float], wanted: Mapping[str, float]) -> None:
    """One more running job holding `wanted` (a turn's choices, as it makes them)."""
    for name, amount in wanted.items():
        in_use[name] = in_use.get(name, 0.0) + amount


def report(
    config: LimitConfig,
    used: Mapping[str, float],
    idle_by_ac: Mapping[int, int],
    wanted_by: Mapping[int, Mapping[str, float]],
    invalid: Iterable[int] = (),
) -> list[dict[str, object]]:
    """Per limit name configured, in use or wanted by idle jobs: its limit,
    what running jobs hold, idle jobs that want it, and how many of those
    cannot start now because of it (their first exceeded name is this one).
    Idle jobs whose ConcurrencyLimits could not be read are under ``!invalid``."""
    names = set(config.limits) | set(used)
    waiting: dict[str, int] = {}
    blocked: dict[str, int] = {}
    for ac, wanted in wanted_by.items():
        idle = idle_by_ac.get(ac, 0)
        if idle <= 0:
            continue
        names.update(wanted)
        for name in wanted:
            waiting[name] = waiting.get(name, 0) + idle
        first = exceeded(wanted, used, config)
        if first is not None:
            blocked[first] = blocked.get(first, 0) + idle
    out: list[dict[str, object]] = [
        {
            "name": name,
            "limit": limit_for(name, config),
            "in_use": used.get(name, 0.0),
            "idle_jobs": waiting.get(name, 0),
            "blocked_jobs": blocked.get(name, 0),
        }
        for name in sorted(names)
    ]
    bad = sum(max(0, idle_by_ac.get(ac, 0)) for ac in invalid)
    if bad:
        out.append(
            {"name": "!invalid", "limit": 0.0, "in_use": 0.0, "idle_jobs": bad, "blocked_jobs": bad}
        )
    return out
