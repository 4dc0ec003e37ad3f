"""The pilot's decisions as pure functions: claim, wait or exit; heartbeat pace.

Kept apart from the threads and HTTP in ``agent`` so that every case (idle
timeout, lifetime, drain, full slot) is a row in a table-driven test.
"""

from __future__ import annotations

import base64
import json
import math
from dataclasses import dataclass
from enum import Enum

MAX_CLAIM_WAIT = 120.0  # seconds a claim long-poll may last (the pool caps it: max_claim_wait)
# A long-poll costs the pool one request per poll; a pilot inside one needs no
# heartbeat (docs/pool.md, leases), so idle pilots of a big pool want long polls.
MAX_WAIT = 20.0  # seconds a full or draining slot waits before it looks again


class ExitReason(str, Enum):
    """How a pilot's life ends (docs/protocol.md): the ``reason`` of its
    deregistration and the ``exit_reason`` of its final report.

    The values cross the wire to the pool and the factory, and the bootstrap
    (bash) writes ``corruption`` and ``validation_failed`` itself: a value is
    never renamed.
    """

    IDLE_TIMEOUT = "idle_timeout"  # no job for the idle (or tail) timeout; a drain too
    LIFETIME = "lifetime"  # the retire or die time came
    ERROR = "error"  # registration or token refused, a pool of another version, a bug
    LOST = "lost"  # the pool no longer knows this pilot
    CORRUPTION = "corruption"  # the bootstrap: a stage file failed its check
    VALIDATION_FAILED = "validation_failed"  # at startup, or a periodic script
    BLACK_HOLE = "black_hole"  # too many jobs failed too fast
    SIGNAL = "signal"  # SIGTERM/SIGINT from the batch system

    def __str__(self) -> str:
        """The wire value, in logs and trail records too (whatever the Python version)."""
        return str(self.value)

    @property
    def exit_code(self) -> int:
        """0 for a pilot that retired normally, non-zero otherwise (a signal sets its own)."""
        return _EXIT_CODES.get(self, 1)


_EXIT_CODES = {
    ExitReason.IDLE_TIMEOUT: 0,
    ExitReason.LIFETIME: 0,
    ExitReason.ERROR: 1,
    ExitReason.LOST: 3,
    ExitReason.CORRUPTION: 3,
    ExitReason.VALIDATION_FAILED: 4,
    ExitReason.BLACK_HOLE: 5,
}
# A drain asked by the pool has no reason of its own in docs/protocol.md: it is
# reported as the benign retirement, with a detail.
DRAIN_REASON = ExitReason.IDLE_TIMEOUT


class Action(str, Enum):
    """What the claim loop does next."""

    CLAIM = "claim"  # ask the pool for work, long-polling at most ``Step.seconds``
    WAIT = "wait"  # nothing to ask for: wait ``Step.seconds`` (or for a job to end)
    EXIT = "exit"  # the pilot ends, for ``Step.reason``

    def __str__(self) -> str:
        return str(self.value)


@dataclass(frozen=True)
class Step:
    """What the claim loop does next, and for how long or why."""

    action: Action
    seconds: float = 0.0
    reason: ExitReason | None = None
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
    stop_reason: ExitReason | None = None
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
        return Step(
            Action.EXIT,
            reason=ExitReason.LIFETIME,
            detail=f"die time reached ({lifetime:.0f}s lifetime minus margin)",
        )
    if s.draining or s.stop_reason or s.now >= s.deadline:
        if s.running:
            return Step(Action.WAIT, max(0.001, min(MAX_WAIT, s.die_at - s.now)))
        if s.stop_reason:
            return Step(Action.EXIT, reason=s.stop_reason, detail=s.stop_detail)
        if s.draining:
            return Step(Action.EXIT, reason=DRAIN_REASON, detail="drain requested by the pool")
        return Step(
            Action.EXIT,
            reason=ExitReason.LIFETIME,
            detail=f"retire time reached ({lifetime:.0f}s lifetime)",
        )
    idle_limit = s.idle_timeout if not s.jobs_run or s.tail_timeout is None else s.tail_timeout
    wait = min(MAX_CLAIM_WAIT, idle_limit, s.deadline - s.now)
    if not s.running:
        idle_left = s.idle_since + idle_limit - s.now
        if idle_left <= 0:
            kind = "tail " if s.jobs_run and s.tail_timeout is not None else ""
            return Step(
                Action.EXIT,
                reason=ExitReason.IDLE_TIMEOUT,
                detail=f"no job for {idle_limit:.0f}s ({kind}idle timeout)",
            )
        wait = min(wait, idle_left)
    if s.free_cpus < 1 or s.free_memory < 1:  # full: look again at the retire time at the latest
        return Step(Action.WAIT, max(0.001, min(MAX_WAIT, s.deadline - s.now)))
    return Step(Action.CLAIM, max(wait, 0.001))  # a last look at the very end of the idle time


def gather_wait(running: int, free_cpus: int, batch: int, waited: float, gather: float) -> float:
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


def retire_and_die(
    lifetime: float, die_margin: float, retire_before: float, spread: float, draw: float
) -> tuple[float, float]:
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


def hold_back(failed: bool, wall: float, jobs: int, window: float) -> float:
    """Seconds to keep a job's result from the pool before reporting it (0: at once).

    A black hole is only known after ``jobs`` failures, and by then the pool
    would have completed the first victims to their users as failures. So a
    failure that could still turn out to be one of them (a quick one: it ran no
    longer than the window, as the victims of a broken node do) waits here for
    the window: until then it can still count (``black_hole``), after it no
    longer can and goes to the pool as the job's own failure. Results of jobs
    that succeeded, and slow failures, are never held; nothing is held with
    black-hole protection off. The pool never sees a held job as completed, so
    requeuing it (docs/pool.md, "Black-hole victims") never completes it twice.
    """
    if not failed or jobs <= 0 or window <= 0 or wall > window:
        return 0.0
    return float(window)


def core_seconds(wall: float, cpus: int | None) -> float:
    """Wall seconds times the cores a job (or pilot) held; unknown cores count as one."""
    return max(0.0, wall) * (cpus if isinstance(cpus, int) and cpus > 0 else 1)


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


def token_retire(
    deadline: float,
    expires: float | None,
    now_epoch: float,
    now: float,
    margin: float = TOKEN_RETIRE_MARGIN,
) -> float:
    """The retire time (monotonic) capped ``margin`` seconds before the token expires.

    The frontend renews pilot tokens and the factory rewrites the token file;
    the pilot reads it on every request, so a renewed token moves the cap
    later again. One that is not renewed must not leave the pilot holding
    jobs it can no longer report on.
    """
    if expires is None:
        return deadline
    return min(deadline, now + (expires - now_epoch) - margin)
