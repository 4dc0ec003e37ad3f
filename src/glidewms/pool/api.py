"""The pool's HTTP API (see docs/protocol.md).

Handlers are thin: they check the caller's token, validate the body, call the
store in a worker thread, and translate store exceptions to HTTP statuses.
The one piece of logic here is the claim long-poll: a pilot with nothing to do
waits on an in-process signal that every submit, release and requeue fires,
so it gets new work within milliseconds instead of at the next cycle.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Request, Response
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from glidewms import classads
from glidewms.config.pool import PoolConfig
from glidewms.db import make_engine
from glidewms.pool.jobs import InvalidEdit, full_ad
from glidewms.pool.pilots import free_from
from glidewms.pool.sandbox import BadDigest, SandboxStore
from glidewms.pool.store import (
    JOB_STATUS,
    Completion,
    Conflict,
    FairShare,
    InvalidJob,
    NewJob,
    NotFound,
    PilotGone,
    PoolStore,
    job_id,
)
from glidewms.security.http import require
from glidewms.security.tokens import Identity, TokenIssuer, TokenVerifier

log = logging.getLogger(__name__)

MAX_CLAIMS_PER_CALL = 64  # claims one call may ask for (ClaimBody.max_jobs)


class WorkSignal:
    """Wakes every waiting claim when work may have appeared.

    Callers take `current()` *before* looking for work, so a notify that
    happens between the look and the wait is never missed.
    """

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def current(self) -> asyncio.Event:
        return self._event

    def notify(self) -> None:
        self._event.set()
        self._event = asyncio.Event()


# ------------------------------------------------------------------ bodies

class SandboxFile(BaseModel):
    name: str = Field(pattern=r"^[^/\x00]+$", description="file name inside the job sandbox")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    executable: bool = False


class JobSubmission(BaseModel):
    ad: str = Field(description="the job ClassAd, bracketed new syntax")
    sandbox: list[SandboxFile] = []
    args: list[str] = []
    env: dict[str, str] = {}


class SubmitBody(BaseModel):
    jobs: list[JobSubmission] = Field(min_length=1)


class ActionBody(BaseModel):
    job_ids: list[str] = []
    constraint: str | None = None
    reason: str = ""


class EditBody(BaseModel):
    job_ids: list[str] = []
    constraint: str | None = None
    attribute: str = Field(description="ClassAd attribute name")
    value: str = Field(description="new value as a ClassAd expression, e.g. 2048 or \"x\"")


class RegisterBody(BaseModel):
    slot: dict[str, Any]
    glidein_id: str | None = None


class ClaimBody(BaseModel):
    free: dict[str, float] = {}
    wait: float = Field(0.0, ge=0)
    max_jobs: int = Field(1, ge=1, le=MAX_CLAIMS_PER_CALL,
                          description="more than 1: answer {\"claims\": [...]} with up to "
                                      "this many claims (a pilot with several free slots)")


class CycleCompletion(BaseModel):
    claim_id: str = Field(min_length=1, max_length=64)
    exit_code: int
    outputs: list[OutputFile] = []
    wall_seconds: float = 0.0


class CycleBody(BaseModel):
    completions: list[CycleCompletion] = Field([], max_length=4 * MAX_CLAIMS_PER_CALL)
    free: dict[str, float] = {}
    wait: float = Field(0.0, ge=0, description="long-poll for claims, only if none completes "
                                                "and nothing can be claimed at once")
    max_jobs: int = Field(1, ge=0, le=MAX_CLAIMS_PER_CALL,
                          description="0: only report completions")


class HeartbeatBody(BaseModel):
    claims: list[str] = []
    retiring: bool | None = Field(None, description="true: this pilot takes no new work")


class OutputFile(BaseModel):
    name: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class CompleteBody(BaseModel):
    exit_code: int
    outputs: list[OutputFile] = []
    wall_seconds: float = 0.0


class DeregisterBody(BaseModel):
    reason: str = "unspecified"


class PilotTokenBody(BaseModel):
    group: str = Field("main", pattern=r"^[A-Za-z0-9_.-]+$")
    lifetime: float = Field(24 * 3600.0, gt=0)
    # An entry-scoped token only registers pilots of that entry: a token copied
    # off one site's worker node cannot feed slots claiming to be elsewhere.
    entry: str | None = Field(None, pattern=r"^[A-Za-z0-9_.@-]+$")


def job_view(row: Any, ad_text: str, long: bool = False) -> dict[str, Any]:
    """A job as listings show it. Built from columns and text: a listing of a
    large queue parses no ad (only jobs queued before `cmd` was kept in the
    sandbox column, or a long view, parse theirs)."""
    sandbox = row.sandbox or {}
    if "cmd" in sandbox:
        cmd = sandbox["cmd"]
    else:
        ad = full_ad(row)
        cmd = ad.eval("Cmd") if "Cmd" in ad else None
    view = {
        "job_id": job_id(row.cluster_id, row.proc_id),
        "owner": row.owner,
        "state": row.state,
        "q_date": row.q_date,
        "cmd": cmd if isinstance(cmd, str) else None,
        "args": (row.sandbox or {}).get("args", []),
        "exit_code": row.exit_code,
        "hold_reason": row.hold_reason,
        "hold_reason_code": row.hold_code,
        "num_starts": row.num_starts,
        "num_restarts": row.num_restarts,
        "pilot_id": row.pilot_id,
        "completion_date": row.completion_date,
        "outputs": row.outputs or [],
        "ad": ad_text,
    }
    if long:
        view["ad_long"] = classads.to_long(full_ad(row))
    return view


def create_app(config: PoolConfig, public_url: str = "") -> FastAPI:
    config.state_dir.mkdir(parents=True, exist_ok=True)
    fair_share = FairShare(config.priority_halflife, config.priority_factors,
                           config.group_priority_factors, config.default_priority_factor)
    store = PoolStore(make_engine(config.resolved_database_url()), config.max_job_restarts,
                      fair_share, config.reserve_for_large_jobs, config.database_lock_wait,
                      config.significant_attributes)
    files = SandboxStore(config.state_dir / "files")
    key_dir = config.state_dir.parent / "keys"
    public_key = config.issuer_public_key or key_dir / "issuer.pub"
    issuer = TokenIssuer.from_file(config.issuer_private_key) if config.issuer_private_key else None
    signal = WorkSignal()

    async def expire_loop() -> None:
        next_periodic = time.monotonic() + config.periodic_check_seconds
        while True:
            try:
                if await run_in_threadpool(store.expire_leases):
                    signal.notify()
                await run_in_threadpool(store.flush_usage)
                if time.monotonic() >= next_periodic:
                    next_periodic = time.monotonic() + config.periodic_check_seconds
                    changed = await run_in_threadpool(store.apply_periodic)
                    if any(changed.values()):
                        log.info("periodic expressions: %s",
                                 {k: len(v) for k, v in changed.items()})
                        signal.notify()
            except Exception:  # keep the loop alive: a failed pass is retried next tick
                log.exception("lease expiry pass failed")
            await asyncio.sleep(config.lease_check_seconds)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(expire_loop())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        with contextlib.suppress(Exception):
            await run_in_threadpool(store.flush_usage)
        store.close()

    app = FastAPI(title="glidewms pool", version="1", lifespan=lifespan)
    app.state.verifier = TokenVerifier.from_file(public_key)
    app.state.store = store
    app.state.public_url = public_url

    user = require("user")
    pilot = require("pilot")
    frontend = require("frontend")

    def call(fn: Any, *args: Any) -> Any:
        return run_in_threadpool(fn, *args)

    async def guarded(fn: Any, *args: Any) -> Any:
        try:
            return await call(fn, *args)
        except NotFound as exc:
            raise HTTPException(404, str(exc)) from None
        except PilotGone as exc:
            raise HTTPException(410, str(exc)) from None
        except Conflict as exc:
            raise HTTPException(409, str(exc)) from None
        except (classads.ClassAdError, InvalidEdit) as exc:
            raise HTTPException(422, str(exc)) from None

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    # ----------------------------------------------------------- pilot turns
    # First of the routes: Starlette tries them in order, and this is the one
    # a busy pool serves most (every pilot turn).

    @app.post("/api/v1/pilots/{pilot_id}/cycle", response_model=dict[str, Any])
    async def cycle(pilot_id: str, body: CycleBody, request: Request,
                    who: Identity = Depends(pilot)) -> Any:
        """Completions and the next claims in one call (HTCondor's claim reuse).

        The completions are committed first; the call long-polls only when it
        carried none and nothing could be claimed at once, so a completion is
        never held back by a wait."""
        deadline = time.monotonic() + min(body.wait, config.max_claim_wait)
        completions = [Completion(c.claim_id, c.exit_code, [o.model_dump() for o in c.outputs],
                                  c.wall_seconds) for c in body.completions]
        while True:
            wake = signal.current()
            if not completions and await request.is_disconnected():
                # a pilot killed mid-long-poll must not be handed the next job
                return JSONResponse({"completed": {}, "claims": []})
            completed, claims, requeued = await guarded(
                store.cycle, pilot_id, completions, body.free, config.claim_lease_seconds,
                body.max_jobs, time.time())
            if requeued:
                signal.notify()  # an exit policy put a job back to idle
            if claims or completions or body.max_jobs == 0 or deadline <= time.monotonic():
                # a Response is sent as it is: no validation pass over the claims
                return JSONResponse({"completed": completed, "claims": claims})
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(wake.wait(), deadline - time.monotonic())

    # ----------------------------------------------------------- jobs

    @app.post("/api/v1/jobs", status_code=201)
    async def submit(body: SubmitBody, who: Identity = Depends(user)) -> dict[str, Any]:
        for index, job in enumerate(body.jobs):
            for f in job.sandbox:
                if not files.has(f.sha256):
                    raise HTTPException(422, f"jobs[{index}].sandbox: {f.name} ({f.sha256}) was "
                                        "not uploaded: PUT /api/v1/files/{sha256} first")
        new_jobs = [NewJob(ad_text=job.ad, sandbox=[f.model_dump() for f in job.sandbox],
                           args=job.args, env=job.env) for job in body.jobs]
        try:
            cluster_id, ids = await call(store.submit, who.subject, new_jobs)
        except InvalidJob as exc:
            raise HTTPException(422, f"{exc} (nothing was queued)") from None
        signal.notify()
        return {"cluster_id": cluster_id, "job_ids": ids}

    @app.get("/api/v1/jobs")
    async def list_jobs(constraint: str | None = None, history: bool = False,
                        long: bool = False, who: Identity = Depends(user)) -> list[dict[str, Any]]:
        rows = await guarded(store.list_jobs, constraint, history)
        return [job_view(r, ad, long) for r, ad in rows]

    @app.get("/api/v1/jobs/{jid}")
    async def show_job(jid: str, who: Identity = Depends(user)) -> dict[str, Any]:
        rows = await guarded(store.list_jobs, None, False, [jid])
        if not rows:
            raise HTTPException(404, f"no job {jid}")
        row, ad = rows[0]
        return job_view(row, ad, long=True)

    @app.get("/api/v1/jobs/{jid}/events")
    async def job_events(jid: str, who: Identity = Depends(user)) -> list[dict[str, Any]]:
        await guarded(store.get_job, jid)
        return await call(store.job_events, jid)

    async def own_jobs(who: Identity, ids: list[str], constraint: str | None) -> list[Any]:
        """The jobs named by ids or a constraint; 404 for unknown ids, 403 for others' jobs."""
        if not ids and not constraint:
            raise HTTPException(422, "give job_ids or a constraint")
        if ids:
            rows = await guarded(store.list_jobs, None, False, ids)
            found = {job_id(r.cluster_id, r.proc_id) for r, _ in rows}
            missing = [j for j in ids if j not in found]
            if missing:
                raise HTTPException(404, f"no such job(s): {', '.join(missing)}")
        else:
            rows = await guarded(store.list_jobs, constraint, False)
        if not who.is_admin:
            foreign = [job_id(r.cluster_id, r.proc_id) for r, _ in rows if r.owner != who.subject]
            if foreign:
                raise HTTPException(403, f"not your job(s): {', '.join(foreign)}")
        return [r for r, _ in rows]

    @app.post("/api/v1/jobs/edit")
    async def edit(body: EditBody, who: Identity = Depends(user)) -> dict[str, Any]:
        rows = await own_jobs(who, body.job_ids, body.constraint)
        changed, skipped = await guarded(store.edit, rows, body.attribute, body.value,
                                         who.subject)
        if changed:
            signal.notify()  # an edited job may now match an idle pilot
        return {"changed": changed, "skipped": skipped}

    @app.get("/api/v1/userprio")
    async def userprio(who: Identity = Depends(user)) -> dict[str, Any]:
        return {"time": time.time(), "halflife": config.priority_halflife,
                "submitters": await call(store.userprio)}

    @app.get("/api/v1/stats")
    async def stats(who: Identity = Depends(user)) -> dict[str, Any]:
        """Counters, and the queue's idle/running counts from memory: cheap
        enough to poll (the throughput benchmark waits on it)."""
        return {"time": time.time(), "counters": await call(store.stats),
                "queue": await call(store.queue_counts)}

    @app.post("/api/v1/jobs/{action}")
    async def act(action: Literal["hold", "release", "remove"], body: ActionBody,
                  who: Identity = Depends(user)) -> dict[str, Any]:
        rows = await own_jobs(who, body.job_ids, body.constraint)
        changed = await call(store.act, action, rows, body.reason, who.subject)
        if action == "release" and changed:
            signal.notify()
        return {"changed": changed}

    # ----------------------------------------------------------- files

    @app.put("/api/v1/files/{sha256}", status_code=201)
    async def put_file(sha256: str, request: Request,
                       who: Identity = Depends(require("user", "pilot"))) -> dict[str, Any]:
        try:
            if files.has(sha256):
                return {"sha256": sha256, "stored": False}
            size = await files.put_stream(sha256, request.stream())
        except BadDigest as exc:
            raise HTTPException(422, str(exc)) from None
        return {"sha256": sha256, "stored": True, "size": size}

    @app.get("/api/v1/files/{sha256}")
    async def get_file(sha256: str,
                       who: Identity = Depends(require("user", "pilot"))) -> FileResponse:
        try:
            path = files.path(sha256)
        except BadDigest as exc:
            raise HTTPException(422, str(exc)) from None
        if not path.is_file():
            raise HTTPException(404, f"no file {sha256}")
        return FileResponse(path, media_type="application/octet-stream")

    # ----------------------------------------------------------- frontend

    @app.get("/api/v1/demand")
    async def demand(who: Identity = Depends(frontend)) -> dict[str, Any]:
        return {"time": time.time(), "autoclusters": await call(store.demand)}

    @app.get("/api/v1/pilots")
    async def list_pilots(who: Identity = Depends(frontend)) -> list[dict[str, Any]]:
        rows = await call(store.list_pilots)
        busy = await call(store.busy_pilots)
        return [{"pilot_id": r.pilot_id, "glidein_id": r.glidein_id, "frontend": r.frontend,
                 "group": r.group_name, "state": r.state, "running_jobs": busy.get(r.pilot_id, 0),
                 "slot": r.slot, "registered_at": r.registered_at,
                 "free": r.free or free_from(r.slot, None), "retiring": bool(r.retiring)}
                for r in rows]

    @app.post("/api/v1/tokens/pilot")
    async def pilot_token(body: PilotTokenBody,
                          who: Identity = Depends(frontend)) -> dict[str, Any]:
        if issuer is None:
            raise HTTPException(503, "this pool has no issuer_private_key: it cannot mint tokens")
        lifetime = min(body.lifetime, config.max_pilot_token_lifetime)
        scope = {"entry": body.entry} if body.entry else {}
        token = issuer.issue("pilot", ["pilot"], lifetime, fe=who.subject, group=body.group,
                             **scope)
        return {"token": token, "expires": time.time() + lifetime}

    # ----------------------------------------------------------- pilots

    @app.post("/api/v1/pilots", status_code=201)
    async def register(body: RegisterBody, who: Identity = Depends(pilot)) -> dict[str, Any]:
        entry = who.claims.get("entry")
        if entry is not None:
            claimed = body.slot.setdefault("GLIDEIN_Entry_Name", entry)
            if claimed != entry:
                raise HTTPException(403, f"this pilot token is for entry {entry!r}, "
                                         f"not {claimed!r}")
        pilot_id = await call(store.register_pilot, body.slot, body.glidein_id,
                              who.claims.get("fe"), who.claims.get("group"),
                              config.pilot_lease_seconds)
        return {"pilot_id": pilot_id, "lease_seconds": config.claim_lease_seconds,
                "heartbeat_seconds": config.heartbeat_seconds}

    @app.post("/api/v1/pilots/{pilot_id}/claim")
    async def claim(pilot_id: str, body: ClaimBody, request: Request,
                    who: Identity = Depends(pilot)) -> Any:
        deadline = time.monotonic() + min(body.wait, config.max_claim_wait)
        while True:
            wake = signal.current()
            if await request.is_disconnected():
                # A pilot killed mid-long-poll must not be handed the next job:
                # nobody would run it until its lease ran out.
                return Response(status_code=204)
            if body.max_jobs == 1:  # the original form: one claim, as the object itself
                found = await guarded(store.claim, pilot_id, body.free,
                                      config.claim_lease_seconds)
                if found is not None:
                    return found
            else:
                many = await guarded(store.claim_many, pilot_id, body.free,
                                     config.claim_lease_seconds, body.max_jobs)
                if many:
                    return {"claims": many}
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return Response(status_code=204)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(wake.wait(), remaining)

    @app.post("/api/v1/pilots/{pilot_id}/heartbeat")
    async def heartbeat(pilot_id: str, body: HeartbeatBody,
                        who: Identity = Depends(pilot)) -> dict[str, Any]:
        return await guarded(store.heartbeat, pilot_id, body.claims,
                             config.pilot_lease_seconds, config.claim_lease_seconds,
                             body.retiring)

    @app.post("/api/v1/claims/{claim_id}/complete")
    async def complete(claim_id: str, body: CompleteBody,
                       who: Identity = Depends(pilot)) -> dict[str, Any]:
        jid, state = await guarded(store.complete, claim_id, body.exit_code,
                                   [o.model_dump() for o in body.outputs], body.wall_seconds)
        if state == "idle":
            signal.notify()  # an exit policy put the job back to idle
        return {"job_id": jid, "state": state, "status": JOB_STATUS[state]}

    @app.post("/api/v1/pilots/{pilot_id}/deregister")
    async def deregister(pilot_id: str, body: DeregisterBody,
                         who: Identity = Depends(pilot)) -> dict[str, Any]:
        await guarded(store.deregister, pilot_id, body.reason)
        signal.notify()
        return {"pilot_id": pilot_id, "state": "gone"}

    return app
