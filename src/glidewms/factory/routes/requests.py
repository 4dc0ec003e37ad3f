"""`/requests`: a frontend group's desired state, PUT whole and read back."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter
from fastapi import Path as PathParam

from glidewms.factory.requests import RequestBody, accept_request
from glidewms.factory.routes.deps import (
    FactoryDep,
    Frontend,
    StoreDep,
    VerifierDep,
    check_name,
    frontend_filter,
)
from glidewms.factory.service import Factory
from glidewms.factory.store import StoredRequest

router = APIRouter(prefix="/requests")


def request_view(factory: Factory, request: StoredRequest) -> dict[str, Any]:
    """A stored request as its frontend sees it; the token is never shown."""
    return {
        "frontend": request.frontend,
        "group": request.group,
        "pool_url": request.pool_url,
        "entries": request.entries,
        "token_expires": request.token_expires,
        "entry_token_expires": request.entry_tokens or {},
        "vo_stage": request.vo_stage,
        "pools": request.pools,
        "updated_at": request.updated_at,
        "errors": factory.request_errors(request),
    }


@router.put("/{group}")
async def put_request(
    group: Annotated[str, PathParam(max_length=64)],
    body: RequestBody,
    identity: Frontend,
    factory: FactoryDep,
    store: StoreDep,
    verifier: VerifierDep,
) -> dict[str, Any]:
    """Store the group's desired state (replacing the last one) and wake the loop."""
    frontend = identity.subject
    check_name("frontend (token subject)", frontend, 403)
    check_name("group", group, 422)
    accepted = accept_request(verifier, body, frontend, group, factory.credentials)
    await asyncio.to_thread(
        store.put_request,
        frontend,
        group,
        body.pool_url,
        accepted.entries,
        accepted.token_expires,
        accepted.entry_tokens,
        accepted.vo_stage,
        accepted.pools,
    )
    factory.wake()
    stored = next(r for r in await asyncio.to_thread(store.requests, frontend) if r.group == group)
    return request_view(factory, stored)


@router.get("")
async def list_requests(
    identity: Frontend, factory: FactoryDep, store: StoreDep
) -> list[dict[str, Any]]:
    found = await asyncio.to_thread(store.requests, frontend_filter(identity))
    return [request_view(factory, r) for r in found]
