"""What the factory says a glidein is: one vocabulary for the store, the loop, the
API and the frontends that count the factory's pilots.

The values are the wire spelling: `GET /api/v1/glideins?summary=true` counts
pilots per entry under these names, and a frontend reads them back with the
same enum.
"""

from __future__ import annotations

from enum import Enum


class GlideinState(str, Enum):
    """A glidein as the factory counts it.

    `removing` means the factory asked the backend to remove the pilot and has
    not yet seen it gone; it still counts against limits, so an entry can never
    be over-filled while removals are in flight. `held` is a pilot the site
    keeps but will not start (a batch system's hold).
    """

    queued = "queued"
    held = "held"
    running = "running"
    removing = "removing"
    finished = "finished"
    failed = "failed"
    removed = "removed"


ACTIVE_STATES = (
    GlideinState.queued,
    GlideinState.held,
    GlideinState.running,
    GlideinState.removing,
)
FINAL_STATES = (GlideinState.finished, GlideinState.failed, GlideinState.removed)

# Not a state: in the factory's pilot summary (GET /glideins?summary=true), how
# many of an entry's `running` pilots have already sent their final report
# (exiting, or a black hole keeping its node): still a batch slot at the
# site, but no pilot that will register (frontend/supply.py).
EXITED = "exited"
