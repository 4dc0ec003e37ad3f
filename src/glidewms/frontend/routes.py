"""The frontend's HTTP face: its status, its explanations, and the groups' VO stages.

`api` is served under `glidewms.protocol.API_PREFIX` and needs a token of
frontend (or admin) scope; `public` at the root: `/healthz`, and the VO stages
pilots fetch without a token (the manifest's hash and signature protect them).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import FileResponse

from glidewms.errors import responses
from glidewms.frontend import vostage
from glidewms.frontend.service import Frontend
from glidewms.security.http import require
from glidewms.security.tokens import Identity

api = APIRouter()
public = APIRouter()

Caller = Annotated[Identity, Depends(require("frontend"))]


async def _frontend(request: Request) -> Frontend:
    frontend: Frontend = request.app.state.frontend
    return frontend


FrontendDep = Annotated[Frontend, Depends(_frontend)]


@public.get("/healthz", include_in_schema=False)
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@api.get("/status")
async def status(who: Caller, frontend: FrontendDep) -> dict[str, Any]:
    """Cycles run, the sources, the last cycle's outcome and each entry's latest
    explanation."""
    config, last = frontend.config, frontend.last
    return {
        "cycles": frontend.cycles,
        "pool_url": config.pool_url,
        "factory_url": config.factory_url,
        "pools": [{"name": p.name, "url": p.url} for p in config.all_pools()],
        "factories": [{"name": f.name, "url": f.url} for f in config.all_factories()],
        "last_cycle": asdict(last) if last else None,
        "failing": frontend.faults.failing(),  # sources failing now, since when
        "pilot_tokens": frontend.pilot_tokens.summary(),
        "vo_stages": {
            g: {"manifest_sha256": s.manifest_sha256, "files": len(s.files)}
            for g, s in frontend.vo_stages.items()
        },
        "entries": frontend.explain(),
    }


@api.get("/explain", responses=responses(404))
async def explain(
    who: Caller,
    frontend: FrontendDep,
    entry: str | None = None,
    history: bool = False,
    group: str | None = None,
) -> list[dict[str, Any]]:
    """Why each entry got its request: demand, supply, limits, curbs, removal stage.
    `entry` is `factory/entry` or an entry name; `group` keeps one group's;
    `history` gives every kept record (a record folds cycles that decided alike)."""
    found = frontend.explain(entry, history, group)
    if (entry is not None or group is not None) and not found:
        known = frontend.explanations.known()
        raise HTTPException(
            404,
            f"no explanation for entry {entry or '*'!r} of group "
            f"{group or '*'!r} yet (known: {known})",
        )
    return found


@public.get(vostage.PREFIX + "/{group}/{path:path}", include_in_schema=False)
async def vo_stage(group: str, path: str, frontend: FrontendDep) -> FileResponse:
    """A group's VO stage, read-only and without a token: pilots check the
    manifest against the sha256 and key they were started with, and every
    file against the manifest, so the bytes need no other protection."""
    stage = frontend.vo_stages.get(group)
    found = None if stage is None else vostage.served_file(stage, path)
    if found is None or not found.is_file():
        raise HTTPException(404, f"no {path!r} in the VO stage of group {group!r}")
    return FileResponse(found, media_type="application/octet-stream")
