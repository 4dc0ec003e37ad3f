"""Time series of a service's own metrics, kept in its own database, so the web
console can plot them with no Prometheus installed.

Every `interval` seconds (`timeseries_seconds` in each service's config; 0
turns it off) the sampler collects the service's metrics registry
(`app.state.metrics`: the same collectors `/metrics` reads, nothing is
counted twice) and keeps a few chosen families in the `samples` table:

- a gauge or counter family is summed over the labels not kept (`SeriesSpec`),
  so `glidewms_pool_pilots{state,site,entry}` becomes pilots per state;
- a histogram becomes the median of the observations made since the previous
  sample (`QuantileSpec`), estimated from the buckets as Prometheus'
  `histogram_quantile` does (linear within the bucket);
- a ratio of two families (`RatioSpec`): the goodput fraction.

Downsampling keeps the table bounded whatever the uptime: raw samples for a
day, 10-minute means for 30 days, hourly means for a year (`LEVELS`); each
tick recomputes the current coarse buckets from the raw samples and drops
what is older than its level keeps. Series per family are bounded too: the
collectors cap their label values (metrics.py `top`) and a sample keeps at
most `MAX_SERIES_PER_NAME` label sets.

`GET /api/v1/timeseries?name=&since=&step=` serves them (`router`), behind
the token rules the service chooses (`install`'s `scopes`): the series are
totals over every owner, never one user's numbers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric
from sqlalchemy.engine import Connection, Engine
from starlette.concurrency import run_in_threadpool

from glidewms.db import make_engine, migrate, sqlite_url
from glidewms.errors import responses
from glidewms.security.http import Require
from glidewms.security.tokens import Identity

log = logging.getLogger(__name__)

PATH = "/timeseries"  # under API_PREFIX
RAW = 0
# (resolution in seconds, how long it is kept): raw a day, 10-minute means for
# 30 days, hourly means for a year
LEVELS: tuple[tuple[int, float], ...] = ((RAW, 86400.0), (600, 30 * 86400.0), (3600, 365 * 86400.0))
MAX_AGE = LEVELS[-1][1]
MAX_SERIES_PER_NAME = 200
MAX_POINTS = 2000  # per series in one answer: a wider step beyond it
MAX_NAME = 128

metadata = sa.MetaData()
samples = sa.Table(
    "samples",
    metadata,
    sa.Column("name", sa.String(MAX_NAME), nullable=False),
    sa.Column("labels", sa.String(1024), nullable=False),  # JSON object, keys sorted
    sa.Column("resolution", sa.Integer, nullable=False),  # seconds; 0 = raw
    sa.Column("at", sa.Float, nullable=False),  # raw: when sampled; else the bucket's start
    sa.Column("value", sa.Float, nullable=False),
    sa.PrimaryKeyConstraint("name", "resolution", "at", "labels"),
)


def create_table(conn: Connection) -> None:
    """The migration step each service's schema runs (pool v8, factory v7,
    the frontend's own file)."""
    metadata.create_all(conn, tables=[samples], checkfirst=True)


def own_database(state_dir: Path, service: str) -> Engine:
    """A SQLite file of its own in `state_dir`, for a service with no database
    (the frontend keeps its state in a JSON file)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(sqlite_url(state_dir / "timeseries.sqlite"))
    migrate(engine, f"{service}_timeseries", [create_table])
    return engine


# ---------------------------------------------------------------- what is sampled


@dataclass(frozen=True)
class SeriesSpec:
    """A gauge or counter family, summed over every label but `keep`."""

    family: str
    keep: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return self.family

    def values(self, found: dict[str, Metric], memory: dict[Any, Any]) -> dict[str, float]:
        metric = found.get(self.family)
        out: dict[str, float] = {}
        for s in [] if metric is None else metric.samples:
            if s.name not in (self.family, self.family + "_total"):
                continue  # a counter's _created, a histogram's parts
            key = labels_key({k: s.labels.get(k, "") for k in self.keep})
            out[key] = out.get(key, 0.0) + float(s.value)
        # A count that falls to nothing has no sample (no pilot alive at an
        # entry: no row to group): a series seen before is 0 now, not a gap.
        seen: set[str] = memory.setdefault(("seen", self.family, self.keep), set())
        for key in seen - out.keys():
            out[key] = 0.0
        seen.update(out)
        if len(seen) > 2 * MAX_SERIES_PER_NAME:
            seen.intersection_update(k for k, v in out.items() if v)
        return out


@dataclass(frozen=True)
class QuantileSpec:
    """The `q` quantile of a histogram's observations since the previous sample
    (none when nothing was observed in between)."""

    family: str
    q: float = 0.5
    suffix: str = "_p50"

    @property
    def name(self) -> str:
        return self.family + self.suffix

    def values(self, found: dict[str, Metric], memory: dict[Any, Any]) -> dict[str, float]:
        metric = found.get(self.family)
        if metric is None:
            return {}
        buckets: dict[float, float] = {}
        for s in metric.samples:
            if s.name == self.family + "_bucket":
                le = float(s.labels["le"])
                buckets[le] = buckets.get(le, 0.0) + float(s.value)
        before: dict[float, float] = memory.get(self.name, {})
        memory[self.name] = buckets
        if not before:
            return {}  # the first sample only sets the baseline
        delta = sorted((le, n - before.get(le, 0.0)) for le, n in buckets.items())
        found_q = bucket_quantile(self.q, delta)
        return {} if found_q is None else {labels_key({}): found_q}


@dataclass(frozen=True)
class RatioSpec:
    """numerator / (numerator + other), each summed over all its labels; none
    when both are 0."""

    name: str
    numerator: str
    other: str

    def values(self, found: dict[str, Metric], memory: dict[Any, Any]) -> dict[str, float]:
        top = sum(SeriesSpec(self.numerator).values(found, memory).values())
        rest = sum(SeriesSpec(self.other).values(found, memory).values())
        if top + rest <= 0:
            return {}
        return {labels_key({}): top / (top + rest)}


Spec = SeriesSpec | QuantileSpec | RatioSpec

POOL_SERIES: tuple[Spec, ...] = (
    SeriesSpec("glidewms_pool_jobs_by_state", ("state",)),
    SeriesSpec("glidewms_pool_pilots", ("state",)),
    SeriesSpec("glidewms_pool_cores", ("status",)),
    SeriesSpec("glidewms_pool_slots", ("status",)),
    QuantileSpec("glidewms_pool_job_wait_seconds"),
)
FACTORY_SERIES: tuple[Spec, ...] = (
    SeriesSpec("glidewms_factory_glideins", ("entry", "state")),
    SeriesSpec("glidewms_factory_goodput_seconds", ("entry",)),
    SeriesSpec("glidewms_factory_badput_seconds", ("entry",)),
    RatioSpec(
        "glidewms_factory_goodput_fraction",
        "glidewms_factory_goodput_seconds",
        "glidewms_factory_badput_seconds",
    ),
)
FRONTEND_SERIES: tuple[Spec, ...] = (
    SeriesSpec("glidewms_frontend_demand_idle_jobs", ("group", "entry")),
    SeriesSpec("glidewms_frontend_demand_running_jobs", ("group", "entry")),
    SeriesSpec("glidewms_frontend_request_idle", ("group", "entry")),
    SeriesSpec("glidewms_frontend_request_max_running", ("group", "entry")),
)


def labels_key(labels: dict[str, str]) -> str:
    return json.dumps({k: str(v)[:128] for k, v in labels.items()}, sort_keys=True)


def bucket_quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float | None:
    """The `q` quantile from cumulative (upper bound, count) pairs, sorted by
    bound; linear within the bucket it falls in (the lowest bucket from 0); a
    quantile in the +Inf bucket is the highest finite bound. None: no counts."""
    if not buckets:
        return None
    total = buckets[-1][1]
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if math.isinf(le):
                return lower
            if count == below:
                return le
            return lower + (le - lower) * (rank - below) / (count - below)
        lower, below = le, count
    return lower


def collect(
    registry: CollectorRegistry, specs: Iterable[Spec], memory: dict[Any, Any]
) -> dict[str, dict[str, float]]:
    """name -> {labels key: value} for each spec, from one collection."""
    found = {m.name: m for m in registry.collect()}  # a counter's family name lacks _total
    out: dict[str, dict[str, float]] = {}
    for spec in specs:
        values = spec.values(found, memory)
        if len(values) > MAX_SERIES_PER_NAME:
            values = dict(sorted(values.items(), key=lambda kv: -kv[1])[:MAX_SERIES_PER_NAME])
        out[spec.name] = values
    return out


# ---------------------------------------------------------------- the table


def store(engine: Engine, now: float, values: dict[str, dict[str, float]]) -> None:
    """Keep one sample per series; recompute the coarse buckets `now` is in
    from the raw samples; drop what each level no longer keeps."""
    rows = [
        {"name": name, "labels": key, "resolution": RAW, "at": now, "value": v}
        for name, series in values.items()
        for key, v in series.items()
        if math.isfinite(v)
    ]
    names = sorted(values)
    with engine.begin() as conn:
        if rows:
            conn.execute(samples.insert(), rows)
        for resolution, _ in LEVELS[1:]:
            start = math.floor(now / resolution) * resolution
            conn.execute(
                samples.delete().where(
                    samples.c.resolution == resolution,
                    samples.c.at == start,
                    samples.c.name.in_(names),
                )
            )
            means = conn.execute(
                sa.select(samples.c.name, samples.c.labels, sa.func.avg(samples.c.value))
                .where(
                    samples.c.resolution == RAW,
                    samples.c.at >= start,
                    samples.c.at < start + resolution,
                    samples.c.name.in_(names),
                )
                .group_by(samples.c.name, samples.c.labels)
            ).all()
            if means:
                conn.execute(
                    samples.insert(),
                    [
                        {"name": n, "labels": k, "resolution": resolution, "at": start, "value": v}
                        for n, k, v in means
                    ],
                )
        for resolution, keep in LEVELS:
            conn.execute(
                samples.delete().where(
                    samples.c.resolution == resolution, samples.c.at < now - keep
                )
            )


def resolution_for(since: float, step: float, now: float) -> int:
    """The coarsest stored level no coarser than `step` that still covers
    `since` (raw only keeps a day): the fewest rows for the plot asked."""
    covering = [r for r, keep in LEVELS if since >= now - keep]
    if not covering:
        return LEVELS[-1][0]
    fine_enough = [r for r in covering if r <= step]
    return max(fine_enough) if fine_enough else min(covering)


def query(engine: Engine, name: str, since: float, step: float, now: float) -> dict[str, Any]:
    """The series of `name` since `since`, in points `step` seconds apart at
    most (means over each step; at most MAX_POINTS a series)."""
    step = max(step, (now - since) / MAX_POINTS)
    resolution = resolution_for(since, step, now)
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(samples.c.labels, samples.c.at, samples.c.value)
            .where(
                samples.c.name == name,
                samples.c.resolution == resolution,
                samples.c.at >= since,
            )
            .order_by(samples.c.labels, samples.c.at)
            .limit(MAX_SERIES_PER_NAME * MAX_POINTS)
        ).all()
    series: dict[str, dict[float, list[float]]] = {}
    for key, t, value in rows:
        bucket = math.floor(t / step) * step if step > 0 else t
        series.setdefault(key, {}).setdefault(bucket, []).append(value)
    return {
        "name": name,
        "since": since,
        "step": step,
        "resolution": resolution,
        "series": [
            {
                "labels": json.loads(key),
                "points": [[t, sum(vs) / len(vs)] for t, vs in sorted(points.items())],
            }
            for key, points in sorted(series.items())
        ],
    }


# ---------------------------------------------------------------- the loop and the route


class Sampler:
    """`engine` may be a function making it: made on first use (the frontend's
    own file is not created by merely building its app)."""

    def __init__(
        self,
        registry: CollectorRegistry,
        engine: Engine | Callable[[], Engine],
        specs: Sequence[Spec],
        interval: float,
    ) -> None:
        self.registry, self.specs, self.interval = registry, specs, interval
        self._engine = engine
        self._making = threading.Lock()  # the sampler's thread and a query's
        self.memory: dict[Any, Any] = {}

    @property
    def engine(self) -> Engine:
        with self._making:
            if not isinstance(self._engine, Engine):
                self._engine = self._engine()
            return self._engine

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.specs]

    def sample(self, now: float | None = None) -> None:
        store(
            self.engine,
            time.time() if now is None else now,
            collect(self.registry, self.specs, self.memory),
        )

    async def run(self) -> None:
        while True:
            try:
                await run_in_threadpool(self.sample)
            except Exception:  # a failed sample is retried at the next tick
                log.exception("time series: sampling failed")
            await asyncio.sleep(self.interval)


def install(
    app: FastAPI,
    engine: Engine | Callable[[], Engine],
    specs: Sequence[Spec],
    interval: float,
    scopes: tuple[str, ...],
) -> Sampler:
    """Sample `app.state.metrics` into `engine` while the app runs (not when
    `interval` is 0), and serve the series to tokens with one of `scopes`."""
    sampler = Sampler(app.state.metrics, engine, specs, interval)
    app.state.timeseries = sampler
    app.state.timeseries_scopes = scopes
    if interval > 0:
        app.router.lifespan_context = _with_sampler(app.router.lifespan_context, sampler)
    return sampler


def _with_sampler(
    inner: Callable[[FastAPI], AbstractAsyncContextManager[Any]], sampler: Sampler
) -> Callable[[FastAPI], AbstractAsyncContextManager[Any]]:
    @asynccontextmanager
    async def run(app: FastAPI) -> AsyncIterator[Any]:
        async with inner(app) as state:
            task = asyncio.create_task(sampler.run(), name="timeseries")
            try:
                yield state
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    return run


_bearer = HTTPBearer(auto_error=False, scheme_name="HTTPBearer")


async def _caller(
    request: Request,
    _named: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Identity:
    """The caller, with one of the scopes the service chose (`install`); the
    bearer scheme is named so the API's schema says a token is needed."""
    scopes: tuple[str, ...] = request.app.state.timeseries_scopes
    return await Require(scopes)(request)


router = APIRouter()
Caller = Annotated[Identity, Depends(_caller)]


@router.get(PATH, responses=responses(404))
async def timeseries(
    request: Request,
    who: Caller,
    name: Annotated[str | None, Query(max_length=MAX_NAME)] = None,
    since: Annotated[float | None, Query(ge=0, le=1e11)] = None,
    step: Annotated[float, Query(ge=0, le=86400)] = 0.0,
) -> dict[str, Any]:
    """One series family since `since` (Unix time; default an hour ago; at
    most a year back), means over `step` seconds; without `name`, the names
    this service keeps."""
    sampler: Sampler = request.app.state.timeseries
    if name is None:
        return {"names": sampler.names, "interval": sampler.interval}
    if name not in sampler.names:
        raise HTTPException(404, f"no time series {name!r}; this service keeps {sampler.names}")
    now = time.time()
    start = now - 3600.0 if since is None else max(since, now - MAX_AGE)
    return await run_in_threadpool(query, sampler.engine, name, start, step, now)
