"""Jobs: submit, list, show, events, edit, hold/release/remove.

A user acts on their own jobs only (403 for others' jobs named by id; a
constraint selects among the caller's own jobs); an admin on anyone's.
Every user sees every job's state, requests and ad, but a job's arguments,
environment, input and output files only its owner and admins
(listing.PRIVATE; docs/security.md), and its events only they.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Path, Query
from pydantic import BaseModel, Field, field_validator

from glidewms import classads
from glidewms.errors import responses
from glidewms.pool import listing
from glidewms.pool.checks import INT32, check_sandbox_path
from glidewms.pool.jobs import NewJob, NotFound, full_ad, job_id, split_job_id
from glidewms.pool.lifecycle import JobCause
from glidewms.pool.materialize import Proto
from glidewms.pool.routes.deps import Pool, PoolContext, UserCaller, call, guarded
from glidewms.protocol import API_PREFIX
from glidewms.security.tokens import Identity

router = APIRouter(responses=responses(404, 409))  # deps.guarded

JobIdText = Annotated[str, Field(max_length=24, description="CLUSTER.PROC")]
Reason = Annotated[str, Field(max_length=4096)]


class SandboxFile(BaseModel):
    name: str = Field(
        description="path inside the job sandbox: plain names joined by / (the files "
        "of an input directory), none . or .., no control characters"
    )
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    executable: bool = False

    @field_validator("name")
    @classmethod
    def _plain(cls, name: str) -> str:
        return check_sandbox_path(name, "name")


class JobSubmission(BaseModel):
    ad: str = Field(description="the job ClassAd, bracketed new syntax")
    sandbox: list[SandboxFile] = []
    args: list[str] = []
    env: dict[str, str] = {}


class SubmitBody(BaseModel):
    jobs: list[JobSubmission] = Field(min_length=1)


AttrName = Annotated[str, Field(max_length=256)]


class ProtoJob(BaseModel):
    """A cluster's common job: its ad as attributes (name -> ClassAd
    expression, ProcId left out), sandbox, arguments, environment."""

    attrs: dict[AttrName, str]
    sandbox: list[SandboxFile] = []
    args: list[str] = []
    env: dict[str, str] = {}


class ProcDelta(BaseModel):
    """One proc: what differs from the proto (besides ProcId); absent: the proto's."""

    ad: dict[AttrName, str] = {}
    unset: list[AttrName] = Field(default=[], description="proto attributes this proc lacks")
    sandbox: list[SandboxFile] | None = None
    args: list[str] | None = None
    env: dict[str, str] | None = None

    def stored(self) -> dict[str, Any]:
        """As materialize.proc_job reads it, without what is absent."""
        out: dict[str, Any] = {}
        if self.ad:
            out["ad"] = self.ad
        if self.unset:
            out["unset"] = self.unset
        if self.sandbox is not None:
            out["sandbox"] = [f.model_dump() for f in self.sandbox]
        for key, value in (("args", self.args), ("env", self.env)):
            if value is not None:
                out[key] = value
        return out


class ClusterBody(BaseModel):
    proto: ProtoJob
    max_materialize: int | None = Field(
        None, ge=1, lt=INT32, description="most of its jobs in the queue at once"
    )
    max_idle: int | None = Field(
        None, ge=1, lt=INT32, description="most of its jobs idle or held at once"
    )


class ProcsBody(BaseModel):
    first: int = Field(ge=0, lt=INT32, description="ProcId of the first proc of this chunk")
    procs: list[ProcDelta] = Field(min_length=1)


class CommitBody(BaseModel):
    total: int = Field(ge=1, lt=INT32, description="procs sent, all chunks together")


class ActionBody(BaseModel):
    job_ids: list[JobIdText] = []
    constraint: str | None = None
    reason: Reason = ""


class EditBody(BaseModel):
    job_ids: list[JobIdText] = []
    constraint: str | None = None
    attribute: str = Field(max_length=256, description="ClassAd attribute name")
    value: str = Field(description='new value as a ClassAd expression, e.g. 2048 or "x"')


def job_view(row: Any, ad_text: str, long: bool = False, private: bool = True) -> dict[str, Any]:
    """A job as listings show it. Built from columns and text: a listing of a
    large queue parses no ad (only jobs queued before `cmd` was kept in the
    sandbox column, or a long view, parse theirs). Without `private` (another
    user's job), arguments and outputs are left out and `ad_text` is expected
    without listing.PRIVATE."""
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
        "args": sandbox.get("args", []) if private else [],
        "exit_code": row.exit_code,
        "hold_reason": row.hold_reason,
        "hold_reason_code": row.hold_code,
        "num_starts": row.num_starts,
        "num_restarts": row.num_restarts,
        "pilot_id": row.pilot_id,
        "completion_date": row.completion_date,
        "outputs": (row.outputs or []) if private else [],
        "ad": ad_text,
        "redacted": not private,
    }
    if long:
        view["ad_long"] = classads.to_long(full_ad(row)) if private else listing.Redactor.long(row)
    return view


def views(rows: list[tuple[Any, str]], who: Identity, long: bool) -> list[dict[str, Any]]:
    """Each job as `who` may see it."""
    redactor = listing.Redactor()
    out = []
    for row, ad in rows:
        mine = who.is_admin or row.owner == who.subject
        out.append(job_view(row, ad if mine else redactor.ad_text(row), long, mine))
    return out


async def own_jobs(pool: PoolContext, who: Identity, ids: list[str]) -> list[Any]:
    """The jobs named by ids: 404 for unknown ids, 403 for others' jobs."""
    limit = pool.config.max_jobs_per_request
    if len(ids) > limit:
        raise HTTPException(422, f"job_ids: {len(ids)} ids; at most {limit} per request")
    list_jobs, step = pool.store.queue.list_jobs, pool.config.bulk_batch_size
    rows = []
    for start in range(0, len(ids), step):
        rows += [r for r, _ in await guarded(list_jobs, None, False, ids[start : start + step])]
    found = {job_id(r.cluster_id, r.proc_id) for r in rows}
    missing = [j for j in ids if j not in found]
    if missing:
        raise HTTPException(404, f"no such job(s): {', '.join(missing[:100])}")
    if not who.is_admin:
        foreign = [job_id(r.cluster_id, r.proc_id) for r in rows if r.owner != who.subject]
        if foreign:
            raise HTTPException(403, f"not your job(s): {', '.join(foreign[:100])}")
    return rows


def _selection(body: ActionBody | EditBody) -> None:
    if not body.job_ids and not body.constraint:
        raise HTTPException(422, "give job_ids or a constraint")


@router.post("/jobs", status_code=201)
async def submit(body: SubmitBody, pool: Pool, who: UserCaller) -> dict[str, Any]:
    limit = pool.config.max_jobs_per_request
    if len(body.jobs) > limit:
        raise HTTPException(422, f"jobs: {len(body.jobs)} jobs; at most {limit} per submit")
    await _uploaded(pool, who, [(i, job.sandbox) for i, job in enumerate(body.jobs)])
    new_jobs = [
        NewJob(
            ad_text=job.ad,
            sandbox=[f.model_dump() for f in job.sandbox],
            args=job.args,
            env=job.env,
        )
        for job in body.jobs
    ]
    cluster_id, ids = await guarded(pool.store.queue.submit, who.subject, new_jobs)
    pool.signal.notify(len(ids))
    return {"cluster_id": cluster_id, "job_ids": ids}


async def _uploaded(
    pool: PoolContext, who: Identity, sandboxes: list[tuple[int, list[SandboxFile] | None]]
) -> None:
    """422 unless every file the jobs name was uploaded and the caller may read it."""
    wanted: dict[str, tuple[int, str]] = {}
    for index, sandbox in sandboxes:
        for f in sandbox or []:
            wanted.setdefault(f.sha256, (index, f.name))
    if not wanted:
        return
    readable = await call(pool.store.files.readable_by_user, who.subject, list(wanted))
    for sha256, (index, name) in wanted.items():
        if sha256 not in readable or not pool.files.has(sha256):
            raise HTTPException(
                422,
                f"jobs[{index}].sandbox: {name} ({sha256}) was "
                f"not uploaded: PUT {API_PREFIX}/files/{{sha256}} first",
            )


# Late materialisation (pool/materialize.py): a cluster sent as its proto job
# and chunks of per-proc deltas, then committed. Each body stays within the
# pool's ordinary body size; chunks of one cluster come one after the other.


@router.post("/clusters", status_code=201)
async def create_cluster(body: ClusterBody, pool: Pool, who: UserCaller) -> dict[str, Any]:
    """A cluster of the caller's, invisible until committed: {"cluster_id"}."""
    await _uploaded(pool, who, [(0, body.proto.sandbox)])
    p = body.proto
    proto = Proto(p.attrs, [f.model_dump() for f in p.sandbox], p.args, p.env)
    materializer = pool.store.materializer
    cluster_id = await guarded(
        materializer.create,
        who.subject,
        proto,
        body.max_materialize,
        body.max_idle,
        pool.config.max_staging_clusters,
    )
    return {"cluster_id": cluster_id}


@router.post("/clusters/{cluster_id}/procs")
async def add_procs(
    cluster_id: Annotated[int, Path(ge=0, lt=INT32)], body: ProcsBody, pool: Pool, who: UserCaller
) -> dict[str, Any]:
    """The next chunk of procs ({"staged": procs the cluster now has}); jobs
    are numbered from body.first, as in the 422s."""
    limit = pool.config.max_jobs_per_request
    if len(body.procs) > limit:
        raise HTTPException(422, f"procs: {len(body.procs)}; at most {limit} per chunk")
    await _uploaded(pool, who, [(body.first + i, d.sandbox) for i, d in enumerate(body.procs)])
    deltas = [d.stored() for d in body.procs]
    staged = await guarded(
        pool.store.materializer.append,
        who.subject,
        cluster_id,
        body.first,
        deltas,
        pool.config.max_procs_per_cluster,
    )
    return {"staged": staged}


@router.post("/clusters/{cluster_id}/commit")
async def commit_cluster(
    cluster_id: Annotated[int, Path(ge=0, lt=INT32)], body: CommitBody, pool: Pool, who: UserCaller
) -> dict[str, Any]:
    """Queue the cluster: {"cluster_id", "total", "materialized"} (jobs written now)."""
    n = await guarded(pool.store.materializer.commit, who.subject, cluster_id, body.total)
    if n:
        pool.signal.notify(n)
    return {"cluster_id": cluster_id, "total": body.total, "materialized": n}


@router.get("/clusters")
async def late_clusters(
    pool: Pool,
    who: UserCaller,
    mine: Annotated[bool, Query(description="only the caller's (an admin sees all)")] = True,
) -> list[dict[str, Any]]:
    """Late-materialising clusters with jobs in the queue or still to
    materialise: total, materialized (ProcIds written so far), queued, limits.
    A user sees their own only."""
    owner = who.subject if mine or not who.is_admin else None
    return await call(pool.store.materializer.clusters, owner)


@router.post("/clusters/{cluster_id}/remove")
async def remove_cluster(
    cluster_id: Annotated[int, Path(ge=0, lt=INT32)], body: ActionBody, pool: Pool, who: UserCaller
) -> dict[str, Any]:
    """condor_rm of a whole cluster: its procs not yet materialised are
    dropped, then its queued jobs removed: {"pending", "changed"}."""
    owner = None if who.is_admin else who.subject
    try:
        pending = await call(pool.store.materializer.remove_pending, owner, cluster_id)
    except NotFound:
        pending = 0  # not late-materialising (or not the caller's): its queued jobs only
    changed = await guarded(
        pool.store.actions.act_where,
        JobCause.REMOVE.value,
        owner,
        f"ClusterId == {cluster_id}",
        body.reason,
        who.subject,
    )
    return {"pending": pending, "changed": changed}


MAX_JOBS_PAGE = 10_000  # jobs one listing returns; clients page with `after`


@router.get("/jobs")
async def list_jobs(
    pool: Pool,
    who: UserCaller,
    constraint: str | None = None,
    history: bool = False,
    long: bool = False,
    mine: Annotated[bool, Query(description="only the caller's jobs (condor_q's default)")] = False,
    limit: Annotated[int, Query(ge=1, le=MAX_JOBS_PAGE)] = MAX_JOBS_PAGE,
    after: Annotated[
        str | None, Query(max_length=24, description="CLUSTER.PROC: jobs after this one")
    ] = None,
) -> list[dict[str, Any]]:
    """Jobs in job-id order, at most `limit` (a shorter answer is the last page)."""
    viewer = None if who.is_admin else who.subject
    owner = who.subject if mine else None
    start = None
    if after is not None:
        try:
            start = split_job_id(after)
        except ValueError:
            raise HTTPException(422, f"after: not a job id (CLUSTER.PROC): {after!r}") from None
    rows = await guarded(
        pool.store.queue.list_jobs, constraint, history, None, viewer, owner, start, limit
    )
    return views(rows, who, long)


@router.get("/jobs/{jid}")
async def show_job(jid: str, pool: Pool, who: UserCaller) -> dict[str, Any]:
    rows = await guarded(pool.store.queue.list_jobs, None, False, [jid])
    if not rows:
        raise HTTPException(404, f"no job {jid}")
    return views(rows, who, long=True)[0]


@router.get("/jobs/{jid}/events")
async def job_events(jid: str, pool: Pool, who: UserCaller) -> list[dict[str, Any]]:
    """A job's log: its owner's (and admins') only."""
    row = await guarded(pool.store.queue.get_job, jid)
    if not who.is_admin and row.owner != who.subject:
        raise HTTPException(403, f"not your job: {jid}")
    return await call(pool.store.queue.job_events, jid)


# Before /jobs/{action}: Starlette takes the first route whose path matches.
@router.post("/jobs/edit")
async def edit(body: EditBody, pool: Pool, who: UserCaller) -> dict[str, Any]:
    _selection(body)
    actions = pool.store.actions
    if not body.job_ids:
        owner = None if who.is_admin else who.subject
        changed, skipped = await guarded(
            actions.edit_where, owner, body.constraint, body.attribute, body.value, who.subject
        )
    else:
        rows = await own_jobs(pool, who, body.job_ids)
        changed, skipped = await guarded(
            actions.edit, rows, body.attribute, body.value, who.subject
        )
    if changed:
        pool.signal.notify(len(changed))  # an edited job may now match an idle pilot
    return {"changed": changed, "skipped": skipped}


@router.post("/jobs/{action}")
async def act(
    action: Literal["hold", "release", "remove"], body: ActionBody, pool: Pool, who: UserCaller
) -> dict[str, Any]:
    _selection(body)
    actions = pool.store.actions
    if not body.job_ids:
        owner = None if who.is_admin else who.subject
        changed = await guarded(
            actions.act_where, action, owner, body.constraint, body.reason, who.subject
        )
    else:
        rows = await own_jobs(pool, who, body.job_ids)
        changed = await guarded(actions.act, action, rows, body.reason, who.subject)
    if action == JobCause.RELEASE.value and changed:
        pool.signal.notify(len(changed))
    return {"changed": changed}
