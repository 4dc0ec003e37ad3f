"""`/glideins`: pilots as frontends see them, and what pilots report about themselves.

A frontend sees its own pilots (admin: all) and their logs; a pilot may only
report on, and post its trail for, a glidein its token covers (`pilot_owns`):
of the frontend named in its `fe` claim and, where the token has them, of
its `group`, its `entry` and the glidein named by its `glidein` claim. Others'
glideins are refused with 403, not hidden: glidein ids name their entry and
are listed to frontends, so their existence is no secret.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from glidewms.errors import responses
from glidewms.factory.routes.deps import FactoryDep, Frontend, Pilot, StoreDep, frontend_filter
from glidewms.factory.states import GlideinState
from glidewms.factory.store import Glidein
from glidewms.security.tokens import Identity

MAX_REPORT_BYTES = 256 * 1024
MAX_LOG_BYTES = 1024 * 1024  # per POST of log records (contract 2)

router = APIRouter(prefix="/glideins", responses=responses(404))


class Attachment(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=255)
    base64: str


class LogRecord(BaseModel):
    """One line of a pilot's trail (what happened, when, from which process)."""

    model_config = ConfigDict(extra="forbid")

    time: float
    invoker: str = Field(max_length=255)
    pid: int
    severity: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
    type: str = Field(min_length=1, max_length=64)
    content: str
    attachments: list[Attachment] = Field(default_factory=list)


class LogPost(BaseModel):
    """POST /api/v1/glideins/{id}/log."""

    model_config = ConfigDict(extra="forbid")

    records: list[LogRecord]
    final: bool = False


class PilotReport(BaseModel):
    """POST /api/v1/glideins/{id}/report: the pilot's last word; extra keys are kept."""

    model_config = ConfigDict(extra="allow")

    exit_reason: str = Field(min_length=1, max_length=64)
    exit_code: int | None = None
    jobs_run: int = Field(default=0, ge=0)
    jobs_failed: int = Field(default=0, ge=0)
    detail: str = Field(default="", max_length=65536)


def owned(identity: Identity, glidein: Glidein | None, glidein_id: str) -> Glidein:
    """The glidein if the caller may see it (admin, or its frontend: the token's
    subject); 404/403 else."""
    if glidein is None:
        raise HTTPException(404, f"no glidein {glidein_id!r}")
    if not identity.is_admin and identity.subject != glidein.frontend:
        raise HTTPException(403, "this glidein belongs to another frontend")
    return glidein


def pilot_owns(identity: Identity, glidein: Glidein | None, glidein_id: str) -> Glidein:
    """The glidein if the caller's pilot token covers it (or it is admin); 404/403 else."""
    if glidein is None:
        raise HTTPException(404, f"no glidein {glidein_id!r}")
    if identity.is_admin:
        return glidein
    claims = identity.claims
    if claims.get("fe") != glidein.frontend:
        raise HTTPException(403, "this pilot token belongs to another frontend")
    for claim, value in (("group", glidein.group), ("entry", glidein.entry)):
        if claims.get(claim) is not None and claims[claim] != value:
            raise HTTPException(403, f"this pilot token is for another {claim}")
    if claims.get("glidein") is not None and claims["glidein"] != glidein_id:
        raise HTTPException(403, "this pilot token is for another glidein")
    return glidein


@router.get("")
async def glideins(
    identity: Frontend,
    store: StoreDep,
    summary: bool = False,
    group: str | None = None,
    entry: str | None = None,
    state: GlideinState | None = None,
    limit: Annotated[int, Query(ge=1, le=100000)] = 1000,
    exit_reason: str | None = None,
    since: float | None = None,
    until: float | None = None,
) -> Any:
    """This frontend's pilots (admin: all), newest first; or counts per entry and state.

    The log search: `entry`, `exit_reason` and submission time `since`/`until`.
    """
    who = frontend_filter(identity)
    if summary:
        return {"summary": await asyncio.to_thread(store.summary, who, group)}
    rows = await asyncio.to_thread(
        lambda: store.glideins(
            who,
            group,
            entry,
            state.value if state else None,
            limit,
            exit_reason=exit_reason,
            since=since,
            until=until,
        )
    )
    return [g.public() for g in rows]


@router.post("/{glidein_id}/report")
async def report(
    glidein_id: str, body: PilotReport, identity: Pilot, store: StoreDep
) -> dict[str, Any]:
    """Keep the pilot's final report; the pilot must belong to its token's frontend."""
    pilot_owns(identity, await asyncio.to_thread(store.get, glidein_id), glidein_id)
    data = body.model_dump()
    if len(json.dumps(data)) > MAX_REPORT_BYTES:
        raise HTTPException(413, f"report larger than {MAX_REPORT_BYTES} bytes")
    await asyncio.to_thread(store.record_report, glidein_id, data, body.exit_reason, body.exit_code)
    updated = await asyncio.to_thread(store.get, glidein_id)
    assert updated is not None
    return updated.public()


@router.post("/{glidein_id}/log")
async def post_log(
    glidein_id: str, request: Request, identity: Pilot, factory: FactoryDep
) -> dict[str, Any]:
    """Append the pilot's log records to its trail in the archive (contract 2)."""
    store = factory.store
    glidein = pilot_owns(identity, await asyncio.to_thread(store.get, glidein_id), glidein_id)
    raw = await request.body()
    if len(raw) > MAX_LOG_BYTES:
        raise HTTPException(413, f"log post larger than {MAX_LOG_BYTES} bytes; send less")
    try:
        body = LogPost.model_validate_json(raw)
    except ValidationError as exc:
        raise HTTPException(422, exc.errors(include_url=False, include_input=False)) from None
    if any(r.type == "registered" for r in body.records):  # entry health: it works there
        await asyncio.to_thread(store.mark_registered, glidein_id, time.time())
    stored = await asyncio.to_thread(
        factory.archive.append_trail,
        glidein.entry,
        glidein.frontend,
        glidein_id,
        [r.model_dump() for r in body.records],
        body.final,
    )
    return {"glidein_id": glidein_id, "stored": stored}


@router.get("/{glidein_id}/logs")
async def get_logs(glidein_id: str, identity: Frontend, factory: FactoryDep) -> dict[str, Any]:
    """A pilot's stdout, stderr and trail: archived, or live from its backend."""
    glidein = owned(identity, await asyncio.to_thread(factory.store.get, glidein_id), glidein_id)
    logs = await asyncio.to_thread(
        factory.archive.read, glidein.entry, glidein.frontend, glidein_id
    )
    backend = factory.backends.get(glidein.backend)
    if not logs["archived"] and backend is not None and glidein.backend_id:
        try:
            live = await backend.logs(glidein.backend_id)
            logs.update(stdout=live.stdout, stderr=live.stderr)
        except Exception as exc:
            logs["stderr"] = f"(the backend could not give the logs: {exc})"
    return {**glidein.public(), **logs}
