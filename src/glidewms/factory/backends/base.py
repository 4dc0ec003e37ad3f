"""The backend interface: how the factory starts, watches and stops pilots at a site.

Four coroutines behind one ABC, in the TARDIS mould: a backend knows one kind of
site (local processes, a batch system, SSH to a remote batch system, a cloud)
and nothing about frontends, requests or limits. It translates its own states
into `PilotState` through an explicit map, so every state the site can report
is accounted for in one place.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import ClassVar

from glidewms.config.factory import EntryConfig


class PilotState(str, Enum):
    """A pilot as its backend sees it.

    `unknown` means the backend could not tell (a batch system that did not
    answer); the factory keeps counting such a pilot as it was, so losing sight
    of pilots never turns into submitting more of them.
    """

    queued = "queued"
    held = "held"  # kept by the site but not started (a batch system's hold)
    running = "running"
    finished = "finished"
    failed = "failed"
    removed = "removed"
    unknown = "unknown"


@dataclass(frozen=True)
class PilotSubmission:
    """One pilot to start: `glidein_startup.sh <arguments>` with the token in a file.

    The token itself is never part of a submission; only the path of a 0600 file
    that holds it, which the backend exports as GLIDEIN_TOKEN_FILE (or ships
    next to the bootstrap for a remote site).
    """

    glidein_id: str
    arguments: tuple[str, ...]
    token_file: Path


@dataclass(frozen=True)
class PilotLogs:
    """What a pilot wrote to its standard output and error (tails for long logs)."""

    stdout: str
    stderr: str


class BackendError(Exception):
    """A submission failed; `submitted` holds the backend ids of the pilots that did
    start before the failure (a prefix of the submission list), so none is lost."""

    def __init__(self, message: str, submitted: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.submitted: list[str] = list(submitted)


@dataclass
class BackendContext:
    """What every backend may need from the factory, and nothing more."""

    state_dir: Path
    bootstrap: Path
    kill_grace: float = 30.0
    entries: dict[str, EntryConfig] = field(default_factory=dict)  # by name


class Backend(ABC):
    """One kind of site. Implementations live one per module in this package."""

    kind: ClassVar[str]

    def __init__(self, context: BackendContext) -> None:
        self.context = context

    @abstractmethod
    async def submit(self, entry: EntryConfig, pilots: Sequence[PilotSubmission]) -> list[str]:
        """Start `pilots` at `entry`; return their backend ids in the same order.

        Raises BackendError (with the ids of those already started) on failure.
        """

    @abstractmethod
    async def status(self, backend_ids: Sequence[str]) -> dict[str, PilotState]:
        """The state of each pilot, in one batched call; every id gets an answer."""

    @abstractmethod
    async def remove(self, backend_ids: Sequence[str]) -> None:
        """Ask the site to stop these pilots: gently first, then for good."""

    @abstractmethod
    async def logs(self, backend_id: str) -> PilotLogs:
        """The pilot's standard output and error as far as the site kept them."""

    can_release: ClassVar[bool] = False  # whether `release` works (else held pilots go)

    async def release(self, backend_ids: Sequence[str]) -> None:
        """Ask the site to release held pilots (only where `can_release`)."""
        raise BackendError(f"the {self.kind} backend cannot release held pilots")

    def stages_token(self, entry: EntryConfig) -> bool:
        """Whether pilots at `entry` read a copy of their token file that the backend
        wrote (jobs of another account, a remote site), which `refresh_token` must
        keep fresh; False where pilots read the factory's own file."""
        return False

    async def refresh_token(self, entry: EntryConfig, token_file: Path) -> None:  # noqa: B027
        """Rewrite `entry`'s copy of `token_file` (only where `stages_token`), so
        running pilots read the token a frontend just renewed."""

    async def adopt(self, entry: EntryConfig, glidein_ids: Sequence[str]) -> dict[str, str]:
        """Find pilots submitted by a factory that stopped before it stored their ids.

        `glidein_ids` are one entry's unrecorded glideins in submission order;
        returns {glidein id: backend id} for those the site has (ended ones
        included while the site remembers them). A backend that cannot tell
        returns {}: those glideins are then taken as never submitted.
        """
        return {}

    async def close(self) -> None:  # noqa: B027 - optional hook, no-op by default
        """Release what the backend holds (connections, tasks); pilots keep running."""
