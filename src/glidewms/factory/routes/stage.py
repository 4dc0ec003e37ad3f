"""`/stage`: the files every pilot fetches (the agent), listed in a signed manifest."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse, PlainTextResponse

from glidewms.errors import responses
from glidewms.factory.routes.deps import FactoryDep, Pilot

router = APIRouter(prefix="/stage", responses=responses(404))
# The files are bytes, not JSON: say so, so clients and the fuzzer know.
TEXT: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/plain": {}}, "description": "The signed manifest"}
}
BYTES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"application/octet-stream": {}}, "description": "The file"}
}


@router.get("/manifest", responses=TEXT)
async def manifest(identity: Pilot, factory: FactoryDep) -> PlainTextResponse:
    return PlainTextResponse(factory.stage.manifest_path.read_bytes())


@router.get("/files/{path:path}", response_class=FileResponse, responses=BYTES)
async def stage_file(path: str, identity: Pilot, factory: FactoryDep) -> FileResponse:
    """A file listed in the manifest; anything else (`..` included) is 404."""
    found = factory.stage.file(path)
    if found is None or not found.is_file():
        raise HTTPException(404, f"no stage file {path!r}")
    return FileResponse(found, media_type="application/octet-stream")
