"""Sandbox files, stored by their SHA-256: uploaded by users (and pilots'
outputs), downloaded by pilots (and users)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse

from glidewms.pool.routes.deps import Pool, UserOrPilotCaller
from glidewms.pool.sandbox import BadDigest

router = APIRouter()


@router.put("/files/{sha256}", status_code=201)
async def put_file(
    sha256: str, request: Request, pool: Pool, who: UserOrPilotCaller
) -> dict[str, Any]:
    files = pool.files
    try:
        if files.has(sha256):
            return {"sha256": sha256, "stored": False}
        size = await files.put_stream(sha256, request.stream())
    except BadDigest as exc:
        raise HTTPException(422, str(exc)) from None
    return {"sha256": sha256, "stored": True, "size": size}


@router.get("/files/{sha256}")
async def get_file(sha256: str, pool: Pool, who: UserOrPilotCaller) -> FileResponse:
    try:
        path = pool.files.path(sha256)
    except BadDigest as exc:
        raise HTTPException(422, str(exc)) from None
    if not path.is_file():
        raise HTTPException(404, f"no file {sha256}")
    return FileResponse(path, media_type="application/octet-stream")
