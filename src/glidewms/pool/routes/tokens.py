"""Pilot tokens, minted for frontends to hand to the pilots they ask for.

The pool signs them with the pilot issuer's key (`pilot_issuer_private_key`),
which can sign nothing but pilot tokens: the pool, the one service users'
jobs can reach, holds no key that mints user, frontend or admin tokens.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, Field

from glidewms.errors import responses
from glidewms.pool.routes.deps import FrontendCaller, Pool

router = APIRouter(responses=responses(503))  # a pool without a pilot issuer

NAME = r"^[A-Za-z0-9_.@-]+$"


class PilotTokenBody(BaseModel):
    group: str = Field("main", pattern=r"^[A-Za-z0-9_.-]+$", max_length=128)
    lifetime: float = Field(24 * 3600.0, gt=0, le=10 * 365 * 24 * 3600.0)
    # An entry-scoped token only registers pilots of that entry (and, with
    # `site`, of that site): a token copied off one site's worker node cannot
    # feed slots claiming to be elsewhere. Frontends ask for one per entry.
    entry: str | None = Field(None, pattern=NAME, max_length=128)
    site: str | None = Field(
        None,
        pattern=r"^[^\s\x00-\x1f\x7f]+$",  # as the factory's entry sites: no blanks
        max_length=128,
        description="the entry's GLIDEIN_Site; only with entry",
    )


@router.post("/tokens/pilot")
async def pilot_token(body: PilotTokenBody, pool: Pool, who: FrontendCaller) -> dict[str, Any]:
    if pool.issuer is None:
        raise HTTPException(
            503, "this pool has no pilot_issuer_private_key: it cannot mint pilot tokens"
        )
    if body.site is not None and body.entry is None:
        raise HTTPException(422, "site: a token is scoped to a site only with its entry")
    lifetime = min(body.lifetime, pool.config.max_pilot_token_lifetime)
    scope = {"entry": body.entry} if body.entry else {}
    if body.site:
        scope["site"] = body.site
    if pool.config.name:  # valid in this pool only (deps.PilotRequire)
        scope["pool"] = pool.config.name
    # the frontend is the caller's token subject, never a body field
    token = pool.issuer.issue(
        "pilot", ["pilot"], lifetime, fe=who.subject, group=body.group, **scope
    )
    return {"token": token, "expires": time.time() + lifetime}
