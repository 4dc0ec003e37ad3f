"""`/stage`: the files every pilot fetches (the agent), listed in a signed manifest."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse, PlainTextResponse

from glidewms.factory.routes.deps import FactoryDep, Pilot

router = APIRouter(prefix="/stage")


@router.get("/manifest", response_class=PlainTextResponse)
async def manifest(identity: Pilot, factory: FactoryDep) -> PlainTextResponse:
    return PlainTextResponse(factory.stage.manifest_path.read_bytes())


@router.get("/files/{path:path}")
async def stage_file(path: str, identity: Pilot, factory: FactoryDep) -> FileResponse:
    """A file listed in the manifest; anything else (`..` included) is 404."""
    found = factory.stage.file(path)
    if found is None or not found.is_file():
        raise HTTPException(404, f"no stage file {path!r}")
    return FileResponse(found, media_type="application/octet-stream")
