"""The frontend's small HTTP face: its status and why it asked what it asked."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, HTTPException
from fastapi.responses import FileResponse

from glidewms.config.frontend import FrontendConfig
from glidewms.frontend import vostage
from glidewms.frontend.service import Frontend
from glidewms.security.http import require
from glidewms.security.tokens import Identity, TokenVerifier


def create_app(config: FrontendConfig, own_token: str, public_url: str = "",
               tokens: dict[str, str] | None = None,
               frontend: Frontend | None = None, loop: bool = True) -> FastAPI:
    """The status API around a frontend (a new one unless given), whose loop runs
    for the app's lifetime (unless `loop` is false: someone else drives cycles)."""
    frontend = frontend or Frontend(config, own_token, tokens)
    if not frontend.public_url:
        frontend.public_url = public_url

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if not loop:
            yield
            return
        task = asyncio.create_task(frontend.run())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    app = FastAPI(title="glidewms frontend", version="1", lifespan=lifespan)
    key = config.issuer_public_key or Path(config.state_dir).parent / "keys" / "issuer.pub"
    app.state.verifier = TokenVerifier.from_file(key)
    app.state.frontend = frontend

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/api/v1/status")
    async def status(who: Identity = Depends(require("frontend"))) -> dict[str, Any]:
        """Cycles run, the sources, the last cycle's outcome and each entry's latest
        explanation."""
        last = frontend.last
        return {"cycles": frontend.cycles, "pool_url": config.pool_url,
                "factory_url": config.factory_url,
                "pools": [{"name": p.name, "url": p.url} for p in config.all_pools()],
                "factories": [{"name": f.name, "url": f.url,
                               "request_form": frontend.forms.get(f.name, "full")}
                              for f in config.all_factories()],
                "last_cycle": asdict(last) if last else None,
                "pilot_tokens": frontend.pilot_tokens.summary(),
                "vo_stages": {g: {"manifest_sha256": s.manifest_sha256,
                                  "files": len(s.files)}
                              for g, s in frontend.vo_stages.items()},
                "entries": frontend.explain()}

    @app.get("/api/v1/explain")
    async def explain(entry: str | None = None, history: bool = False,
                      group: str | None = None,
                      who: Identity = Depends(require("frontend"))) -> list[dict[str, Any]]:
        """Why each entry got its request: demand, supply, limits, curbs, removal stage.
        `entry` is `factory/entry` or an entry name; `group` keeps one group's;
        `history` gives every kept cycle."""
        found = frontend.explain(entry, history, group)
        if (entry is not None or group is not None) and not found:
            known = sorted({f"{key} (group {name})" for name, key in frontend.explanations})
            raise HTTPException(404, f"no explanation for entry {entry or '*'!r} of group "
                                     f"{group or '*'!r} yet (known: {known})")
        return found

    @app.get(vostage.PREFIX + "/{group}/{path:path}", include_in_schema=False)
    async def vo_stage(group: str, path: str) -> FileResponse:
        """A group's VO stage, read-only and without a token: pilots check the
        manifest against the sha256 and key they were started with, and every
        file against the manifest, so the bytes need no other protection."""
        stage = frontend.vo_stages.get(group)
        found = None if stage is None else vostage.served_file(stage, path)
        if found is None or not found.is_file():
            raise HTTPException(404, f"no {path!r} in the VO stage of group {group!r}")
        return FileResponse(found, media_type="application/octet-stream")

    return app
