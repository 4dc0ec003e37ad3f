"""The pilot's decisions as pure functions: claim, wait or exit; heartbeat pace.

Kept apart from the threads and HTTP in ``agent`` so that every case (idle
timeout, lifetime, drain, full slot) is a row in a table-driven test.
"""

from __future__ import annotations

import base64
import json
import math
from dataclasses import dataclass

MAX_CLAIM_WAIT = 20.0  # seconds a claim long-poll may last
# Exit reasons are those of docs/protocol.md. A drain asked by the pool has no
# reason of its own there: it is reported as the benign retirement, with a detail.
DRAIN_REASON = "idle_timeout"
EXIT_CODES = {"idle_timeout": 0, "lifetime": 0, "error": 1, "lost": 3, "corruption": 3,
              "validation_failed": 4, "black_hole": 5}


def exit_code(reason: str) -> int:
    """0 for a pilot that retired normally, non-zero otherwise (signal sets its own)."""
    return EXIT_CODES.get(reason, 1)


@dataclass(frozen=True)
class Step:
    """What the claim loop does next: ``claim`` or ``wait`` for ``seconds``, or ``exit``."""

    action: str
    seconds: float = 0.0
    reason: str = ""
    detail: str = ""


@dataclass(frozen=True)
class State:
    """The facts a decision needs (times are time.monotonic() readings).

    ``deadline`` is the retire time (no new job after it), ``die_at`` the time
    the pilot leaves whatever runs. ``stop_reason`` is set when the pilot must
    take no new work for a reason of its own (a periodic validation failed, a
    black hole was detected): it exits with that reason once no job runs.
    """

    now: float
    idle_since: float
    idle_timeout: float
    deadline: float
    draining: bool
    running: int
    free_cpus: int
    free_memory: int
    die_at: float = math.inf
    tail_timeout: float | None = None
    jobs_run: int = 0
    stop_reason: str = ""
    stop_detail: str = ""


def next_step(s: State, lifetime: float) -> Step:
    """Decide between claiming, waiting and exiting.

    - Past the die time: exit (lifetime) whatever runs; the jobs are vacated.
    - Draining, stopped or past the retire time: no new claims; exit once no
      job runs (waiting at most until the die time).
    - No job running for the idle limit: exit (idle_timeout). The limit is
      ``idle_timeout`` until a first job ran, ``tail_timeout`` after.
    - A long-poll never outlasts the idle limit, even while jobs run: when
      the last one ends the idle clock starts, and the pilot must stop on time.
    - A full slot waits (a finishing job wakes the loop up).
    """
    if s.now >= s.die_at:
        return Step("exit", reason="lifetime",
                    detail=f"die time reached ({lifetime:.0f}s lifetime minus margin)")
    if s.draining or s.stop_reason or s.now >= s.deadline:
        if s.running:
            return Step("wait", max(0.001, min(MAX_CLAIM_WAIT, s.die_at - s.now)))
        if s.stop_reason:
            return Step("exit", reason=s.stop_reason, detail=s.stop_detail)
        if s.draining:
            return Step("exit", reason=DRAIN_REASON, detail="drain requested by the pool")
        return Step("exit", reason="lifetime", detail="retire time reached "
                                                     f"({lifetime:.0f}s lifetime)")
    idle_limit = s.idle_timeout if not s.jobs_run or s.tail_timeout is None else s.tail_timeout
    wait = min(MAX_CLAIM_WAIT, idle_limit, s.deadline - s.now)
    if not s.running:
        idle_left = s.idle_since + idle_limit - s.now
        if idle_left <= 0:
            kind = "tail " if s.jobs_run and s.tail_timeout is not None else ""
            return Step("exit", reason="idle_timeout", detail=f"no job for {idle_limit:.0f}s "
                                                              f"({kind}idle timeout)")
        wait = min(wait, idle_left)
    if s.free_cpus < 1 or s.free_memory < 1:  # full: look again at the retire time at the latest
        return Step("wait", max(0.001, min(MAX_CLAIM_WAIT, s.deadline - s.now)))
    return Step("claim", max(wait, 0.001))  # a last look at the very end of the idle time


def gather_wait(running: int, free_cpus: int, batch: int, waited: float,
                gather: float) -> float:
    """Seconds to wait before a claim call, so that one turn carries more jobs.

    A pilot whose jobs end one by one would otherwise make one pool call per
    ended job, and a call costs the pool about as much as six jobs in it. So
    while jobs still run and fewer than a full turn's cores (``batch``) are
    free, the pilot waits up to ``gather`` seconds for more of them to end,
    counted from when the first became free. An idle pilot never waits: a
    new job's dispatch latency is not touched. (Measured end to end, 2 x 16
    cores of /bin/true: 8 jobs a turn with "half a turn or 2 ms", 12 with
    "a full turn or 5 ms", and ~8% more jobs/s; 10 ms was no better.)
    """
    if running < 1 or free_cpus >= max(1, batch) or waited >= gather:
        return 0.0
    return gather - waited


def retire_and_die(lifetime: float, die_margin: float, retire_before: float, spread: float,
                   draw: float) -> tuple[float, float]:
    """(retire, die) offsets from the pilot's start, in seconds.

    ``draw`` in [0, 1) spreads the retire time of pilots of one batch over
    ``spread`` seconds, so that they do not all stop claiming together. The
    retire time never falls before the start.
    """
    die = max(0.0, lifetime - die_margin)
    return max(0.0, die - retire_before - draw * spread), die


def black_hole(failures: list[float], now: float, jobs: int, window: float) -> bool:
    """True when ``jobs`` failures ended within the last ``window`` seconds (0 = off)."""
    if jobs <= 0:
        return False
    return sum(1 for t in failures if now - t <= window) >= jobs


def job_fits(max_runtime: float | None, now: float, die_at: float) -> bool:
    """A job that says how long it runs must end before the pilot dies."""
    return max_runtime is None or now + max_runtime <= die_at


def heartbeat_interval(pool_seconds: float, lease_seconds: float, local_seconds: float) -> float:
    """How often to heartbeat: the pool's pace, or faster, never slower.

    A local setting (GLIDEIN_Heartbeat) may only shorten it, a third of the
    lease leaves room for two lost heartbeats, and one second is the floor.
    """
    interval = pool_seconds or local_seconds or 60.0
    if local_seconds:
        interval = min(interval, local_seconds)
    if lease_seconds:
        interval = min(interval, lease_seconds / 3)
    return max(1.0, interval)


TOKEN_RETIRE_MARGIN = 120.0  # retire this long before an unrenewed token expires


def token_expiry(token: str) -> float | None:
    """The ``exp`` claim of a JWT, read and not verified (the services verify it)."""
    parts = token.strip().split(".")
    if len(parts) != 3:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, TypeError):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    return float(exp) if isinstance(exp, (int, float)) and math.isfinite(exp) else None


def token_retire(deadline: float, expires: float | None, now_epoch: float, now: float,
                 margin: float = TOKEN_RETIRE_MARGIN) -> float:
    """The retire time (monotonic) capped ``margin`` seconds before the token expires.

    The frontend renews pilot tokens and the factory rewrites the token file;
    the pilot reads it on every request, so a renewed token moves the cap
    later again. One that is not renewed must not leave the pilot holding
    jobs it can no longer report on.
    """
    if expires is None:
        return deadline
    return min(deadline, now + (expires - now_epoch) - margin)
