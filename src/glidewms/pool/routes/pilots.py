"""Pilots: register, the pilot turn, the single claim and completion,
heartbeats, leaving; and the frontend's list of pilots.

The turn comes first: Starlette tries routes in order, and it is the one a
busy pool serves most. The one piece of logic here is the long-poll: a pilot
with nothing to do waits on the pool's `WorkSignal`, which every submit,
release and requeue fires, so it gets new work within milliseconds; a
notify for n jobs wakes n waiters, not all (deps.WorkSignal), and a woken
call that finds nothing hands its wake on.

Identity: a pilot is bound to the token that registered it (its subject and
fe, group, entry, site claims; deps.owner_of), and every later call about it
or its claims must come with a token of the same identity, or be admin's
(the store refuses the others as if the pilot or claim did not exist: 404
for a pilot, 409 for a claim, as for unknown ones). Registration takes the
slot's entry, site and glidein id as the token scopes them (`check_slot`).
"""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from glidewms.errors import responses
from glidewms.pool.blackhole import MAX_VICTIMS, Victim, requeue_victims
from glidewms.pool.checks import AMOUNT, INT32
from glidewms.pool.exit import Completion
from glidewms.pool.lifecycle import JOB_STATUS, JobState
from glidewms.pool.pilots import LEFT, PilotOwner
from glidewms.pool.routes.deps import (
    FrontendCaller,
    PilotCaller,
    Pool,
    call,
    gone,
    guarded,
    owner_of,
    pilot_owner,
)
from glidewms.pool.slots import free_from

MAX_CLAIMS_PER_CALL = 64  # claims one call may ask for (ClaimBody.max_jobs)
MAX_OUTPUTS = 100_000  # output files one completion may list (max_outputs_per_job keeps fewer)

router = APIRouter(responses=responses(404, 409, 410))  # deps.guarded

# Numbers from pilots are range-checked (422), never trusted to fit a column
# or to be finite: checks.py has the bounds.
Amount = Annotated[float, Field(ge=0, le=AMOUNT, allow_inf_nan=False)]
Free = Annotated[dict[str, Amount], Field(max_length=16, description="free cpus, memory, ...")]
Seconds = Annotated[float, Field(ge=0, le=10 * 365 * 86400.0, allow_inf_nan=False)]
ExitCode = Annotated[int, Field(ge=-INT32, lt=INT32)]


class OutputFile(BaseModel):
    name: str = Field(max_length=4096, description="where it lands, relative to the job's Iwd")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class InputError(BaseModel):
    reason: str = Field(max_length=4096)
    subcode: int = Field(0, ge=0, lt=INT32)


class CycleCompletion(BaseModel):
    claim_id: str = Field(min_length=1, max_length=64)
    exit_code: ExitCode
    outputs: list[OutputFile] = Field([], max_length=MAX_OUTPUTS)
    wall_seconds: Seconds = 0.0
    missing_outputs: list[Annotated[str, Field(max_length=4096)]] = Field(
        [], max_length=1000, description="transfer_output_files entries the job did not make"
    )
    input_error: InputError | None = Field(None, description="an input could not be fetched")
    evicted: bool = Field(False, description="the pilot ended the run; `checkpoint` its files")
    checkpoint: list[OutputFile] | None = Field(
        None,
        max_length=MAX_OUTPUTS,
        description="the files of a checkpoint (an exit with SuccessCheckpointExitCode)",
    )


class CycleBody(BaseModel):
    claims: list[Annotated[str, Field(max_length=64)]] | None = Field(
        None,
        max_length=4096,
        description="the claims the pilot runs: their leases are renewed, and the "
        "answer's `kill` names those it no longer holds (as a heartbeat's)",
    )
    completions: list[CycleCompletion] = Field([], max_length=4 * MAX_CLAIMS_PER_CALL)
    free: Free = {}
    wait: Seconds = Field(
        0.0,
        description="long-poll for claims, only if none completes "
        "and nothing can be claimed at once",
    )
    max_jobs: int = Field(1, ge=0, le=MAX_CLAIMS_PER_CALL, description="0: only report completions")


class RegisterBody(BaseModel):
    slot: dict[str, Any] = Field(description="the slot ad; held to the pool's ad bounds")
    glidein_id: str | None = Field(None, max_length=128)


class ClaimBody(BaseModel):
    free: Free = {}
    wait: Seconds = 0.0
    max_jobs: int = Field(
        1,
        ge=1,
        le=MAX_CLAIMS_PER_CALL,
        description='more than 1: answer {"claims": [...]} with up to '
        "this many claims (a pilot with several free slots)",
    )


class HeartbeatBody(BaseModel):
    claims: list[Annotated[str, Field(max_length=64)]] = Field([], max_length=4096)
    retiring: bool | None = Field(None, description="true: this pilot takes no new work")


class CompleteBody(BaseModel):
    exit_code: ExitCode
    outputs: list[OutputFile] = Field([], max_length=MAX_OUTPUTS)
    wall_seconds: Seconds = 0.0


class DeregisterBody(BaseModel):
    reason: str = Field("unspecified", max_length=4096)


@router.post("/pilots/{pilot_id}/cycle", response_model=dict[str, Any])
async def cycle(
    pilot_id: str, body: CycleBody, request: Request, pool: Pool, who: PilotCaller
) -> Any:
    """Completions and the next claims in one call (HTCondor's claim reuse).

    The completions are committed first; the call long-polls only when it
    carried none and nothing could be claimed at once, so a completion is
    never held back by a wait.

    A turn renews the pilot's lease and those of the claims it lists
    (`claims`), and answers `drain` and `kill` as a heartbeat does; a pilot
    that lists its claims (so knows this answer) and is drained is answered
    at once, and a drain wakes its long-poll (`WorkSignal.wake_pilots`).
    While the call long-polls the pilot is connected: its lease cannot run
    out (pool/leases.py) until the poll ends, or its client goes (watched
    here: the watcher ends the wait)."""
    config, signal, turns = pool.config, pool.signal, pool.store.turns
    leases = pool.store.pilots.leases
    owner = pilot_owner(who)
    deadline = time.monotonic() + min(body.wait, config.max_claim_wait)
    completions = [
        Completion(
            c.claim_id,
            c.exit_code,
            [o.model_dump() for o in c.outputs],
            c.wall_seconds,
            missing_outputs=c.missing_outputs,
            evicted=c.evicted,
            input_error=None if c.input_error is None else c.input_error.model_dump(),
            checkpoint=None if c.checkpoint is None else [o.model_dump() for o in c.checkpoint],
        )
        for c in body.completions
    ]
    listed = body.claims is not None  # the pilot reads drain and kill here
    held = body.claims or []
    token: int | None = None  # the notify that woke this call: it owes a look for it
    watcher: asyncio.Future[None] | None = None  # ends when the client goes
    turned = False  # a turn passed: the pilot is the caller's, and is connected
    try:
        while True:
            waiter = signal.enter(pilot_id)
            claims: list[dict[str, Any]] = []
            waits = False
            try:
                if not completions and await request.is_disconnected():
                    # a pilot killed mid-long-poll must not be handed the next job
                    return JSONResponse({"completed": {}, "claims": []})
                standing: dict[str, Any] = {}
                completed, claims, requeued = await guarded(
                    turns.cycle,
                    pilot_id,
                    completions,
                    body.free,
                    config.claim_lease_seconds,
                    body.max_jobs,
                    time.time(),
                    owner,
                    held,
                    standing,
                )
                if not turned:  # only the caller's own pilot: a refused call renews nothing
                    turned = True
                    leases.connect(pilot_id)
                if requeued:
                    signal.notify(requeued)  # an exit policy put jobs back to idle
                if (
                    claims
                    or completions
                    or body.max_jobs == 0
                    or (listed and standing["drain"])
                    or deadline <= time.monotonic()
                ):
                    return _turn_answer(completed, claims, standing if listed else None)
                waits = True
            finally:
                if token is not None and not claims:
                    signal.missed(token)  # woken for work that is not for this slot
                if not waits:
                    signal.leave(waiter)
            if watcher is None:
                watcher = asyncio.ensure_future(gone(request))
            token = await signal.wait(waiter, deadline - time.monotonic(), watcher)
            if token is None and not held and deadline <= time.monotonic():
                # the wait ran out unwoken, and no claim to look at again: any work
                # that came would have woken it (WorkSignal), so no last turn
                return _turn_answer({}, [], standing if listed else None)
    finally:
        if watcher is not None:
            watcher.cancel()
        if turned:
            leases.disconnect(pilot_id, time.time())  # seen until now


def _turn_answer(
    completed: dict[str, bool], claims: list[dict[str, Any]], standing: dict[str, Any] | None
) -> JSONResponse:
    """A Response is sent as it is: no validation pass over the claims. The
    heartbeat's part (drain, kill) only for a pilot that reads it."""
    answer: dict[str, Any] = {"completed": completed, "claims": claims}
    if standing is not None:
        answer.update(standing)
    return JSONResponse(answer)


@router.get("/pilots")
async def list_pilots(pool: Pool, who: FrontendCaller) -> list[dict[str, Any]]:
    rows = await call(pool.store.pilots.list_pilots)
    busy = await call(pool.store.pilots.busy_pilots)
    return [
        {
            "pilot_id": r.pilot_id,
            "glidein_id": r.glidein_id,
            "frontend": r.frontend,
            "group": r.group_name,
            "state": r.state,
            "running_jobs": busy.get(r.pilot_id, 0),
            "slot": r.slot,
            "registered_at": r.registered_at,
            "free": r.free or free_from(r.slot, None),
            "retiring": bool(r.retiring),
        }
        for r in rows
    ]


@router.post("/pilots", status_code=201)
async def register(body: RegisterBody, pool: Pool, who: PilotCaller) -> dict[str, Any]:
    owner = owner_of(who)
    check_slot(body, owner)
    config = pool.config
    pilot_id = await guarded(
        pool.store.pilots.register, body.slot, body.glidein_id, owner, config.pilot_lease_seconds
    )
    return {
        "pilot_id": pilot_id,
        "lease_seconds": config.claim_lease_seconds,
        "heartbeat_seconds": config.heartbeat_seconds,
        # a turn renews leases and answers drain/kill; a long-poll keeps the
        # pilot alive: heartbeats only for claims between turns (docs/protocol.md)
        "turns_renew_leases": True,
    }


def check_slot(body: RegisterBody, owner: PilotOwner) -> None:
    """Refuse (403, naming the attribute) a slot that contradicts its token.

    A token scoped to an entry registers only slots of that entry (a slot that
    names none becomes the entry's), and only glidein ids the factory gives
    that entry's pilots (`<entry>-...`); scoped to a site too, only slots of
    that site. A slot's GLIDEIN_Id, if any, is the glidein id it registers with.
    """
    slot = body.slot
    named = slot.get("GLIDEIN_Id")
    if named is not None and body.glidein_id is not None and named != body.glidein_id:
        raise HTTPException(
            422, f"slot.GLIDEIN_Id: {named!r} is not the glidein_id {body.glidein_id!r}"
        )
    if owner.entry is not None:
        claimed = slot.setdefault("GLIDEIN_Entry_Name", owner.entry)
        if claimed != owner.entry:
            raise HTTPException(
                403,
                f"slot.GLIDEIN_Entry_Name: this pilot token is for entry {owner.entry!r}, "
                f"not {claimed!r}",
            )
        glidein = body.glidein_id if body.glidein_id is not None else named
        if glidein is not None and not str(glidein).startswith(f"{owner.entry}-"):
            raise HTTPException(
                403,
                f"glidein_id: this pilot token is for entry {owner.entry!r}, whose glidein "
                f"ids begin {owner.entry}-, not {glidein!r}",
            )
    if owner.site is not None:
        site = slot.setdefault("GLIDEIN_Site", owner.site)
        if site != owner.site:
            raise HTTPException(
                403,
                f"slot.GLIDEIN_Site: this pilot token is for site {owner.site!r}, not {site!r}",
            )


@router.post("/pilots/{pilot_id}/claim")
async def claim(
    pilot_id: str, body: ClaimBody, request: Request, pool: Pool, who: PilotCaller
) -> Any:
    config, signal, turns = pool.config, pool.signal, pool.store.turns
    owner = pilot_owner(who)
    deadline = time.monotonic() + min(body.wait, config.max_claim_wait)
    token: int | None = None  # as in `cycle`
    while True:
        waiter = signal.enter()
        found: Any = None
        waits = False
        try:
            if await request.is_disconnected():
                # A pilot killed mid-long-poll must not be handed the next job:
                # nobody would run it until its lease ran out.
                return Response(status_code=204)
            if body.max_jobs == 1:  # the original form: one claim, as the object itself
                found = await guarded(
                    turns.claim, pilot_id, body.free, config.claim_lease_seconds, owner
                )
                if found is not None:
                    return found
            else:
                many = await guarded(
                    turns.claim_many,
                    pilot_id,
                    body.free,
                    config.claim_lease_seconds,
                    body.max_jobs,
                    owner,
                )
                if many:
                    found = {"claims": many}
                    return found
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return Response(status_code=204)
            waits = True
        finally:
            if token is not None and not found:
                signal.missed(token)
            if not waits:
                signal.leave(waiter)
        token = await signal.wait(waiter, remaining)


@router.post("/pilots/{pilot_id}/heartbeat", response_model=dict[str, Any])
async def heartbeat(pilot_id: str, body: HeartbeatBody, pool: Pool, who: PilotCaller) -> Any:
    """Renew leases (in memory: pool/leases.py); answer kill and drain. Sent
    as it is (no validation pass): heartbeats of busy pilots are the calls a
    large pool still serves most after turns."""
    config = pool.config
    answer = await guarded(
        pool.store.pilots.heartbeat,
        pilot_id,
        body.claims,
        config.pilot_lease_seconds,
        config.claim_lease_seconds,
        body.retiring,
        pilot_owner(who),
    )
    return JSONResponse(answer)


@router.post("/claims/{claim_id}/complete")
async def complete(
    claim_id: str, body: CompleteBody, pool: Pool, who: PilotCaller
) -> dict[str, Any]:
    jid, state = await guarded(
        pool.store.turns.complete,
        claim_id,
        body.exit_code,
        [o.model_dump() for o in body.outputs],
        body.wall_seconds,
        pilot_owner(who),
    )
    if state == JobState.IDLE:
        pool.signal.notify(1)  # an exit policy put the job back to idle
    return {"job_id": jid, "state": state, "status": JOB_STATUS[state]}


@router.post("/pilots/{pilot_id}/deregister")
async def deregister(
    pilot_id: str, body: DeregisterBody, pool: Pool, who: PilotCaller
) -> dict[str, Any]:
    requeued = await guarded(pool.store.pilots.deregister, pilot_id, body.reason, pilot_owner(who))
    pool.signal.notify(requeued)  # its jobs, or a job it had reserved (at least one wake)
    return {"pilot_id": pilot_id, "state": LEFT}


class VictimBody(BaseModel):
    claim_id: str = Field(max_length=64)
    exit_code: ExitCode
    wall_seconds: Seconds = 0.0


class BlackHoleBody(BaseModel):
    claims: list[VictimBody] = Field(max_length=MAX_VICTIMS)
    detail: str = Field("", max_length=1024)


@router.post("/pilots/{pilot_id}/black-hole")
async def black_hole(
    pilot_id: str, body: BlackHoleBody, pool: Pool, who: PilotCaller
) -> dict[str, Any]:
    """A pilot that declared its node a black hole names the claims whose quick
    failures it held back; the pool requeues them as site failures (blackhole.py)."""
    answer = await guarded(
        requeue_victims,
        pool.store.pilots,
        pilot_id,
        [Victim(c.claim_id, c.exit_code, c.wall_seconds) for c in body.claims],
        body.detail,
        pilot_owner(who),
    )
    if answer["requeued"]:
        pool.signal.notify(len(answer["requeued"]))  # idle jobs again
    return answer
