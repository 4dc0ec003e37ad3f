"""Streamed stdout/stderr (pool/streams.py): pilots send, owners read.

A chunk is sent by the pilot that holds the job's claim: a pilot token whose
identity registered that pilot (as for a completion: any other is answered
409, as for a claim that is gone), and the pilot must still be live. The
chunk is base64 in JSON (the pilot's client speaks JSON); more than
`CHUNK_BYTES` decoded is 413. A reader is the job's owner or an admin
(403 for anyone else's job); the answer is the raw bytes, with where they
start and where the stream ends in headers.
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query, Response
from pydantic import BaseModel, Field

from glidewms.errors import responses
from glidewms.pool.routes.deps import PilotCaller, Pool, UserCaller, call, guarded, pilot_owner
from glidewms.pool.streams import CHUNK_BYTES, KEEP_BYTES, MAX_OFFSET

router = APIRouter()

Which = Literal["out", "err"]
# base64 of CHUNK_BYTES, padded: a longer text cannot decode within the bound
_MAX_TEXT = 4 * ((CHUNK_BYTES + 2) // 3)
HEADERS = {
    "offset": "Glidewms-Stream-Offset",  # where the returned bytes start in the stream
    "start": "Glidewms-Stream-Start",  # the first byte still kept (older ones were dropped)
    "end": "Glidewms-Stream-End",  # the stream's length so far
    "state": "Glidewms-Job-State",  # the job's state: a follower stops once it ended
}


class StreamChunk(BaseModel):
    which: Which
    offset: int = Field(ge=0, le=MAX_OFFSET, description="where the chunk starts in this run")
    data: str = Field(description=f"base64 of at most {CHUNK_BYTES} bytes")


@router.post("/claims/{claim_id}/stream", responses=responses(409, 413))
async def put_chunk(
    claim_id: Annotated[str, Field(max_length=64)],
    body: StreamChunk,
    pool: Pool,
    who: PilotCaller,
) -> dict[str, int]:
    """Add stdout or stderr of the job this claim runs; answers what is kept."""
    if len(body.data) > _MAX_TEXT:
        raise HTTPException(413, f"data: a chunk is at most {CHUNK_BYTES} bytes")
    try:
        chunk = base64.b64decode(body.data, validate=True)
    except (binascii.Error, ValueError):
        raise HTTPException(422, "data: not base64") from None
    if len(chunk) > CHUNK_BYTES:
        raise HTTPException(413, f"data: {len(chunk)} bytes; a chunk is at most {CHUNK_BYTES}")
    return await guarded(
        pool.store.streams.append, claim_id, body.which, body.offset, chunk, pilot_owner(who)
    )


@router.get(
    "/jobs/{jid}/stream",
    responses={
        **responses(404),
        200: {"content": {"application/octet-stream": {}}, "description": "the bytes"},
    },
    response_class=Response,
)
async def get_stream(
    jid: Annotated[str, Field(max_length=24)],
    pool: Pool,
    who: UserCaller,
    which: Which = "out",
    offset: Annotated[int | None, Query(ge=0, le=MAX_OFFSET)] = None,
    limit: Annotated[int, Query(ge=1, le=KEEP_BYTES)] = KEEP_BYTES,
) -> Response:
    """The job's streamed stdout (`which=out`) or stderr from `offset` (none:
    the last `limit` bytes); its owner's (and admins') only."""
    row = await guarded(pool.store.queue.get_job, jid)
    if not who.is_admin and row.owner != who.subject:
        raise HTTPException(403, f"not your job: {jid}")
    kept, at, data = await call(
        pool.store.streams.read, row.cluster_id, row.proc_id, which, offset, limit
    )
    return Response(
        data,
        media_type="application/octet-stream",
        headers={
            HEADERS["offset"]: str(at),
            HEADERS["start"]: str(kept.start),
            HEADERS["end"]: str(kept.end),
            HEADERS["state"]: str(row.state),
        },
    )
