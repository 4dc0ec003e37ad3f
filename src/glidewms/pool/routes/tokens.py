"""Pilot tokens, minted for frontends to hand to the pilots they ask for."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, Field

from glidewms.pool.routes.deps import FrontendCaller, Pool

router = APIRouter()


class PilotTokenBody(BaseModel):
    group: str = Field("main", pattern=r"^[A-Za-z0-9_.-]+$")
    lifetime: float = Field(24 * 3600.0, gt=0)
    # An entry-scoped token only registers pilots of that entry: a token copied
    # off one site's worker node cannot feed slots claiming to be elsewhere.
    entry: str | None = Field(None, pattern=r"^[A-Za-z0-9_.@-]+$")


@router.post("/tokens/pilot")
async def pilot_token(body: PilotTokenBody, pool: Pool, who: FrontendCaller) -> dict[str, Any]:
    if pool.issuer is None:
        raise HTTPException(503, "this pool has no issuer_private_key: it cannot mint tokens")
    lifetime = min(body.lifetime, pool.config.max_pilot_token_lifetime)
    scope = {"entry": body.entry} if body.entry else {}
    token = pool.issuer.issue(
        "pilot", ["pilot"], lifetime, fe=who.subject, group=body.group, **scope
    )
    return {"token": token, "expires": time.time() + lifetime}
