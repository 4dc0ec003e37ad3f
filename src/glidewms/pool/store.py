"""The pool's durable state: jobs, autoclusters, pilots, claims, events.

Every state change is one transaction, so a pool killed at any instant
restarts with each job in exactly one state. Claims are guarded twice: a
process-wide lock serialises the choose-then-update step, and every UPDATE is
conditional on the state it expects, so a job is never handed out twice and a
stale claim can never complete a job.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from glidewms import classads
from glidewms.db import migrate
from glidewms.pool import schema
from glidewms.pool.matchmaker import Matchmaker
from glidewms.pool.schema import autoclusters, counters, events, jobs, pilots

JOB_STATUS = {"idle": 1, "running": 2, "removed": 3, "completed": 4, "held": 5}
TERMINAL = ("completed", "removed")


class NotFound(LookupError):
    pass


class Conflict(Exception):
    """The request is valid but the state no longer allows it (e.g. a stale claim)."""


class PilotGone(Conflict):
    """The pool no longer counts this pilot (it deregistered or was declared lost)."""


def job_id(cluster_id: int, proc_id: int) -> str:
    return f"{cluster_id}.{proc_id}"


def split_job_id(text: str) -> tuple[int, int]:
    try:
        cluster, _, proc = text.partition(".")
        return int(cluster), int(proc or 0)
    except ValueError:
        raise NotFound(f"not a job id: {text!r} (expected CLUSTER.PROC)") from None


CLUSTER_PLACEHOLDER = "$(ClusterId)"
RESERVED = ("Owner", "ClusterId", "ProcId", "QDate", "JobStatus", "User")


@dataclass
class NewJob:
    """One job of a submission. `$(ClusterId)` anywhere in its text stands for
    the cluster id, which only the pool can assign."""

    ad_text: str
    sandbox: list[dict[str, Any]]
    args: list[str]
    env: dict[str, str]

    def realise(self, cluster_id: int) -> tuple[Any, list[str], dict[str, str]]:
        def sub(text: str) -> str:
            return text.replace(CLUSTER_PLACEHOLDER, str(cluster_id))

        ad = classads.parse_ad(sub(self.ad_text))
        for name in ("Requirements", "Rank"):
            if name in ad:
                classads.parse_expr(str(ad.lookup(name)))
        for name in RESERVED:
            if name in ad:
                del ad[name]
        return ad, [sub(a) for a in self.args], {k: sub(v) for k, v in self.env.items()}


class InvalidJob(ValueError):
    """A job of a submission is malformed; `index` says which."""

    def __init__(self, index: int, message: str) -> None:
        super().__init__(f"jobs[{index}]: {message}")
        self.index = index


class PoolStore:
    def __init__(self, engine: Engine, max_job_restarts: int = 5) -> None:
        self.engine = engine
        self.max_job_restarts = max_job_restarts
        self.matchmaker = Matchmaker()
        self._claim_lock = threading.Lock()
        migrate(engine, "pool", schema.MIGRATIONS)

    # ---------------------------------------------------------------- jobs

    def submit(self, owner: str, new_jobs: Sequence[NewJob]) -> tuple[int, list[str]]:
        now = time.time()
        with self.engine.begin() as conn:
            cluster_id = self._next_counter(conn, "cluster")
            rows, ac_cache = [], {}
            for proc_id, job in enumerate(new_jobs):
                try:
                    ad, args, env = job.realise(cluster_id)
                except classads.ClassAdError as exc:
                    raise InvalidJob(proc_id, str(exc)) from None
                ad["ClusterId"], ad["ProcId"], ad["Owner"] = cluster_id, proc_id, owner
                ad["QDate"] = int(now)
                key, sig_text = classads.signature(ad)
                if key not in ac_cache:
                    ac_cache[key] = self._autocluster_id(conn, key, sig_text, now)
                prio = classads.number(ad.eval("JobPrio")) if "JobPrio" in ad else 0
                rows.append(
                    {
                        "cluster_id": cluster_id,
                        "proc_id": proc_id,
                        "owner": owner,
                        "state": "idle",
                        "ad": classads.to_text(ad),
                        "autocluster_id": ac_cache[key],
                        "prio": int(prio or 0),
                        "q_date": now,
                        "sandbox": {"files": job.sandbox, "args": args, "env": env},
                        "num_starts": 0,
                        "num_restarts": 0,
                        "updated_at": now,
                    }
                )
            conn.execute(jobs.insert(), rows)
            conn.execute(
                events.insert(),
                [
                    {"cluster_id": cluster_id, "proc_id": r["proc_id"], "time": now,
                     "type": "submitted", "detail": {"owner": owner}}
                    for r in rows
                ],
            )
        return cluster_id, [job_id(cluster_id, r["proc_id"]) for r in rows]

    def _next_counter(self, conn: Connection, name: str) -> int:
        row = conn.execute(sa.select(counters.c.value).where(counters.c.name == name)).first()
        if row is None:
            conn.execute(counters.insert().values(name=name, value=1))
            return 1
        value = row[0] + 1
        conn.execute(counters.update().where(counters.c.name == name).values(value=value))
        return value

    def _autocluster_id(self, conn: Connection, key: str, sig_text: str, now: float) -> int:
        row = conn.execute(
            sa.select(autoclusters.c.id).where(autoclusters.c.signature == key)
        ).first()
        if row:
            return row[0]
        return conn.execute(
            autoclusters.insert().values(signature=key, ad=sig_text, created_at=now)
        ).inserted_primary_key[0]

    def full_ad(self, row: Any) -> Any:
        """The stored ad plus the attributes that change over a job's life."""
        ad = classads.parse_ad(row.ad)
        ad["JobStatus"] = JOB_STATUS[row.state]
        ad["NumJobStarts"] = row.num_starts
        ad["NumRestarts"] = row.num_restarts
        ad["EnteredCurrentStatus"] = int(row.updated_at)
        if row.exit_code is not None:
            ad["ExitCode"] = row.exit_code
        if row.pilot_id:
            ad["RemotePilot"] = row.pilot_id
        if row.hold_reason:
            ad["HoldReason"] = row.hold_reason
        if row.completion_date:
            ad["CompletionDate"] = int(row.completion_date)
        return ad

    def list_jobs(self, constraint: str | None = None, history: bool = False,
                  job_ids: Iterable[str] | None = None) -> list[tuple[Any, Any]]:
        """(row, full ad) of matching jobs; `history` selects finished ones."""
        expr = classads.parse_expr(constraint) if constraint else None
        query = sa.select(jobs)
        if job_ids is not None:
            pairs = [split_job_id(j) for j in job_ids]
            if not pairs:
                return []
            query = query.where(sa.tuple_(jobs.c.cluster_id, jobs.c.proc_id).in_(pairs))
        elif history:
            query = query.where(jobs.c.state.in_(TERMINAL))
        else:
            query = query.where(jobs.c.state.notin_(TERMINAL))
        query = query.order_by(jobs.c.cluster_id, jobs.c.proc_id)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        out = []
        for row in rows:
            ad = self.full_ad(row)
            if expr is None or classads.constraint_matches(expr, ad):
                out.append((row, ad))
        return out

    def get_job(self, jid: str) -> Any:
        cluster_id, proc_id = split_job_id(jid)
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(jobs).where(jobs.c.cluster_id == cluster_id, jobs.c.proc_id == proc_id)
            ).first()
        if row is None:
            raise NotFound(f"no job {jid}")
        return row

    def job_events(self, jid: str) -> list[dict[str, Any]]:
        cluster_id, proc_id = split_job_id(jid)
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(events)
                .where(events.c.cluster_id == cluster_id, events.c.proc_id == proc_id)
                .order_by(events.c.id)
            ).all()
        return [{"time": r.time, "type": r.type, "detail": r.detail or {}} for r in rows]

    def act(self, action: str, rows: Sequence[Any], reason: str, by: str) -> list[str]:
        """hold, release or remove the given jobs; returns the ids that changed."""
        allowed_from = {
            "hold": ("idle", "running"),
            "release": ("held",),
            "remove": ("idle", "running", "held"),
        }[action]
        new_state = {"hold": "held", "release": "idle", "remove": "removed"}[action]
        now, changed = time.time(), []
        with self._claim_lock, self.engine.begin() as conn:
            for row in rows:
                values: dict[str, Any] = {"state": new_state, "updated_at": now,
                                          "claim_id": None, "lease_expires": None}
                if action == "hold":
                    values["hold_reason"] = reason or f"held by {by}"
                elif action == "release":
                    values["hold_reason"] = None
                elif action == "remove":
                    values["completion_date"] = now
                result = conn.execute(
                    jobs.update()
                    .where(jobs.c.cluster_id == row.cluster_id, jobs.c.proc_id == row.proc_id,
                           jobs.c.state.in_(allowed_from))
                    .values(**values)
                )
                if result.rowcount:
                    changed.append(job_id(row.cluster_id, row.proc_id))
                    self._event(conn, row.cluster_id, row.proc_id, now,
                                {"hold": "held", "release": "released",
                                 "remove": "removed"}[action],
                                {"by": by, "reason": reason})
        return changed

    @staticmethod
    def _event(conn: Connection, cluster_id: int, proc_id: int, now: float, kind: str,
               detail: dict[str, Any] | None = None) -> None:
        conn.execute(events.insert().values(cluster_id=cluster_id, proc_id=proc_id,
                                            time=now, type=kind, detail=detail or {}))

    # -------------------------------------------------------------- pilots

    def register_pilot(self, slot: dict[str, Any], glidein_id: str | None,
                       frontend: str | None, group: str | None, lease: float) -> str:
        pilot_id = uuid.uuid4().hex[:16]
        now = time.time()
        with self.engine.begin() as conn:
            conn.execute(pilots.insert().values(
                pilot_id=pilot_id, glidein_id=glidein_id, frontend=frontend,
                group_name=group, slot=slot, state="active", registered_at=now,
                last_seen=now, lease_expires=now + lease, drain=False))
        return pilot_id

    def _pilot(self, conn: Connection, pilot_id: str) -> Any:
        row = conn.execute(sa.select(pilots).where(pilots.c.pilot_id == pilot_id)).first()
        if row is None:
            raise NotFound(f"no pilot {pilot_id}")
        if row.state in ("gone", "lost"):
            raise PilotGone(f"pilot {pilot_id} is {row.state}")
        return row

    def claim(self, pilot_id: str, free: dict[str, float], lease: float) -> dict[str, Any] | None:
        """Hand the best matching idle job to this pilot, or None."""
        now = time.time()
        with self._claim_lock, self.engine.begin() as conn:
            pilot = self._pilot(conn, pilot_id)
            if pilot.drain:
                return None
            slot = classads.ad_from_dict(pilot.slot)
            slot["Cpus"] = int(free.get("cpus", slot.get("Cpus", 1)))
            slot["Memory"] = int(free.get("memory", slot.get("Memory", 0)))
            slot["Disk"] = int(free.get("disk", slot.get("Disk", 0)))
            idle = conn.execute(
                sa.select(jobs.c.autocluster_id, jobs.c.owner)
                .where(jobs.c.state == "idle").group_by(jobs.c.autocluster_id, jobs.c.owner)
            ).all()
            if not idle:
                return None
            ac_ads = self._autocluster_ads(conn, {r.autocluster_id for r in idle})
            matching = self.matchmaker.matching(slot, ac_ads)
            if not matching:
                return None
            owners = sorted({r.owner for r in idle if r.autocluster_id in matching})
            if not owners:
                return None
            running = dict(conn.execute(
                sa.select(jobs.c.owner, sa.func.count())
                .where(jobs.c.state == "running").group_by(jobs.c.owner)
            ).all())
            owner = min(owners, key=lambda o: (running.get(o, 0), o))
            row = conn.execute(
                sa.select(jobs)
                .where(jobs.c.state == "idle", jobs.c.owner == owner,
                       jobs.c.autocluster_id.in_(matching))
                .order_by(jobs.c.prio.desc(), jobs.c.q_date, jobs.c.cluster_id, jobs.c.proc_id)
                .limit(1)
            ).first()
            if row is None:
                return None
            claim_id = uuid.uuid4().hex
            result = conn.execute(
                jobs.update()
                .where(jobs.c.cluster_id == row.cluster_id, jobs.c.proc_id == row.proc_id,
                       jobs.c.state == "idle")
                .values(state="running", claim_id=claim_id, pilot_id=pilot_id,
                        lease_expires=now + lease, num_starts=row.num_starts + 1,
                        start_date=now, updated_at=now)
            )
            if not result.rowcount:
                return None
            self._event(conn, row.cluster_id, row.proc_id, now, "started",
                        {"pilot": pilot_id, "glidein": pilot.glidein_id,
                         "site": pilot.slot.get("GLIDEIN_Site")})
        return {"claim_id": claim_id, "job_id": job_id(row.cluster_id, row.proc_id),
                "lease_seconds": lease, "job": execution_spec(row)}

    def _autocluster_ads(self, conn: Connection, ids: set[int]) -> dict[int, Any]:
        missing = [i for i in ids if i not in self.matchmaker.ads]
        if missing:
            for r in conn.execute(
                sa.select(autoclusters.c.id, autoclusters.c.ad)
                .where(autoclusters.c.id.in_(missing))
            ):
                self.matchmaker.ads[r.id] = classads.parse_ad(r.ad)
        return {i: self.matchmaker.ads[i] for i in ids}

    def heartbeat(self, pilot_id: str, claim_ids: Sequence[str], pilot_lease: float,
                  claim_lease: float) -> dict[str, Any]:
        now = time.time()
        with self.engine.begin() as conn:
            pilot = self._pilot(conn, pilot_id)
            conn.execute(pilots.update().where(pilots.c.pilot_id == pilot_id)
                         .values(last_seen=now, lease_expires=now + pilot_lease))
            held = set()
            if claim_ids:
                conn.execute(
                    jobs.update()
                    .where(jobs.c.claim_id.in_(list(claim_ids)), jobs.c.pilot_id == pilot_id,
                           jobs.c.state == "running")
                    .values(lease_expires=now + claim_lease)
                )
                held = {r[0] for r in conn.execute(
                    sa.select(jobs.c.claim_id).where(jobs.c.claim_id.in_(list(claim_ids)),
                                                     jobs.c.state == "running"))}
        return {"lease_seconds": claim_lease, "drain": bool(pilot.drain),
                "kill": [c for c in claim_ids if c not in held]}

    def complete(self, claim_id: str, exit_code: int, outputs: list[dict[str, str]],
                 wall_seconds: float) -> str:
        now = time.time()
        with self._claim_lock, self.engine.begin() as conn:
            row = conn.execute(sa.select(jobs).where(jobs.c.claim_id == claim_id)).first()
            if row is None or row.state != "running":
                raise Conflict("claim is no longer held: the job was requeued, held or removed")
            conn.execute(
                jobs.update()
                .where(jobs.c.claim_id == claim_id, jobs.c.state == "running")
                .values(state="completed", exit_code=exit_code, outputs=outputs,
                        claim_id=None, lease_expires=None, completion_date=now,
                        wall_seconds=wall_seconds, updated_at=now)
            )
            self._event(conn, row.cluster_id, row.proc_id, now, "completed",
                        {"exit_code": exit_code, "pilot": row.pilot_id,
                         "wall_seconds": wall_seconds})
        return job_id(row.cluster_id, row.proc_id)

    def deregister(self, pilot_id: str, reason: str) -> None:
        now = time.time()
        with self._claim_lock, self.engine.begin() as conn:
            self._pilot(conn, pilot_id)
            conn.execute(pilots.update().where(pilots.c.pilot_id == pilot_id)
                         .values(state="gone", exit_reason=reason, last_seen=now))
            self._requeue(conn, jobs.c.pilot_id == pilot_id, now, f"pilot left: {reason}")

    def expire_leases(self) -> int:
        """Requeue jobs whose claim lease ran out; mark silent pilots lost."""
        now = time.time()
        with self._claim_lock, self.engine.begin() as conn:
            lost = [r[0] for r in conn.execute(
                sa.select(pilots.c.pilot_id)
                .where(pilots.c.state.in_(("active", "draining")), pilots.c.lease_expires < now))]
            if lost:
                conn.execute(pilots.update().where(pilots.c.pilot_id.in_(lost))
                             .values(state="lost", exit_reason="no heartbeat"))
            return self._requeue(conn, jobs.c.lease_expires < now, now, "claim lease expired")

    def _requeue(self, conn: Connection, condition: Any, now: float, reason: str) -> int:
        rows = conn.execute(
            sa.select(jobs.c.cluster_id, jobs.c.proc_id, jobs.c.num_restarts, jobs.c.pilot_id)
            .where(jobs.c.state == "running", condition)
        ).all()
        for r in rows:
            restarts = r.num_restarts + 1
            too_many = restarts > self.max_job_restarts
            conn.execute(
                jobs.update()
                .where(jobs.c.cluster_id == r.cluster_id, jobs.c.proc_id == r.proc_id,
                       jobs.c.state == "running")
                .values(state="held" if too_many else "idle", claim_id=None,
                        lease_expires=None, num_restarts=restarts, updated_at=now,
                        hold_reason=(f"evicted {restarts} times (last: {reason})"
                                     if too_many else None))
            )
            self._event(conn, r.cluster_id, r.proc_id, now, "evicted",
                        {"pilot": r.pilot_id, "reason": reason})
            if too_many:
                self._event(conn, r.cluster_id, r.proc_id, now, "held",
                            {"reason": "too many evictions"})
        return len(rows)

    def list_pilots(self, active_only: bool = True) -> list[Any]:
        query = sa.select(pilots)
        if active_only:
            query = query.where(pilots.c.state.in_(("active", "draining")))
        with self.engine.connect() as conn:
            return list(conn.execute(query.order_by(pilots.c.registered_at)).all())

    def busy_pilots(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            return dict(conn.execute(
                sa.select(jobs.c.pilot_id, sa.func.count())
                .where(jobs.c.state == "running").group_by(jobs.c.pilot_id)
            ).all())

    # -------------------------------------------------------------- demand

    def demand(self) -> list[dict[str, Any]]:
        """Per autocluster: idle and running counts, owners, oldest queue date."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(jobs.c.autocluster_id, jobs.c.state, jobs.c.owner,
                          sa.func.count().label("n"), sa.func.min(jobs.c.q_date).label("oldest"))
                .where(jobs.c.state.in_(("idle", "running")))
                .group_by(jobs.c.autocluster_id, jobs.c.state, jobs.c.owner)
            ).all()
            ac_rows = {r.id: r for r in conn.execute(
                sa.select(autoclusters).where(
                    autoclusters.c.id.in_({r.autocluster_id for r in rows}))
            )}
        summary: dict[int, dict[str, Any]] = {}
        for r in rows:
            entry = summary.setdefault(r.autocluster_id, {
                "id": r.autocluster_id, "ad": ac_rows[r.autocluster_id].ad,
                "idle": 0, "running": 0, "owners": {}, "oldest_idle": None})
            entry[r.state] += r.n
            if r.state == "idle":
                entry["owners"][r.owner] = entry["owners"].get(r.owner, 0) + r.n
                if entry["oldest_idle"] is None or r.oldest < entry["oldest_idle"]:
                    entry["oldest_idle"] = r.oldest
        for entry in summary.values():
            ad = classads.parse_ad(entry["ad"])
            entry["request"] = {
                "cpus": _int(ad, "RequestCpus", 1), "memory": _int(ad, "RequestMemory", 0),
                "disk": _int(ad, "RequestDisk", 0), "gpus": _int(ad, "RequestGPUs", 0)}
        return sorted(summary.values(), key=lambda e: e["id"])


def _int(ad: Any, name: str, default: int) -> int:
    if name not in ad:
        return default
    value = classads.number(ad.eval(name))
    return default if value is None else int(value)


def execution_spec(row: Any) -> dict[str, Any]:
    """What a pilot needs to run the job, derived from its ad and sandbox."""
    ad = classads.parse_ad(row.ad)
    spec = row.sandbox or {}
    files = spec.get("files", [])
    executable = next((f["name"] for f in files if f.get("executable")), None)

    def text(name: str) -> str | None:
        if name not in ad:
            return None
        value = ad.eval(name)
        return value if isinstance(value, str) else None

    transfer = text("TransferOutput")
    return {
        "cmd": executable or text("Cmd"),
        "args": spec.get("args", []),
        "env": spec.get("env", {}),
        "sandbox": files,
        "out": text("Out"),
        "err": text("Err"),
        "transfer_output": [t.strip() for t in transfer.replace(",", " ").split()]
        if transfer else None,
        "request": {"cpus": _int(ad, "RequestCpus", 1), "memory": _int(ad, "RequestMemory", 0),
                    "disk": _int(ad, "RequestDisk", 0)},
    }
