"""The factory's HTTP API (protocol.md, "Factory"), and the app that runs the loop.

Frontends read entries and PUT their desired state; pilots fetch the stage and
post their final report. Every identity comes from the bearer token: a
request's frontend is the token's subject, and a pilot may only report on a
glidein of the frontend named in its token's `fe` claim.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import signal
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from glidewms import __version__
from glidewms.config.factory import EntryConfig, FactoryConfig
from glidewms.config.loader import ConfigError
from glidewms.db import make_engine
from glidewms.factory.backends import BackendContext, create_backend
from glidewms.factory.policy import active_downtime
from glidewms.factory.reload import ReloadSummary, apply_reload
from glidewms.factory.requests import RequestBody, accept_request
from glidewms.factory.service import Factory, Tally
from glidewms.factory.stage import bootstrap_path, build_stage
from glidewms.factory.stats import entry_stats
from glidewms.factory.store import (
    ACTIVE_STATES,
    FactoryStore,
    Glidein,
    GlideinState,
    StoredRequest,
)
from glidewms.security.http import require
from glidewms.security.tokens import Identity, TokenVerifier

log = logging.getLogger(__name__)

# Frontend and group names become directory and file names under credentials/.
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MAX_REPORT_BYTES = 256 * 1024
MAX_LOG_BYTES = 1024 * 1024  # per POST of log records (contract 2)

Frontend = Annotated[Identity, Depends(require("frontend"))]
Pilot = Annotated[Identity, Depends(require("pilot"))]
Admin = Annotated[Identity, Depends(require("admin"))]


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


class DowntimeBody(BaseModel):
    """POST /api/v1/downtimes: no new pilots at `entry` for `frontend` in [start, end)."""

    model_config = ConfigDict(extra="forbid")

    entry: str = Field(default="*", description="an entry name, or * for every entry")
    frontend: str = Field(default="*", description="a frontend name, or * for every frontend")
    start: float | None = Field(default=None, description="epoch seconds; default now")
    end: float | None = Field(default=None, description="epoch seconds; default until removed")
    reason: str = Field(min_length=1, max_length=1024)


class PilotReport(BaseModel):
    """POST /api/v1/glideins/{id}/report: the pilot's last word; extra keys are kept."""

    model_config = ConfigDict(extra="allow")

    exit_reason: str = Field(min_length=1, max_length=64)
    exit_code: int | None = None
    jobs_run: int = Field(default=0, ge=0)
    jobs_failed: int = Field(default=0, ge=0)
    detail: str = Field(default="", max_length=65536)


def _check_name(kind: str, value: str, status: int) -> None:
    if not NAME.match(value):
        raise HTTPException(
            status, f"{kind} {value!r} is not a valid name (letters, digits, '_', '.', '-')"
        )


def entry_ad(entry: EntryConfig, counts: dict[str, int], error: str | None,
             downtime: Mapping[str, Any] | None = None,
             paused: Mapping[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    """What a frontend needs to match demand to an entry.

    `downtime` is the downtime in force for the asking frontend (or None): a
    frontend should not count on new pilots there until its `end`. `paused`
    says the factory stopped submitting after repeated failures (why, since
    when, when it tries again), until an operator resumes the entry.
    """
    active = {s.value: counts.get(s.value, 0) for s in ACTIVE_STATES}
    return {
        "name": entry.name,
        "site": entry.site,
        "backend": entry.backend,
        "enabled": entry.enabled,
        "cpus": entry.cpus,
        "memory": entry.memory,
        "disk": entry.disk,
        "walltime": entry.walltime,
        "idle_timeout": entry.idle_timeout,
        "attributes": entry.attributes,
        "limits": {
            "max_pilots": entry.max_pilots,
            "max_idle": entry.max_idle,
            "max_held": entry.max_held,
            "max_per_cycle": entry.max_per_cycle,
        },
        "counts": active,
        "free": max(0, entry.max_pilots - sum(active.values())),
        "last_error": error,
        "paused": None if paused is None else dict(paused),
        "in_downtime": downtime is not None,
        "downtime": None if downtime is None else {
            k: downtime[k] for k in ("id", "start", "end", "reason")
        },
    }


def request_view(factory: Factory, request: StoredRequest) -> dict[str, Any]:
    """A stored request as its frontend sees it; the token is never shown."""
    return {
        "frontend": request.frontend,
        "group": request.group,
        "pool_url": request.pool_url,
        "entries": request.entries,
        "token_expires": request.token_expires,
        "entry_token_expires": request.entry_tokens or {},
        "vo_stage": request.vo_stage,
        "updated_at": request.updated_at,
        "errors": factory.request_errors(request),
    }


def create_app(
    config: FactoryConfig,
    public_url: str,
    *,
    bootstrap: Path | None = None,
    agent_dir: Path | None = None,
    kill_grace: float = 30.0,
    reloader: Callable[[], FactoryConfig] | None = None,
) -> FastAPI:
    """Build the factory app; its lifespan runs the converge loop.

    `public_url` is what pilots are told to call back. `bootstrap` and
    `agent_dir` default to the ones shipped in the package; tests point them at
    stand-ins. `reloader` loads the configuration again (its file) for
    `POST /api/v1/reload` and SIGHUP; without it there is nothing to reload.
    """
    # Pilots run elsewhere (another cwd): every path handed to them must be absolute.
    config = config.model_copy(update={"state_dir": config.state_dir.resolve()})
    key_path = config.resolved_issuer_public_key()
    if not key_path.is_file():
        raise ConfigError(f"issuer_public_key: {key_path} does not exist")
    verifier = TokenVerifier.from_file(key_path)
    config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    (config.state_dir / "credentials").mkdir(exist_ok=True, mode=0o700)
    engine = make_engine(config.resolved_database_url())
    store = FactoryStore(engine)
    stage = build_stage(config.state_dir, agent_dir)
    if not stage.files:
        log.warning("the stage is empty: no agent files found; pilots will have nothing to run")
    context = BackendContext(
        state_dir=config.state_dir,
        bootstrap=(bootstrap or bootstrap_path()).resolve(),
        kill_grace=kill_grace,
        entries={e.name: e for e in config.entries},
    )
    kinds = {e.backend for e in config.entries}
    backends = {kind: create_backend(kind, context) for kind in sorted(kinds)}
    factory = Factory(config, public_url, store, stage, backends, context)

    def load_again() -> FactoryConfig:
        if reloader is None:
            raise ConfigError("this factory was started without a configuration file: "
                              "nothing to reload")
        return reloader()

    def reload(new: FactoryConfig) -> ReloadSummary:
        """Swap in the entries of a configuration loaded again (reload.py); in the loop's
        thread, between two awaits of the converge loop, so a cycle sees one or the other."""
        return apply_reload(factory, context, new.model_copy(
            update={"state_dir": new.state_dir.resolve()}))

    def on_sighup() -> None:
        try:
            reload(load_again())
        except ConfigError as exc:
            log.error("SIGHUP: configuration not reloaded, the running one stays: %s", exc)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(factory.run(), name="factory-loop")
        loop = asyncio.get_running_loop()
        try:  # only the main thread may handle signals (not a test's server thread)
            loop.add_signal_handler(signal.SIGHUP, on_sighup)
            hup = True
        except (RuntimeError, ValueError):
            hup = False
        try:
            yield
        finally:
            if hup:
                loop.remove_signal_handler(signal.SIGHUP)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            for backend in backends.values():
                await backend.close()
            engine.dispose()

    app = FastAPI(title="glidewms factory", version=__version__, lifespan=lifespan)
    app.state.verifier = verifier
    app.state.factory = factory
    app.state.config = config

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "url": public_url, "cycles": factory.cycles}

    @app.post("/api/v1/reload")
    async def reload_config(identity: Admin) -> dict[str, Any]:
        """Re-read the configuration file: entries added, changed, removed (admin).

        Pilots of removed entries stay tracked until they end; nothing new is
        submitted there. A configuration that does not load is refused (422)
        and the running one stays.
        """
        try:
            new = await asyncio.to_thread(load_again)
        except ConfigError as exc:
            raise HTTPException(422, str(exc)) from None
        summary = reload(new)
        log.info("configuration reloaded by %s", identity.subject)
        return summary.public()

    @app.get("/api/v1/entries")
    async def entries(identity: Frontend) -> list[dict[str, Any]]:
        """Entry ads this frontend may request pilots at (all of them for admin)."""
        tally = Tally(await asyncio.to_thread(store.active))
        downtimes = await asyncio.to_thread(store.downtimes)
        now = time.time()
        return [
            entry_ad(e, tally.entry_counts(e.name), factory.entry_errors.get(e.name),
                     active_downtime(downtimes, e.name, identity.subject, now),
                     factory.pause_view(e))
            for e in factory.config.entries
            if identity.is_admin or e.allows(identity.subject)
        ]  # fmt: skip

    @app.put("/api/v1/requests/{group}")
    async def put_request(
        group: Annotated[str, PathParam(max_length=64)], body: RequestBody, identity: Frontend
    ) -> dict[str, Any]:
        """Store the group's desired state (replacing the last one) and wake the loop."""
        frontend = identity.subject
        _check_name("frontend (token subject)", frontend, 403)
        _check_name("group", group, 422)
        accepted = accept_request(verifier, body, frontend, group, factory.credentials)
        await asyncio.to_thread(store.put_request, frontend, group, body.pool_url,
                                accepted.entries, accepted.token_expires,
                                accepted.entry_tokens, accepted.vo_stage)  # fmt: skip
        factory.wake()
        stored = next(
            r for r in await asyncio.to_thread(store.requests, frontend) if r.group == group
        )
        return request_view(factory, stored)

    @app.get("/api/v1/requests")
    async def list_requests(identity: Frontend) -> list[dict[str, Any]]:
        who = None if identity.is_admin else identity.subject
        return [request_view(factory, r) for r in await asyncio.to_thread(store.requests, who)]

    @app.get("/api/v1/glideins")
    async def glideins(
        identity: Frontend,
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
        who = None if identity.is_admin else identity.subject
        if summary:
            return {"summary": await asyncio.to_thread(store.summary, who, group)}
        rows = await asyncio.to_thread(
            lambda: store.glideins(who, group, entry, state.value if state else None, limit,
                                   exit_reason=exit_reason, since=since, until=until)
        )  # fmt: skip
        return [g.public() for g in rows]

    @app.get("/api/v1/stats")
    async def stats(identity: Frontend, since: float | None = None) -> dict[str, Any]:
        """Per entry and frontend since `since` (default: the last 24 hours): pilots by
        state, submit rate, failures by category, goodput and badput (stats.py). A
        frontend sees its own rows; admin all."""
        now = time.time()
        start = now - 86400 if since is None else since
        who = None if identity.is_admin else identity.subject
        found = await asyncio.to_thread(store.recent, start, who)
        return {"time": now, "since": start, "rows": entry_stats(found, start, now)}

    @app.post("/api/v1/glideins/{glidein_id}/report")
    async def report(glidein_id: str, body: PilotReport, identity: Pilot) -> dict[str, Any]:
        """Keep the pilot's final report; the pilot must belong to its token's frontend."""
        glidein = await asyncio.to_thread(store.get, glidein_id)
        if glidein is None:
            raise HTTPException(404, f"no glidein {glidein_id!r}")
        if not identity.is_admin and identity.claims.get("fe") != glidein.frontend:
            raise HTTPException(403, "this pilot token belongs to another frontend")
        data = body.model_dump()
        if len(json.dumps(data)) > MAX_REPORT_BYTES:
            raise HTTPException(413, f"report larger than {MAX_REPORT_BYTES} bytes")
        await asyncio.to_thread(
            store.record_report, glidein_id, data, body.exit_reason, body.exit_code
        )
        updated = await asyncio.to_thread(store.get, glidein_id)
        assert updated is not None
        return updated.public()

    def owned(identity: Identity, glidein: Glidein | None, glidein_id: str,
              claim: str) -> Glidein:  # fmt: skip
        """The glidein if the caller may see it (admin, or its frontend); 404/403 else."""
        if glidein is None:
            raise HTTPException(404, f"no glidein {glidein_id!r}")
        who = identity.claims.get(claim) if claim else identity.subject
        if not identity.is_admin and who != glidein.frontend:
            raise HTTPException(403, "this glidein belongs to another frontend")
        return glidein

    @app.post("/api/v1/glideins/{glidein_id}/log")
    async def post_log(glidein_id: str, request: Request, identity: Pilot) -> dict[str, Any]:
        """Append the pilot's log records to its trail in the archive (contract 2)."""
        glidein = owned(identity, await asyncio.to_thread(store.get, glidein_id), glidein_id,
                        "fe")  # fmt: skip
        raw = await request.body()
        if len(raw) > MAX_LOG_BYTES:
            raise HTTPException(413, f"log post larger than {MAX_LOG_BYTES} bytes; send less")
        try:
            body = LogPost.model_validate_json(raw)
        except ValidationError as exc:
            raise HTTPException(422, exc.errors(include_url=False, include_input=False)) from None
        stored = await asyncio.to_thread(
            factory.archive.append_trail, glidein.entry, glidein.frontend, glidein_id,
            [r.model_dump() for r in body.records], body.final,
        )  # fmt: skip
        return {"glidein_id": glidein_id, "stored": stored}

    @app.get("/api/v1/glideins/{glidein_id}/logs")
    async def get_logs(glidein_id: str, identity: Frontend) -> dict[str, Any]:
        """A pilot's stdout, stderr and trail: archived, or live from its backend."""
        glidein = owned(identity, await asyncio.to_thread(store.get, glidein_id), glidein_id,
                        "")  # fmt: skip
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

    @app.get("/api/v1/downtimes")
    async def list_downtimes(identity: Frontend, past: bool = False) -> list[dict[str, Any]]:
        """Downtimes in force or to come (`past=true`: ended ones too); a frontend sees
        the ones that apply to it."""
        found = await asyncio.to_thread(store.downtimes, past)
        if identity.is_admin:
            return found
        return [d for d in found if d["frontend"] in ("*", identity.subject)]

    @app.post("/api/v1/downtimes", status_code=201)
    async def add_downtime(body: DowntimeBody, identity: Admin) -> dict[str, Any]:
        if body.entry != "*" and factory.config.entry(body.entry) is None:
            raise HTTPException(422, f"entry: no entry named {body.entry!r}")
        if body.frontend != "*":
            _check_name("frontend", body.frontend, 422)
        start = time.time() if body.start is None else body.start
        if body.end is not None and body.end <= start:
            raise HTTPException(422, "end: must be after start")
        added = await asyncio.to_thread(store.add_downtime, body.entry, body.frontend, start,
                                        body.end, body.reason, identity.subject)  # fmt: skip
        log.info("downtime %s added by %s: entry %s, frontend %s: %s", added["id"],
                 identity.subject, body.entry, body.frontend, body.reason)  # fmt: skip
        factory.wake()
        return added

    @app.post("/api/v1/entries/{name}/resume")
    async def resume_entry(name: str, identity: Admin) -> dict[str, Any]:
        """Resume an entry paused after repeated submission failures (admin)."""
        if factory.config.entry(name) is None:
            raise HTTPException(404, f"no entry named {name!r}")
        was_paused = await factory.resume(name)
        log.info("entry %s: resume asked by %s (was paused: %s)", name, identity.subject,
                 was_paused)  # fmt: skip
        return {"entry": name, "resumed": was_paused}

    @app.delete("/api/v1/downtimes/{downtime_id}")
    async def remove_downtime(downtime_id: int, identity: Admin) -> dict[str, Any]:
        if not await asyncio.to_thread(store.remove_downtime, downtime_id):
            raise HTTPException(404, f"no downtime {downtime_id}")
        factory.wake()
        return {"removed": downtime_id}

    @app.get("/api/v1/stage/manifest", response_class=PlainTextResponse)
    async def manifest(identity: Pilot) -> PlainTextResponse:
        return PlainTextResponse(stage.manifest_path.read_bytes())

    @app.get("/api/v1/stage/files/{path:path}")
    async def stage_file(path: str, identity: Pilot) -> FileResponse:
        """A file listed in the manifest; anything else (`..` included) is 404."""
        found = stage.file(path)
        if found is None or not found.is_file():
            raise HTTPException(404, f"no stage file {path!r}")
        return FileResponse(found, media_type="application/octet-stream")

    return app
