"""What frontends read every cycle: the demand, per autocluster."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter

from glidewms.pool.routes.deps import FrontendCaller, Pool, call

router = APIRouter()


@router.get("/demand")
async def demand(pool: Pool, who: FrontendCaller) -> dict[str, Any]:
    return {"time": time.time(), "autoclusters": await call(pool.store.reports.demand)}
