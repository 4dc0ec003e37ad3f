"""The factory's app: its routes (`factory/routes/`) around the converge loop.

`create_app` assembles the parts (store, stage, backends, the `Factory` loop,
the `Reloader`), puts what the routes depend on on `app.state`, and runs the
loop for the app's lifetime; the routes themselves are in one module per
resource under `factory/routes/`.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError

from glidewms import timeseries
from glidewms.config.factory import FactoryConfig
from glidewms.config.loader import ConfigError
from glidewms.db import make_engine
from glidewms.errors import GATED, invalid_body, responses
from glidewms.factory.backends import Backend, BackendContext, create_backend
from glidewms.factory.metrics import FactoryMetrics
from glidewms.factory.reload import Reloader
from glidewms.factory.routes import HEALTH, ROUTERS
from glidewms.factory.service import Factory
from glidewms.factory.stage import bootstrap_path, build_stage
from glidewms.factory.store import FactoryStore
from glidewms.metrics import router as metrics_route
from glidewms.protocol import API_PREFIX, API_VERSION, VersionHeader
from glidewms.security.asgi import Gate, GatePolicy
from glidewms.security.tokens import TokenVerifier

log = logging.getLogger(__name__)


def build_factory(
    config: FactoryConfig,
    public_url: str,
    *,
    bootstrap: Path | None,
    agent_dir: Path | None,
    kill_grace: float,
) -> tuple[Factory, BackendContext]:
    """The converge loop with its store, stage and one backend per kind of entry (and
    the backends' context, which a reload adds entries to)."""
    config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    (config.state_dir / "credentials").mkdir(exist_ok=True, mode=0o700)
    store = FactoryStore(make_engine(config.resolved_database_url()))
    stage = build_stage(config.state_dir, agent_dir)
    if not stage.files:
        log.warning("the stage is empty: no agent files found; pilots will have nothing to run")
    context = BackendContext(
        state_dir=config.state_dir,
        bootstrap=(bootstrap or bootstrap_path()).resolve(),
        kill_grace=kill_grace,
        entries={e.name: e for e in config.entries},
    )
    backends: dict[str, Backend] = {
        kind: create_backend(kind, context) for kind in sorted({e.backend for e in config.entries})
    }
    factory = Factory(
        config, public_url=public_url, store=store, stage=stage, backends=backends, context=context
    )
    return factory, context


def lifespan(
    factory: Factory, reloader: Reloader
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """The loop runs while the app does; SIGHUP reloads (where signals can be had)."""

    @asynccontextmanager
    async def run(app: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(factory.run(), name="factory-loop")
        loop = asyncio.get_running_loop()
        try:  # only the main thread may handle signals (not a test's server thread)
            loop.add_signal_handler(signal.SIGHUP, reloader.on_sighup)
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
            for backend in factory.backends.values():
                await backend.close()
            factory.store.engine.dispose()

    return run


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
    public_url = config.public_url or public_url  # what pilots are told to call
    key_path = config.resolved_issuer_public_key()
    if not key_path.is_file():
        raise ConfigError(f"issuer_public_key: {key_path} does not exist")
    verifier = TokenVerifier.from_file(key_path, config.resolved_pilot_issuer_public_key())
    factory, context = build_factory(
        config, public_url, bootstrap=bootstrap, agent_dir=agent_dir, kill_grace=kill_grace
    )
    reload = Reloader(factory, context, reloader)

    app = FastAPI(title="glidewms factory", version=API_VERSION, lifespan=lifespan(factory, reload))
    app.add_exception_handler(RequestValidationError, invalid_body)
    app.add_middleware(Gate, policy=GatePolicy(max_body=config.max_body_bytes))
    app.add_middleware(VersionHeader)
    app.state.verifier = verifier
    app.state.factory = factory
    app.state.reloader = reload
    app.state.metrics = FactoryMetrics(factory).registry  # GET /metrics (factory/metrics.py)
    app.include_router(HEALTH)
    app.include_router(metrics_route)
    for router in ROUTERS:
        app.include_router(router, prefix=API_PREFIX, responses=responses(*GATED))
    # the plots' series (timeseries.py), for whoever may read the factory's entries
    timeseries.install(
        app,
        factory.store.engine,
        timeseries.FACTORY_SERIES,
        config.timeseries_seconds,
        ("frontend", "metrics"),
    )
    app.include_router(timeseries.router, prefix=API_PREFIX, responses=responses(*GATED))
    return app
