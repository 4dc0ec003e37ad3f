"""The pilot's decisions as pure functions: claim, wait or exit; heartbeat pace.

Kept apart from the threads and HTTP in ``agent`` so that every case (idle
timeout, lifetime, drain, full slot) is a row in a table-driven test.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_CLAIM_WAIT = 20.0  # seconds a claim long-poll may last
# Exit reasons are those of docs/protocol.md. A drain asked by the pool has no
# reason of its own there: it is reported as the benign retirement, with a detail.
DRAIN_REASON = "idle_timeout"
EXIT_CODES = {"idle_timeout": 0, "lifetime": 0, "error": 1, "lost": 3}


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
    """The facts a decision needs (times are time.monotonic() readings)."""

    now: float
    idle_since: float
    idle_timeout: float
    deadline: float
    draining: bool
    running: int
    free_cpus: int
    free_memory: int


def next_step(s: State, lifetime: float) -> Step:
    """Decide between claiming, waiting and exiting.

    - Draining or past the lifetime: no new claims; exit once no job runs.
    - No job running for ``idle_timeout``: exit (idle_timeout).
    - A long-poll never outlasts the idle timeout, even while jobs run: when
      the last one ends the idle clock starts, and the pilot must stop on time.
    - A full slot waits (a finishing job wakes the loop up).
    """
    retiring = s.draining or s.now >= s.deadline
    if retiring:
        if s.running:
            return Step("wait", MAX_CLAIM_WAIT)
        if s.draining:
            return Step("exit", reason=DRAIN_REASON, detail="drain requested by the pool")
        return Step("exit", reason="lifetime", detail=f"lifetime of {lifetime:.0f}s reached")
    wait = min(MAX_CLAIM_WAIT, s.idle_timeout, s.deadline - s.now)
    if not s.running:
        idle_left = s.idle_since + s.idle_timeout - s.now
        if idle_left <= 0:
            return Step("exit", reason="idle_timeout", detail=f"no job for {s.idle_timeout:.0f}s")
        wait = min(wait, idle_left)
    if s.free_cpus < 1 or s.free_memory < 1:
        return Step("wait", MAX_CLAIM_WAIT)
    return Step("claim", max(wait, 0.001))  # a last look at the very end of the idle time


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
