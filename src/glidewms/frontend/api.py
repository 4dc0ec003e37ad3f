"""The frontend's small HTTP face: its status and last decisions."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI

from glidewms.config.frontend import FrontendConfig
from glidewms.frontend.service import Frontend
from glidewms.security.http import require
from glidewms.security.tokens import Identity, TokenVerifier


def create_app(config: FrontendConfig, own_token: str, public_url: str = "") -> FastAPI:
    frontend = Frontend(config, own_token)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
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
        last = frontend.last
        return {"cycles": frontend.cycles, "pool_url": config.pool_url,
                "factory_url": config.factory_url,
                "last_cycle": asdict(last) if last else None}

    return app
