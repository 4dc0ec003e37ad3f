"""The frontend's app: its routes (`routes.py`) around the frontend loop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError

from glidewms import timeseries
from glidewms.config.frontend import FrontendConfig
from glidewms.errors import GATED, invalid_body, responses
from glidewms.frontend import vostage
from glidewms.frontend.metrics import FrontendMetrics
from glidewms.frontend.routes import api, public
from glidewms.frontend.service import Frontend
from glidewms.metrics import router as metrics_route
from glidewms.protocol import API_PREFIX, API_VERSION, VersionHeader
from glidewms.security.asgi import DOCS_AND_HEALTH, Gate, GatePolicy, Route
from glidewms.security.tokens import TokenVerifier

# Pilots fetch their group's VO stage without a token (its manifest's hash and
# signature protect it: frontend/routes.py); everything else needs one.
PUBLIC = (*DOCS_AND_HEALTH, Route("GET", vostage.PREFIX + "/"))


def lifespan(
    frontend: Frontend, loop: bool
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """The loop runs for the app's lifetime, unless someone else drives the cycles."""

    @asynccontextmanager
    async def run(app: FastAPI) -> AsyncIterator[None]:
        if not loop:
            yield
            return
        task = asyncio.create_task(frontend.run())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    return run


def create_app(
    config: FrontendConfig,
    own_token: str,
    public_url: str = "",
    tokens: dict[str, str] | None = None,
    frontend: Frontend | None = None,
    loop: bool = True,
) -> FastAPI:
    """The status API around a frontend (a new one unless given), whose loop runs
    for the app's lifetime (unless `loop` is false: someone else drives cycles)."""
    frontend = frontend or Frontend(config, own_token, tokens)
    if not frontend.public_url:
        frontend.public_url = public_url
    app = FastAPI(title="glidewms frontend", version=API_VERSION, lifespan=lifespan(frontend, loop))
    app.add_exception_handler(RequestValidationError, invalid_body)
    app.add_middleware(Gate, policy=GatePolicy(max_body=config.max_body_bytes, public=PUBLIC))
    app.add_middleware(VersionHeader)
    app.state.verifier = TokenVerifier.from_file(
        config.resolved_issuer_public_key(), config.resolved_pilot_issuer_public_key()
    )
    app.state.frontend = frontend
    app.state.metrics = FrontendMetrics(frontend).registry  # GET /metrics (frontend/metrics.py)
    app.include_router(public)
    app.include_router(metrics_route)
    app.include_router(api, prefix=API_PREFIX, responses=responses(*GATED))
    # the plots' series (timeseries.py), in a database of its own: its state is a JSON file
    timeseries.install(
        app,
        lambda: timeseries.own_database(config.state_dir, "frontend"),
        timeseries.FRONTEND_SERIES,
        config.timeseries_seconds,
        ("frontend", "metrics"),
    )
    app.include_router(timeseries.router, prefix=API_PREFIX, responses=responses(*GATED))
    return app
