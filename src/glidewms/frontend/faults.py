"""Which of the frontend's peers fail, said in its log once per change.

A pool or factory that stops answering is noticed every cycle (the cycle's
report, the explanations), but a log line every cycle would drown the log
and say nothing new. So each peer call the loop makes (a pool's query, a
factory's query, a group's request to a factory) is a `source` with a streak:
the first failure is logged with its error, a later failure with another
kind of error is logged again, and the first success after failures is
logged with how many cycles failed and for how long. The decision is a pure
function (`step`), with a table test.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

log = logging.getLogger("glidewms.frontend.faults")


@dataclass(frozen=True)
class Streak:
    """A run of failed cycles of one source."""

    since: float  # time of its first failure
    failures: int  # failed cycles so far
    error: str  # the last error logged


@dataclass(frozen=True)
class Said:
    level: int
    text: str


def kind_of(error: str) -> str:
    """What tells two errors apart for the log: the text before its details
    (`pool p query failed: ConnectTimeout(...)` -> up to the exception's name)."""
    head = error.split("(", 1)[0]
    return head[:200]


def step(
    source: str, streak: Streak | None, error: str | None, now: float
) -> tuple[Streak | None, Said | None]:
    """The streak after this cycle's outcome (`error` None: it worked) and what to log."""
    if error is None:
        if streak is None:
            return None, None
        return None, Said(
            logging.WARNING,
            f"{source}: works again after {streak.failures} failed cycle(s) "
            f"over {now - streak.since:.0f}s",
        )
    if streak is None:
        return Streak(now, 1, error), Said(
            logging.WARNING,
            f"{source}: failing: {error} (logged once until it changes or recovers)",
        )
    grown = replace(streak, failures=streak.failures + 1)
    if kind_of(error) != kind_of(streak.error):
        return replace(grown, error=error), Said(
            logging.WARNING,
            f"{source}: still failing ({grown.failures} cycles), now: {error}",
        )
    return grown, None


class Faults:
    """The streak of every source, and the log lines their changes make."""

    def __init__(self) -> None:
        self.streaks: dict[str, Streak] = {}

    def note(self, source: str, error: str | None, now: float) -> None:
        streak, said = step(source, self.streaks.get(source), error, now)
        if streak is None:
            self.streaks.pop(source, None)
        else:
            self.streaks[source] = streak
        if said is not None:
            log.log(said.level, "%s", said.text)

    def failing(self) -> dict[str, dict[str, object]]:
        """Sources failing now: since when, how many cycles, the last error logged."""
        return {
            s: {"since": k.since, "failed_cycles": k.failures, "error": k.error}
            for s, k in sorted(self.streaks.items())
        }
