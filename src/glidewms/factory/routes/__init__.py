"""The factory's HTTP API (protocol.md, "Factory"): one router per resource.

Every router here is served under `glidewms.protocol.API_PREFIX`; `health`
(`/healthz`) at the root. Identities come from the bearer token
(`routes.deps`): a request's frontend is the token's subject, and a pilot's
frontend the token's `fe` claim.

- `entries`: entry ads, and an operator's resume of a paused entry;
- `requests`: a frontend group's desired state;
- `glideins`: pilots, their counts, final reports, trails and logs;
- `logsearch`: full-text search across the archived pilot logs;
- `stats`: per entry and frontend, over a window;
- `downtimes`: no new pilots at an entry for a while;
- `stage`: the agent's files and their manifest, for pilots;
- `admin`: `/reload` of the configuration, and `/healthz`.
"""

from __future__ import annotations

from fastapi import APIRouter

from glidewms.factory.routes import (
    admin,
    downtimes,
    entries,
    glideins,
    logsearch,
    requests,
    stage,
    stats,
)

ROUTERS: tuple[APIRouter, ...] = (
    admin.router,
    entries.router,
    requests.router,
    glideins.router,
    logsearch.router,
    stats.router,
    downtimes.router,
    stage.router,
)
HEALTH = admin.health

__all__ = ["HEALTH", "ROUTERS"]
