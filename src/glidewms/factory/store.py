"""The factory's persistent state: frontend requests and the glideins it started.

Nothing the factory needs to converge lives only in memory: a factory killed at
any instant finds its requests and every pilot it submitted (with the backend's
id for it) here, and carries on. Secrets are not stored here: pilot tokens live
in 0600 files under the state directory.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from glidewms.db import migrate
from glidewms.factory.schema import (
    MIGRATIONS,
    downtimes_table,
    entry_health_table,
    glideins_table,
    requests_table,
    retired_entries_table,
)
from glidewms.factory.states import ACTIVE_STATES, EXITED, FINAL_STATES, GlideinState


@dataclass(frozen=True)
class StoredRequest:
    """The desired state of one frontend group, as last PUT."""

    frontend: str
    group: str
    pool_url: str
    entries: dict[str, dict[str, Any]]
    token_expires: float | None
    updated_at: float
    entry_tokens: dict[str, float] | None = None  # expiry of each entry's own token
    vo_stage: dict[str, str] | None = None  # the frontend's VO stage, passed to pilots
    # pilots that serve several pools: [{"url", "share"}], pool_url first (pools.py)
    pools: list[dict[str, Any]] | None = None

    def token_expiry(self, entry: str) -> float | None:
        """When the token pilots of `entry` get expires (its own, else the group's)."""
        return (self.entry_tokens or {}).get(entry, self.token_expires)


@dataclass(frozen=True, kw_only=True)
class Glidein:
    """One pilot the factory submitted (a row of `glideins`; fields by name only)."""

    glidein_id: str
    entry: str
    backend: str
    frontend: str
    group: str
    backend_id: str | None
    state: GlideinState
    submitted_at: float
    updated_at: float
    exit_reason: str | None
    exit_code: int | None
    report: dict[str, Any] | None
    logs_archived: float | None = None
    releases: int = 0  # times the factory released it from a hold
    state_since: float | None = None  # when it entered its current state
    registered_at: float | None = None  # when its trail said it registered with the pool
    health_counted: str | None = None  # what of it entry health counted (pilot_health.py)

    @classmethod
    def submitted(
        cls, glidein_id: str, entry: str, backend: str, frontend: str, group: str, now: float
    ) -> Glidein:
        """A new glidein about to be handed to its backend."""
        return cls(
            glidein_id=glidein_id,
            entry=entry,
            backend=backend,
            frontend=frontend,
            group=group,
            backend_id=None,
            state=GlideinState.queued,
            submitted_at=now,
            updated_at=now,
            exit_reason=None,
            exit_code=None,
            report=None,
            state_since=now,
        )

    def public(self) -> dict[str, Any]:
        """The glidein as the API shows it (the backend id is an internal detail)."""
        return {
            "glidein_id": self.glidein_id,
            "entry": self.entry,
            "frontend": self.frontend,
            "group": self.group,
            "state": self.state.value,
            "submitted_at": self.submitted_at,
            "updated_at": self.updated_at,
            "exit_reason": self.exit_reason,
            "exit_code": self.exit_code,
            "report": self.report,
        }


def _glidein(row: sa.Row) -> Glidein:
    m = row._mapping
    return Glidein(**{**dict(m), "state": GlideinState(m["state"])})


class FactoryStore:
    """Short synchronous transactions over SQLAlchemy Core; callers run them in threads."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        migrate(engine, "factory", MIGRATIONS)

    # -- requests ---------------------------------------------------------------

    def put_request(
        self,
        frontend: str,
        group: str,
        pool_url: str,
        entries: Mapping[str, Mapping[str, Any]],
        token_expires: float | None,
        entry_tokens: Mapping[str, float] | None = None,
        vo_stage: Mapping[str, str] | None = None,
        pools: list[dict[str, Any]] | None = None,
    ) -> None:
        """Replace the desired state of (frontend, group): a PUT is idempotent."""
        t = requests_table
        values = {
            "pool_url": pool_url,
            "entries": {k: dict(v) for k, v in entries.items()},
            "token_expires": token_expires,
            "updated_at": time.time(),
            "entry_tokens": dict(entry_tokens or {}),
            "vo_stage": None if vo_stage is None else dict(vo_stage),
            "pools": pools,
        }
        key = (t.c.frontend == frontend) & (t.c.group == group)
        with self.engine.begin() as conn:
            if conn.execute(sa.select(t.c.frontend).where(key)).first() is None:
                conn.execute(t.insert().values(frontend=frontend, group=group, **values))
            else:
                conn.execute(t.update().where(key).values(**values))

    def requests(self, frontend: str | None = None) -> list[StoredRequest]:
        t = requests_table
        query = sa.select(t).order_by(t.c.frontend, t.c.group)
        if frontend is not None:
            query = query.where(t.c.frontend == frontend)
        with self.engine.connect() as conn:
            return [StoredRequest(**dict(r._mapping)) for r in conn.execute(query)]

    # -- glideins ---------------------------------------------------------------

    def add_glideins(self, glideins: Iterable[Glidein]) -> None:
        rows = [{**g.__dict__, "state": g.state.value} for g in glideins]
        if rows:
            with self.engine.begin() as conn:
                conn.execute(glideins_table.insert(), rows)

    def set_backend_ids(self, backend_ids: Mapping[str, str]) -> None:
        t = glideins_table
        now = time.time()
        with self.engine.begin() as conn:
            for glidein_id, backend_id in backend_ids.items():
                conn.execute(
                    t.update()
                    .where(t.c.glidein_id == glidein_id)
                    .values(backend_id=backend_id, updated_at=now)
                )

    def set_states(
        self,
        states: Mapping[str, GlideinState],
        exit_reason: str | None = None,
    ) -> None:
        """Move glideins to new states; an exit reason already reported is kept."""
        t = glideins_table
        now = time.time()
        with self.engine.begin() as conn:
            for glidein_id, state in states.items():
                values: dict[str, Any] = {
                    "state": state.value,
                    "updated_at": now,
                    "state_since": now,
                }
                if exit_reason is not None:
                    values["exit_reason"] = sa.func.coalesce(t.c.exit_reason, exit_reason)
                conn.execute(t.update().where(t.c.glidein_id == glidein_id).values(**values))

    def active(self) -> list[Glidein]:
        t = glideins_table
        states = [s.value for s in ACTIVE_STATES]
        query = sa.select(t).where(t.c.state.in_(states)).order_by(t.c.submitted_at)
        with self.engine.connect() as conn:
            return [_glidein(r) for r in conn.execute(query)]

    def get(self, glidein_id: str) -> Glidein | None:
        t = glideins_table
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(t).where(t.c.glidein_id == glidein_id)).first()
        return _glidein(row) if row else None

    def glideins(
        self,
        frontend: str | None = None,
        group: str | None = None,
        entry: str | None = None,
        state: str | None = None,
        limit: int = 1000,
        *,
        exit_reason: str | None = None,
        since: float | None = None,
        until: float | None = None,
    ) -> list[Glidein]:
        """Newest first, filtered; `frontend=None` means every frontend (admin).

        `since`/`until` bound the submission time (the archive search by time).
        """
        t = glideins_table
        query = sa.select(t).order_by(t.c.submitted_at.desc(), t.c.glidein_id.desc())
        for column, value in (
            (t.c.frontend, frontend),
            (t.c.group, group),
            (t.c.entry, entry),
            (t.c.state, state),
            (t.c.exit_reason, exit_reason),
        ):
            if value is not None:
                query = query.where(column == value)
        if since is not None:
            query = query.where(t.c.submitted_at >= since)
        if until is not None:
            query = query.where(t.c.submitted_at <= until)
        with self.engine.connect() as conn:
            return [_glidein(r) for r in conn.execute(query.limit(limit))]

    def recent(self, since: float, frontend: str | None = None) -> list[Glidein]:
        """Glideins alive now, or submitted or changed since `since` (for stats)."""
        t = glideins_table
        states = [s.value for s in ACTIVE_STATES]
        query = sa.select(t).where(
            sa.or_(t.c.state.in_(states), t.c.updated_at >= since, t.c.submitted_at >= since)
        )
        if frontend is not None:
            query = query.where(t.c.frontend == frontend)
        with self.engine.connect() as conn:
            return [_glidein(r) for r in conn.execute(query)]

    def summary(
        self, frontend: str | None = None, group: str | None = None
    ) -> dict[str, dict[str, int]]:
        """Counts per entry and state, all states included; and under `EXITED` the
        running pilots whose final report came (a subset of `running`)."""
        t = glideins_table
        query = sa.select(t.c.entry, t.c.state, sa.func.count()).group_by(t.c.entry, t.c.state)
        if frontend is not None:
            query = query.where(t.c.frontend == frontend)
        if group is not None:
            query = query.where(t.c.group == group)
        out: dict[str, dict[str, int]] = {}
        exited = (
            sa.select(t.c.entry, sa.func.count())
            .where(t.c.state == GlideinState.running.value, t.c.exit_reason.is_not(None))
            .group_by(t.c.entry)
        )
        if frontend is not None:
            exited = exited.where(t.c.frontend == frontend)
        if group is not None:
            exited = exited.where(t.c.group == group)
        with self.engine.connect() as conn:
            for entry, state, count in conn.execute(query):
                out.setdefault(entry, {})[state] = count
            for entry, count in conn.execute(exited):
                out.setdefault(entry, {})[EXITED] = count
        return out

    def record_report(
        self, glidein_id: str, report: dict[str, Any], exit_reason: str, exit_code: int | None
    ) -> None:
        t = glideins_table
        with self.engine.begin() as conn:
            conn.execute(
                t.update()
                .where(t.c.glidein_id == glidein_id)
                .values(
                    report=report,
                    exit_reason=exit_reason,
                    exit_code=exit_code,
                    updated_at=time.time(),
                )
            )

    def count_releases(self, glidein_ids: Iterable[str]) -> None:
        """These held pilots were released once more."""
        t = glideins_table
        ids = list(glidein_ids)
        if ids:
            with self.engine.begin() as conn:
                conn.execute(
                    t.update().where(t.c.glidein_id.in_(ids)).values(releases=t.c.releases + 1)
                )

    def unrecorded(self) -> list[Glidein]:
        """Active glideins without a backend id: a submission a stop interrupted."""
        t = glideins_table
        states = [s.value for s in ACTIVE_STATES]
        query = (
            sa.select(t)
            .where(t.c.state.in_(states))
            .where(t.c.backend_id.is_(None))
            .order_by(t.c.submitted_at)
        )
        with self.engine.connect() as conn:
            return [_glidein(r) for r in conn.execute(query)]

    # -- entry health -----------------------------------------------------------

    def to_judge(self, limit: int = 1000) -> list[Glidein]:
        """Pilots with news for entry health (pilot_health.judge): registered and not
        yet counted, or ended (a report, or a final state) and their end not counted."""
        t = glideins_table
        final = [s.value for s in FINAL_STATES]
        # A report sets exit_reason (a JSON column's None is stored as JSON null: not
        # a test of SQL NULL); a reason the factory set goes with a final state or
        # `removing`, which judge() passes over until it ends.
        ended = sa.or_(t.c.exit_reason.is_not(None), t.c.state.in_(final))
        query = (
            sa.select(t)
            .where(
                sa.or_(
                    sa.and_(t.c.health_counted.is_(None), t.c.registered_at.is_not(None)),
                    sa.and_(
                        sa.or_(t.c.health_counted.is_(None), t.c.health_counted == "started"),
                        ended,
                    ),
                )
            )
            .order_by(t.c.updated_at)
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return [_glidein(r) for r in conn.execute(query)]

    def mark_counted(self, marks: Mapping[str, str]) -> None:
        """These pilots' news was counted ({glidein_id: "started" | "ended"})."""
        t = glideins_table
        with self.engine.begin() as conn:
            for glidein_id, mark in marks.items():
                conn.execute(
                    t.update().where(t.c.glidein_id == glidein_id).values(health_counted=mark)
                )

    def mark_registered(self, glidein_id: str, when: float) -> None:
        """The pilot's trail says it registered with its pool (the first time counts)."""
        t = glideins_table
        with self.engine.begin() as conn:
            conn.execute(
                t.update()
                .where(t.c.glidein_id == glidein_id)
                .where(t.c.registered_at.is_(None))
                .values(registered_at=when)
            )

    def entry_health(self) -> dict[str, dict[str, Any]]:
        """{entry: its stored failures and pause}."""
        t = entry_health_table
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(t)).all()
        return {r.entry: {k: v for k, v in r._mapping.items() if k != "entry"} for r in rows}

    def set_entry_health(self, entry: str, values: Mapping[str, Any] | None) -> None:
        """Replace an entry's health row (None: healthy, the row goes)."""
        t = entry_health_table
        with self.engine.begin() as conn:
            conn.execute(t.delete().where(t.c.entry == entry))
            if values is not None:
                conn.execute(t.insert().values(entry=entry, **values))

    # -- retired entries --------------------------------------------------------

    def retire_entries(
        self, configs: Mapping[str, Mapping[str, Any]], when: float | None = None
    ) -> None:
        """Keep these entries' last configurations ({name: dumped EntryConfig})."""
        t = retired_entries_table
        when = time.time() if when is None else when
        with self.engine.begin() as conn:
            for name, config in configs.items():
                conn.execute(t.delete().where(t.c.entry == name))
                conn.execute(t.insert().values(entry=name, config=dict(config), retired_at=when))

    def retired_entries(self) -> dict[str, dict[str, Any]]:
        t = retired_entries_table
        with self.engine.connect() as conn:
            return {r.entry: dict(r.config) for r in conn.execute(sa.select(t))}

    def forget_retired(self, names: Iterable[str]) -> None:
        """These entries are configured again, or their last pilot ended."""
        t = retired_entries_table
        names = list(names)
        if names:
            with self.engine.begin() as conn:
                conn.execute(t.delete().where(t.c.entry.in_(names)))

    # -- log archive ------------------------------------------------------------

    def to_archive(self, limit: int = 500) -> list[Glidein]:
        """Ended pilots whose backend logs are not archived yet, oldest first."""
        t = glideins_table
        query = (
            sa.select(t)
            .where(t.c.state.in_([s.value for s in FINAL_STATES]))
            .where(t.c.logs_archived.is_(None))
            .where(t.c.backend_id.is_not(None))
            .order_by(t.c.updated_at)
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return [_glidein(r) for r in conn.execute(query)]

    def mark_archived(self, glidein_ids: Iterable[str], when: float) -> None:
        t = glideins_table
        ids = list(glidein_ids)
        if ids:
            with self.engine.begin() as conn:
                conn.execute(t.update().where(t.c.glidein_id.in_(ids)).values(logs_archived=when))

    def purge_ended(self, before: float, batch: int = 500, max_batches: int = 20) -> int:
        """Delete ended pilots' rows last changed before `before`, once their
        logs were archived (or they had none) and entry health counted them;
        in transactions of `batch` rows, so the loop gets the store between
        them. How many went."""
        t = glideins_table
        done = 0
        for _ in range(max_batches):
            with self.engine.begin() as conn:
                ids = [
                    r[0]
                    for r in conn.execute(
                        sa.select(t.c.glidein_id)
                        .where(t.c.state.in_([s.value for s in FINAL_STATES]))
                        .where(t.c.updated_at < before)
                        .where(sa.or_(t.c.logs_archived.is_not(None), t.c.backend_id.is_(None)))
                        .where(t.c.health_counted == "ended")
                        .limit(batch)
                    )
                ]
                if ids:
                    conn.execute(t.delete().where(t.c.glidein_id.in_(ids)))
            done += len(ids)
            if len(ids) < batch:
                break
        return done

    # -- downtimes --------------------------------------------------------------

    def add_downtime(
        self,
        entry: str,
        frontend: str,
        start: float,
        end: float | None,
        reason: str,
        created_by: str,
    ) -> dict[str, Any]:
        values = {
            "entry": entry,
            "frontend": frontend,
            "start": start,
            "end": end,
            "reason": reason,
            "created_by": created_by,
            "created_at": time.time(),
        }
        with self.engine.begin() as conn:
            result = conn.execute(downtimes_table.insert().values(**values))
            key = result.inserted_primary_key  # None only for executemany or a pk-less table
            assert key is not None
            return {"id": key[0], **values}

    def downtimes(
        self, include_past: bool = False, now: float | None = None
    ) -> list[dict[str, Any]]:
        """Downtimes by start time; past ones (ended before `now`) only when asked."""
        t = downtimes_table
        query = sa.select(t).order_by(t.c.start, t.c.id)
        if not include_past:
            now = time.time() if now is None else now
            query = query.where(sa.or_(t.c.end.is_(None), t.c.end > now))
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def remove_downtime(self, downtime_id: int) -> bool:
        t = downtimes_table
        with self.engine.begin() as conn:
            return conn.execute(t.delete().where(t.c.id == downtime_id)).rowcount > 0
