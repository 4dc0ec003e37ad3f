"""The pool's HTTP service: its routes (routes/), and the upkeep it runs.

`create_app` builds the store and the rest of a `PoolContext`, includes the
routers under `API_PREFIX`, and runs the upkeep loop for the app's life:
lease expiry, usage saved, periodic expressions.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.concurrency import run_in_threadpool

from glidewms import timeseries
from glidewms.config.pool import PoolConfig
from glidewms.db import make_engine
from glidewms.errors import GATED, responses
from glidewms.metrics import router as metrics_route
from glidewms.pool.bodies import invalid_body
from glidewms.pool.checks import StoreLimits
from glidewms.pool.metrics import PoolMetrics
from glidewms.pool.retention import DAY, Periods, Retention
from glidewms.pool.routes import (
    admin,
    demand,
    files,
    jobs,
    operator,
    pilots,
    streams,
    tokens,
    userlog,
)
from glidewms.pool.routes import status as status_routes
from glidewms.pool.routes.deps import PoolContext, WorkSignal
from glidewms.pool.sandbox import SandboxStore
from glidewms.pool.store import FairShare, PoolStore
from glidewms.protocol import API_PREFIX, API_VERSION, VersionHeader
from glidewms.security.asgi import BodyCap, Gate, GatePolicy, Route
from glidewms.security.tokens import PILOT_KID, TokenIssuer, TokenVerifier

log = logging.getLogger(__name__)


def create_app(config: PoolConfig, public_url: str = "") -> FastAPI:
    config.state_dir.mkdir(parents=True, exist_ok=True)
    store = PoolStore(
        make_engine(config.resolved_database_url()),
        max_job_restarts=config.max_job_restarts,
        fair_share=FairShare(
            config.priority_halflife,
            config.priority_factors,
            config.group_priority_factors,
            config.default_priority_factor,
        ),
        reserve_for_large_jobs=config.reserve_for_large_jobs,
        lock_wait=config.database_lock_wait,
        significant=config.significant_attributes,
        limits=StoreLimits(
            ads=config.ad_limits(),
            max_events_per_job=config.max_events_per_job,
            max_outputs_per_job=config.max_outputs_per_job,
            batch_size=config.bulk_batch_size,
        ),
        concurrency=config.limit_config(),
    )
    pool = PoolContext(
        config=config,
        store=store,
        files=SandboxStore(config.state_dir / "files"),
        signal=WorkSignal(has_idle=functools.partial(has_idle, store)),
        issuer=pilot_issuer(config),
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(upkeep(pool))
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        with contextlib.suppress(Exception):
            await run_in_threadpool(store.reports.flush_usage)
        store.close()

    app = FastAPI(title="glidewms pool", version=API_VERSION, lifespan=lifespan)
    app.add_exception_handler(RequestValidationError, invalid_body)
    app.add_middleware(Gate, policy=gate_policy(config))
    app.add_middleware(VersionHeader)
    app.state.verifier = TokenVerifier.from_file(
        config.resolved_issuer_public_key(), config.resolved_pilot_issuer_public_key()
    )
    app.state.pool = pool
    app.state.public_url = public_url
    app.state.metrics = PoolMetrics(store).registry  # GET /metrics (pool/metrics.py)
    app.include_router(admin.health)
    # the pilot turn first: Starlette tries routes in order
    for router in (
        pilots.router,
        jobs.router,
        status_routes.router,
        admin.router,
        files.router,
        demand.router,
        tokens.router,
        streams.router,
        userlog.router,
        operator.router,
    ):
        app.include_router(router, prefix=API_PREFIX, responses=responses(*GATED))
    app.include_router(metrics_route)
    # the plots' series (timeseries.py): totals, so any user may read them
    timeseries.install(
        app,
        store.engine,
        timeseries.POOL_SERIES,
        config.timeseries_seconds,
        ("user", "frontend", "metrics"),
    )
    app.include_router(timeseries.router, prefix=API_PREFIX, responses=responses(*GATED))
    return app


def pilot_issuer(config: PoolConfig) -> TokenIssuer | None:
    """The pilot issuer the pool mints pilot tokens with, if it has its key."""
    key = config.resolved_pilot_issuer_private_key()
    return TokenIssuer.from_file(key, PILOT_KID) if key is not None else None


def gate_policy(config: PoolConfig) -> GatePolicy:
    """Every route needs a token but /healthz and the API's docs; submits and
    uploads may be larger than other bodies (security/asgi.py)."""
    return GatePolicy(
        max_body=config.max_body_bytes,
        caps=(
            BodyCap(
                Route("POST", f"{API_PREFIX}/jobs"), config.max_submit_bytes, "max_submit_bytes"
            ),
            BodyCap(
                Route("PUT", f"{API_PREFIX}/files/"), config.max_upload_bytes, "max_upload_bytes"
            ),
        ),
    )


def has_idle(store: PoolStore) -> bool:
    """Whether the idle index holds any job: a wake nobody could use is not
    handed on. Read without the store lock, from the event loop: a dict
    changed meanwhile by a worker thread answers True (hand it on)."""
    try:
        return next(store.shared.index.autoclusters(), None) is not None
    except RuntimeError:
        return True


def retention_of(pool: PoolContext) -> Retention:
    """The pool's purger, with its configured periods (pool/retention.py)."""
    c = pool.config
    periods = Periods(
        history=c.history_retention_days * DAY,
        events=c.events_retention_days * DAY,
        sandbox=c.sandbox_retention_days * DAY,
        batch=c.retention_batch,
    )
    return Retention(pool.store.shared, pool.files, periods)


async def upkeep(pool: PoolContext) -> None:
    """Every `lease_check_seconds`: write the lease renewals noted since the
    last pass and expire leases (pool/leases.py), save usage; every
    `periodic_check_seconds`, apply periodic expressions. Jobs put back to
    idle wake the waiting pilots."""
    config, store, signal = pool.config, pool.store, pool.signal
    next_periodic = time.monotonic() + config.periodic_check_seconds
    keeper, next_purge = retention_of(pool), time.monotonic()
    renewed = await run_in_threadpool(
        store.pilots.renew_after_restart, config.pilot_lease_seconds, config.claim_lease_seconds
    )
    if any(renewed):
        log.info("started: leases of %d pilot(s) and %d running job(s) renewed", *renewed)
    while True:
        try:
            requeued = await run_in_threadpool(
                store.pilots.expire_leases, config.pilot_lease_seconds, config.claim_lease_seconds
            )
            if requeued:
                signal.notify(requeued)
            await run_in_threadpool(store.reports.flush_usage)
            if time.monotonic() >= next_periodic:
                next_periodic = time.monotonic() + config.periodic_check_seconds
                changed = await run_in_threadpool(store.periodic.apply)
                if any(changed.values()):
                    log.info("periodic expressions: %s", {k: len(v) for k, v in changed.items()})
                    signal.notify(sum(len(v) for v in changed.values()))
            if time.monotonic() >= next_purge:
                next_purge = time.monotonic() + config.retention_check_seconds
                purged = await run_in_threadpool(keeper.purge, time.time())
                await run_in_threadpool(store.materializer.drop_stale, time.time())
                if any(purged.values()):
                    log.info("retention: purged %s", purged)
        except Exception:  # keep the loop alive: a failed pass is retried next tick
            log.exception("lease expiry pass failed")
        try:  # late materialisation (materialize.py): jobs for the room made since
            materialized = await run_in_threadpool(store.materializer.materialize)
            if materialized:
                signal.notify(materialized)
        except Exception:
            log.exception("materialisation pass failed")
        await asyncio.sleep(config.lease_check_seconds)
