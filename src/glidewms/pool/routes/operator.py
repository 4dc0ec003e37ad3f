"""What only an operator (an admin token) may do to a running pool: drain and
undrain pilots, entries and sites (drains.py), and set a submitter's past
usage in the fair share (`userprio --set-accum`). docs/protocol.md lists them.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException
from pydantic import BaseModel, Field, model_validator

from glidewms.errors import responses
from glidewms.pool.drains import KINDS, Target
from glidewms.pool.routes.deps import Pool, call, guarded
from glidewms.security.http import require
from glidewms.security.tokens import Identity

AdminCaller = Annotated[Identity, Depends(require("admin"))]
Name = Annotated[str, Field(min_length=1, max_length=128)]
router = APIRouter(responses=responses(404))  # no such pilot, drain or submitter


class DrainBody(BaseModel):
    pilot: Name | None = Field(None, description="one pilot, by its pool id")
    entry: Name | None = Field(None, description="every pilot of this GLIDEIN_Entry_Name")
    site: Name | None = Field(None, description="every pilot of this GLIDEIN_Site")
    hard: bool = Field(False, description="vacate the running jobs now (else they finish)")
    reason: str = Field("", max_length=1024)

    @model_validator(mode="after")
    def _one_target(self) -> DrainBody:
        named = [k for k in KINDS if getattr(self, k) is not None]
        if len(named) != 1:
            raise ValueError("name exactly one of pilot, entry, site")
        return self

    def target(self) -> Target:
        [kind] = [k for k in KINDS if getattr(self, k) is not None]
        return Target(kind, str(getattr(self, kind)))


class UndrainBody(BaseModel):
    pilot: Name | None = None
    entry: Name | None = None
    site: Name | None = None

    @model_validator(mode="after")
    def _one_target(self) -> UndrainBody:
        if sum(getattr(self, k) is not None for k in KINDS) != 1:
            raise ValueError("name exactly one of pilot, entry, site")
        return self

    def target(self) -> Target:
        [kind] = [k for k in KINDS if getattr(self, k) is not None]
        return Target(kind, str(getattr(self, kind)))


class UsageBody(BaseModel):
    submitter: Name = Field(description="as `userprio` lists it: Owner or group.Owner")
    usage: float = Field(ge=0, le=1e15, allow_inf_nan=False, description="core-seconds")


@router.get("/drains")
async def list_drains(pool: Pool, who: AdminCaller) -> list[dict[str, Any]]:
    return await call(pool.store.drains.list_drains)


@router.post("/drains")
async def drain(body: DrainBody, pool: Pool, who: AdminCaller) -> dict[str, Any]:
    """Drain a pilot, an entry or a site; gentle unless `hard`."""
    result = await guarded(
        pool.store.drains.drain, body.target(), body.hard, body.reason, who.subject[:256]
    )
    if result["vacated"]:
        pool.signal.notify()  # vacated jobs are idle again: waiting pilots may take them
    pool.signal.wake_pilots(result["pilots"])  # their long-polls answer the drain now
    return result


@router.post("/drains/undrain")
async def undrain(body: UndrainBody, pool: Pool, who: AdminCaller) -> dict[str, Any]:
    """Lift a drain; 404 if none holds for that target."""
    result = await guarded(pool.store.drains.undrain, body.target())
    pool.signal.notify()
    return result


@router.put("/userprio/usage")
async def set_usage(body: UsageBody, pool: Pool, who: AdminCaller) -> dict[str, Any]:
    """Set a submitter's accumulated usage (HTCondor's `userprio -setaccum`)."""
    if not body.submitter.strip():
        raise HTTPException(422, "submitter: empty")
    return await guarded(pool.store.reports.set_usage, body.submitter, body.usage)
