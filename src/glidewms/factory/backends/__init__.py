"""Factory backends: one module per kind of site behind `base.Backend`.

`BACKENDS` maps the `backend:` value of an entry to its class; a new kind of
site is a new module plus one line here and one literal in `EntryConfig.backend`.
"""

from __future__ import annotations

from glidewms.factory.backends.base import (
    Backend,
    BackendContext,
    BackendError,
    PilotLogs,
    PilotState,
    PilotSubmission,
)
from glidewms.factory.backends.htcondor import HtcondorBackend
from glidewms.factory.backends.local import LocalBackend
from glidewms.factory.backends.lsf import LsfBackend
from glidewms.factory.backends.pbs import PbsBackend
from glidewms.factory.backends.sge import SgeBackend
from glidewms.factory.backends.slurm import SlurmBackend
from glidewms.factory.backends.ssh import SshBackend

BACKENDS: dict[str, type[Backend]] = {
    LocalBackend.kind: LocalBackend,
    SlurmBackend.kind: SlurmBackend,
    SgeBackend.kind: SgeBackend,
    PbsBackend.kind: PbsBackend,
    LsfBackend.kind: LsfBackend,
    SshBackend.kind: SshBackend,
    HtcondorBackend.kind: HtcondorBackend,
}


def create_backend(kind: str, context: BackendContext) -> Backend:
    """The backend for entries whose `backend:` is `kind`."""
    try:
        cls = BACKENDS[kind]
    except KeyError:
        raise ValueError(f"unknown backend {kind!r}; known: {sorted(BACKENDS)}") from None
    return cls(context)


__all__ = [
    "BACKENDS",
    "Backend",
    "BackendContext",
    "BackendError",
    "PilotLogs",
    "PilotState",
    "PilotSubmission",
    "create_backend",
]
