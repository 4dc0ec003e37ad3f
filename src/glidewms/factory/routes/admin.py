"""The service itself: its health (outside the versioned API) and `/reload` (admin)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fastapi import APIRouter, HTTPException

from glidewms.config.loader import ConfigError
from glidewms.factory.routes.deps import Admin, FactoryDep, ReloaderDep

log = logging.getLogger(__name__)

health = APIRouter()  # served at the root: load balancers and `glidewms up` poll it
router = APIRouter()


@health.get("/healthz")
async def healthz(factory: FactoryDep) -> dict[str, Any]:
    return {"status": "ok", "url": factory.public_url, "cycles": factory.cycles}


@router.post("/reload")
async def reload_config(identity: Admin, reloader: ReloaderDep) -> dict[str, Any]:
    """Re-read the configuration file: entries added, changed, removed (admin).

    Pilots of removed entries stay tracked until they end; nothing new is
    submitted there. A configuration that does not load is refused (422)
    and the running one stays.
    """
    try:
        new = await asyncio.to_thread(reloader.load)
    except ConfigError as exc:
        raise HTTPException(422, str(exc)) from None
    summary = reloader.apply(new)
    log.info("configuration reloaded by %s", identity.subject)
    return summary.public()
