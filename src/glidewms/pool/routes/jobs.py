"""Jobs: submit, list, show, events, edit, hold/release/remove.

A user acts on their own jobs only (403 otherwise); an admin on anyone's.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, Field

from glidewms import classads
from glidewms.pool.jobs import InvalidJob, NewJob, full_ad, job_id
from glidewms.pool.lifecycle import JobCause
from glidewms.pool.routes.deps import Pool, PoolContext, UserCaller, call, guarded
from glidewms.protocol import API_PREFIX
from glidewms.security.tokens import Identity

router = APIRouter()


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
    value: str = Field(description='new value as a ClassAd expression, e.g. 2048 or "x"')


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


async def own_jobs(
    pool: PoolContext, who: Identity, ids: list[str], constraint: str | None
) -> list[Any]:
    """The jobs named by ids or a constraint; 404 for unknown ids, 403 for others' jobs."""
    if not ids and not constraint:
        raise HTTPException(422, "give job_ids or a constraint")
    list_jobs = pool.store.queue.list_jobs
    if ids:
        rows = await guarded(list_jobs, None, False, ids)
        found = {job_id(r.cluster_id, r.proc_id) for r, _ in rows}
        missing = [j for j in ids if j not in found]
        if missing:
            raise HTTPException(404, f"no such job(s): {', '.join(missing)}")
    else:
        rows = await guarded(list_jobs, constraint, False)
    if not who.is_admin:
        foreign = [job_id(r.cluster_id, r.proc_id) for r, _ in rows if r.owner != who.subject]
        if foreign:
            raise HTTPException(403, f"not your job(s): {', '.join(foreign)}")
    return [r for r, _ in rows]


@router.post("/jobs", status_code=201)
async def submit(body: SubmitBody, pool: Pool, who: UserCaller) -> dict[str, Any]:
    for index, job in enumerate(body.jobs):
        for f in job.sandbox:
            if not pool.files.has(f.sha256):
                raise HTTPException(
                    422,
                    f"jobs[{index}].sandbox: {f.name} ({f.sha256}) was "
                    f"not uploaded: PUT {API_PREFIX}/files/{{sha256}} first",
                )
    new_jobs = [
        NewJob(
            ad_text=job.ad,
            sandbox=[f.model_dump() for f in job.sandbox],
            args=job.args,
            env=job.env,
        )
        for job in body.jobs
    ]
    try:
        cluster_id, ids = await call(pool.store.queue.submit, who.subject, new_jobs)
    except InvalidJob as exc:
        raise HTTPException(422, f"{exc} (nothing was queued)") from None
    pool.signal.notify()
    return {"cluster_id": cluster_id, "job_ids": ids}


@router.get("/jobs")
async def list_jobs(
    pool: Pool,
    who: UserCaller,
    constraint: str | None = None,
    history: bool = False,
    long: bool = False,
) -> list[dict[str, Any]]:
    rows = await guarded(pool.store.queue.list_jobs, constraint, history)
    return [job_view(r, ad, long) for r, ad in rows]


@router.get("/jobs/{jid}")
async def show_job(jid: str, pool: Pool, who: UserCaller) -> dict[str, Any]:
    rows = await guarded(pool.store.queue.list_jobs, None, False, [jid])
    if not rows:
        raise HTTPException(404, f"no job {jid}")
    row, ad = rows[0]
    return job_view(row, ad, long=True)


@router.get("/jobs/{jid}/events")
async def job_events(jid: str, pool: Pool, who: UserCaller) -> list[dict[str, Any]]:
    await guarded(pool.store.queue.get_job, jid)
    return await call(pool.store.queue.job_events, jid)


# Before /jobs/{action}: Starlette takes the first route whose path matches.
@router.post("/jobs/edit")
async def edit(body: EditBody, pool: Pool, who: UserCaller) -> dict[str, Any]:
    rows = await own_jobs(pool, who, body.job_ids, body.constraint)
    changed, skipped = await guarded(
        pool.store.queue.edit, rows, body.attribute, body.value, who.subject
    )
    if changed:
        pool.signal.notify()  # an edited job may now match an idle pilot
    return {"changed": changed, "skipped": skipped}


@router.post("/jobs/{action}")
async def act(
    action: Literal["hold", "release", "remove"], body: ActionBody, pool: Pool, who: UserCaller
) -> dict[str, Any]:
    rows = await own_jobs(pool, who, body.job_ids, body.constraint)
    changed = await call(pool.store.queue.act, action, rows, body.reason, who.subject)
    if action == JobCause.RELEASE and changed:
        pool.signal.notify()
    return {"changed": changed}
