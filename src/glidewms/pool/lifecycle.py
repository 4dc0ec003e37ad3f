"""The lives of jobs and pilots: their states, and the only moves between them.

A state is stored as text (the `state` columns) and sent as text (JSON), so
the states are text enums (`str` members, like Python 3.11's `StrEnum`, which
3.10 lacks) whose values are those texts: a member compares and hashes equal
to the string a database row or a request carries, and prints as it.

Each lifecycle is one table of (from, to, cause) transitions. Every state
change in the pool is one of them: the store's conditional UPDATEs take the
states they expect from the table (`sources`), and a change the code decides
at run time (an exit policy, a site failure) is checked against it (`check`)
before it is written. docs/pool.md draws both tables; tests/unit/
test_pool_lifecycle.py keeps the drawing and the tables equal.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Generic, TypeVar


class _Text(str, Enum):
    """A state or cause that is its text: `str()` and f-strings give the value."""

    def __str__(self) -> str:
        return str(self.value)


class JobState(_Text):
    IDLE = "idle"
    RUNNING = "running"
    HELD = "held"
    REMOVED = "removed"
    COMPLETED = "completed"


class JobCause(_Text):
    """Why a job moves. HOLD, RELEASE and REMOVE are also the actions users
    and periodic expressions ask for by these names."""

    SUBMIT = "submit"
    CLAIM = "claim"  # a pilot's turn took it
    HOLD = "hold"
    RELEASE = "release"
    REMOVE = "remove"
    EDIT = "edit"  # an attribute changed; the state stays
    EXIT = "exit"  # its process ended: the exit policy says where it goes
    EVICT = "evict"  # a site failure: pilot lost or left, or its claim lease ran out


class PilotState(_Text):
    ACTIVE = "active"
    # Takes no new jobs (an operator drained it, its entry or its site:
    # drains.py); listed and expired like an active pilot. Its row's `drain`
    # flag is true exactly while it is in this state.
    DRAINING = "draining"
    GONE = "gone"
    LOST = "lost"


class PilotCause(_Text):
    REGISTER = "register"
    DEREGISTER = "deregister"  # the pilot said it leaves
    EXPIRE = "expire"  # its lease ran out: no heartbeat
    DRAIN = "drain"  # an operator drained it (or it registered where a drain holds)
    UNDRAIN = "undrain"  # the drain was lifted before the pilot left


# HTCondor's JobStatus number for each state (what `JobStatus` in an ad says).
JOB_STATUS: Mapping[JobState, int] = {
    JobState.IDLE: 1,
    JobState.RUNNING: 2,
    JobState.REMOVED: 3,
    JobState.COMPLETED: 4,
    JobState.HELD: 5,
}

S = TypeVar("S", JobState, PilotState)


class IllegalTransition(RuntimeError):
    """A state change that the lifecycle's table does not allow: a bug in the
    pool, never a user's mistake (those are refused before any change)."""


@dataclass(frozen=True)
class Transition(Generic[S]):
    source: S | None  # None: the thing is created in `target`
    target: S
    cause: str


class Lifecycle(Generic[S]):
    """One lifecycle's transition table, and the questions the store asks it."""

    def __init__(
        self, name: str, states: Iterable[S], transitions: Iterable[tuple[S | None, S, str]]
    ) -> None:
        self.name = name
        self.states: tuple[S, ...] = tuple(states)
        self.transitions: tuple[Transition[S], ...] = tuple(
            Transition(source, target, cause) for source, target, cause in transitions
        )
        self._allowed: frozenset[tuple[S | None, S, str]] = frozenset(
            (t.source, t.target, t.cause) for t in self.transitions
        )
        self.final: tuple[S, ...] = tuple(
            s for s in self.states if not any(t.source == s for t in self.transitions)
        )

    def allows(self, source: S | str | None, target: S | str, cause: str) -> bool:
        return (source, target, cause) in self._allowed

    def check(self, source: S | str | None, target: S | str, cause: str) -> None:
        """Refuse a transition the table does not list."""
        if (source, target, cause) not in self._allowed:
            raise IllegalTransition(
                f"{self.name}: {cause} cannot move a {self.name} from "
                f"{source or '(new)'} to {target}"
            )

    def sources(self, cause: str) -> tuple[S, ...]:
        """The states `cause` may move a job or pilot from, in table order."""
        out: list[S] = []
        for t in self.transitions:
            if t.cause == cause and t.source is not None and t.source not in out:
                out.append(t.source)
        return tuple(out)

    def source(self, cause: str) -> S:
        """The one state `cause` moves from (a statement's condition)."""
        found = self.sources(cause)
        if len(found) != 1:
            raise ValueError(f"{self.name}: {cause} moves from {found}, not from one state")
        return found[0]

    def target(self, cause: str) -> S:
        """The one state `cause` leads to."""
        found = {t.target for t in self.transitions if t.cause == cause}
        if len(found) != 1:
            raise ValueError(f"{self.name}: {cause} leads to {sorted(found)}, not to one state")
        return found.pop()


J, C = JobState, JobCause
JOB = Lifecycle(
    "job",
    JobState,
    [
        (None, J.IDLE, C.SUBMIT),
        (J.IDLE, J.RUNNING, C.CLAIM),
        (J.IDLE, J.HELD, C.HOLD),
        (J.RUNNING, J.HELD, C.HOLD),
        (J.HELD, J.IDLE, C.RELEASE),
        (J.IDLE, J.REMOVED, C.REMOVE),
        (J.RUNNING, J.REMOVED, C.REMOVE),
        (J.HELD, J.REMOVED, C.REMOVE),
        (J.IDLE, J.IDLE, C.EDIT),
        (J.HELD, J.HELD, C.EDIT),
        (J.RUNNING, J.COMPLETED, C.EXIT),
        (J.RUNNING, J.IDLE, C.EXIT),  # on_exit_remove false, or max_retries left
        (J.RUNNING, J.HELD, C.EXIT),  # on_exit_hold
        (J.RUNNING, J.IDLE, C.EVICT),
        (J.RUNNING, J.HELD, C.EVICT),  # after max_job_restarts site failures
    ],
)

P, PC = PilotState, PilotCause
PILOT = Lifecycle(
    "pilot",
    PilotState,
    [
        (None, P.ACTIVE, PC.REGISTER),
        (P.ACTIVE, P.GONE, PC.DEREGISTER),
        (P.DRAINING, P.GONE, PC.DEREGISTER),
        (P.ACTIVE, P.DRAINING, PC.DRAIN),
        (P.DRAINING, P.ACTIVE, PC.UNDRAIN),
        (P.ACTIVE, P.LOST, PC.EXPIRE),
        (P.DRAINING, P.LOST, PC.EXPIRE),
    ],
)
del J, C, P, PC

# Jobs that left the queue (history), and pilots the pool no longer counts.
TERMINAL_JOBS: tuple[JobState, ...] = JOB.final
LIVE_PILOTS: tuple[PilotState, ...] = PILOT.sources(PilotCause.EXPIRE)
ENDED_PILOTS: tuple[PilotState, ...] = PILOT.final
