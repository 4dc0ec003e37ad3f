"""Sandbox files, stored by their SHA-256: uploaded by users (and pilots'
outputs), downloaded by pilots (and users).

Who may read a file is access.py's rule: a digest alone opens nothing, so a
file nobody may read answers 404, as one that does not exist. An upload is
at most `max_upload_bytes`: refused at once when Content-Length says more,
and when the stream passes it otherwise (nothing of it is kept).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse

from glidewms.errors import responses
from glidewms.pool.routes.deps import Pool, UserOrPilotCaller, call
from glidewms.pool.sandbox import BadDigest, TooLarge

router = APIRouter(responses=responses(404))


@router.put("/files/{sha256}", status_code=201)
async def put_file(
    sha256: str, request: Request, pool: Pool, who: UserOrPilotCaller
) -> dict[str, Any]:
    files, most = pool.files, pool.config.max_upload_bytes
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > most:
        raise HTTPException(413, f"upload of {declared} bytes; at most {most}")
    try:
        files.path(sha256)
        if files.has(sha256):
            # the content still has to be sent: knowing a digest grants nothing
            size = await files.verify_stream(sha256, request.stream(), most)
            stored = False
        else:
            size = await files.put_stream(sha256, request.stream(), most)
            stored = True
    except BadDigest as exc:
        raise HTTPException(422, str(exc)) from None
    except TooLarge as exc:
        raise HTTPException(413, str(exc)) from None
    if "user" in who.scopes or who.is_admin:
        await call(pool.store.files.uploaded, who.subject, sha256)
    return {"sha256": sha256, "stored": stored, "size": size}


@router.get("/files/{sha256}")
async def get_file(sha256: str, pool: Pool, who: UserOrPilotCaller) -> FileResponse:
    try:
        path = pool.files.path(sha256)
    except BadDigest as exc:
        raise HTTPException(422, str(exc)) from None
    access = pool.store.files
    allowed = (
        who.is_admin
        or ("user" in who.scopes and await call(access.user_may_read, who.subject, sha256))
        or ("pilot" in who.scopes and await call(access.pilot_may_read, sha256))
    )
    if not allowed or not path.is_file():
        raise HTTPException(404, f"no file {sha256}")
    return FileResponse(path, media_type="application/octet-stream")
