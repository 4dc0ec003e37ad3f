"""The frontend's `/metrics` (glidewms/metrics.py): per group and entry what
the last cycle saw and asked (demand, supply, pressure, request), and the
cycles and queries as they happen.

Read at scrape time (`FrontendCollector`) from what the frontend keeps
anyway: the latest explanation record of each (group, entry)
(explanations.py, what `frontend explain` prints) and the last cycle's
report. An entry the last cycle skipped, froze or failed has no demand or
request sample in it (its record has none), so a dashboard shows a gap, not
a stale number.

Observed where they happen, by wrapping the frontend's own coroutines at
app assembly (`instrument`), so service.py carries no metrics code: each
cycle's duration (and cycles that raised), and each query of a pool or a
factory and each request put to a factory that failed, by peer.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable
from functools import wraps
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from glidewms.frontend.service import Frontend
from glidewms.metrics import StateCollector, gauge, label, new_registry
from glidewms.protocol import RemovalStage

T = TypeVar("T")

CYCLE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
SUPPLY_STATES = (
    "queued",
    "starting",
    "idle",
    "partial",
    "busy",
    "unusable",
    "retiring",
    "removing",
)
STAGES = {stage.value: float(i) for i, stage in enumerate(RemovalStage)}  # NO 0 ... ALL 3
LAST_CYCLE = (
    ("glidewms_frontend_last_cycle_timestamp_seconds", "When the last cycle started (Unix time)"),
    ("glidewms_frontend_last_cycle_ok", "1 if the last cycle had no error, else 0"),
    (
        "glidewms_frontend_last_cycle_errors",
        "Errors the last cycle reported (peers unreachable, groups frozen...)",
    ),
)
# (metric, part of the record, key, help)
ENTRY_NUMBERS = (
    ("glidewms_frontend_demand_idle_jobs", "demand", "idle_jobs", "Idle jobs that match the entry"),
    (
        "glidewms_frontend_demand_running_jobs",
        "demand",
        "running_jobs",
        "Running jobs on the entry's pilots",
    ),
    (
        "glidewms_frontend_demand_units",
        "demand",
        "units",
        "Idle jobs that match the entry, in pilots of its size",
    ),
    (
        "glidewms_frontend_pressure_demand_units",
        "pressure",
        "demand_units",
        "The demand the entry's share of pressure is computed from, in pilots",
    ),
    (
        "glidewms_frontend_pressure_effective_idle",
        "pressure",
        "effective_idle",
        "Pilots the pressure asks to have idle at the entry, before limits",
    ),
    (
        "glidewms_frontend_request_idle",
        "request",
        "idle",
        "Idle pilots requested from the factory for the entry",
    ),
    (
        "glidewms_frontend_request_max_running",
        "request",
        "max_running",
        "Running pilots allowed at the entry",
    ),
)


class FrontendMetrics:
    """One frontend app's registry and what it observes."""

    def __init__(self, frontend: Frontend) -> None:
        self.registry: CollectorRegistry
        self.registry, errors = new_registry()
        self.cycle_seconds = Histogram(
            "glidewms_frontend_cycle_seconds",
            "Duration of one frontend cycle (queries, matching, decisions, requests)",
            buckets=CYCLE_BUCKETS,
            registry=self.registry,
        )
        self.cycle_failures = Counter(
            "glidewms_frontend_cycle_failures",
            "Cycles that raised (the loop went on)",
            registry=self.registry,
        )
        self.query_failures = Counter(
            "glidewms_frontend_query_failures",
            "Failed queries of a pool or factory, and requests a factory did not take",
            ["kind", "peer"],
            registry=self.registry,
        )
        self.registry.register(FrontendCollector(errors, frontend))
        instrument(frontend, self)


def instrument(frontend: Frontend, metrics: FrontendMetrics) -> None:
    """Time the frontend's cycles and count its failed queries: its coroutines
    are replaced on the instances by observed ones (the loop and the tests
    call them through the instances)."""
    sources = frontend.sources
    failed = metrics.query_failures
    config = frontend.config
    for pool in config.all_pools():  # every peer's series from zero on, not from its first failure
        failed.labels("pool", label(pool.name))
    for factory in config.all_factories():
        failed.labels("factory", label(factory.name))
        failed.labels("put", label(factory.name))

    async def observe_cycle(call: Awaitable[T]) -> T:
        start = time.perf_counter()
        try:
            return await call
        except Exception:
            metrics.cycle_failures.inc()
            raise
        finally:
            metrics.cycle_seconds.observe(time.perf_counter() - start)

    def pool_failed(answer: Any, http: Any, pool: Any) -> None:
        if not answer.ok:
            failed.labels("pool", label(pool.name)).inc()

    def factory_failed(answer: Any, http: Any, factory: Any, *rest: Any) -> None:
        if answer.entries is None:
            failed.labels("factory", label(factory.name)).inc()

    def put_failed(answer: Any, http: Any, factory: Any, *rest: Any) -> None:
        if answer is not None:
            failed.labels("put", label(factory.name)).inc()

    frontend.cycle = _around(frontend.cycle, observe_cycle)  # type: ignore[method-assign]
    sources.query_pool = _after(sources.query_pool, pool_failed)  # type: ignore[method-assign]
    sources.query_factory = _after(sources.query_factory, factory_failed)  # type: ignore[method-assign]
    sources.put_request = _after(sources.put_request, put_failed)  # type: ignore[method-assign]


def _around(fn: Any, observe: Callable[[Awaitable[Any]], Awaitable[Any]]) -> Any:
    @wraps(fn)
    async def observed(*args: Any, **kwargs: Any) -> Any:
        return await observe(fn(*args, **kwargs))

    return observed


def _after(fn: Any, check: Callable[..., None]) -> Any:
    @wraps(fn)
    async def observed(*args: Any, **kwargs: Any) -> Any:
        answer = await fn(*args, **kwargs)
        check(answer, *args)
        return answer

    return observed


class FrontendCollector(StateCollector):
    name = "frontend"

    def __init__(self, errors: Counter, frontend: Frontend) -> None:
        super().__init__(errors)
        self.frontend = frontend

    def families(self) -> Iterable[Metric]:
        frontend = self.frontend
        records = frontend.explanations.select()
        yield from entry_families(records)
        cycles = CounterMetricFamily(
            "glidewms_frontend_cycles", "Cycles run (counted across restarts)"
        )
        cycles.add_metric([], frontend.cycles)
        yield cycles
        last = frontend.last  # None before the first cycle: the families, without samples
        values: tuple[float | None, ...] = (None, None, None)
        if last is not None:
            values = (last.started, 1.0 if last.ok else 0.0, float(len(last.errors)))
        for (name, doc), found in zip(LAST_CYCLE, values, strict=True):
            yield GaugeMetricFamily(name, doc, value=found)


def entry_families(records: Iterable[dict[str, Any]]) -> Iterable[Metric]:
    """Demand, supply, pressure and request per (group, entry) from the latest
    explanation records; a number a record lacks has no sample."""
    numbers: dict[str, list[tuple[tuple[str, ...], float]]] = {m[0]: [] for m in ENTRY_NUMBERS}
    supply: list[tuple[tuple[str, ...], float]] = []
    stages: list[tuple[tuple[str, ...], float]] = []
    for record in records:
        key = (label(record.get("group")), label(record.get("entry")))
        for name, part, field, _ in ENTRY_NUMBERS:
            found = _number((record.get(part) or {}).get(field))
            if found is not None:
                numbers[name].append((key, found))
        for state in SUPPLY_STATES:
            found = _number((record.get("supply") or {}).get(state))
            if found is not None:
                supply.append(((*key, state), found))
        stage = (record.get("request") or {}).get("remove")
        if stage in STAGES:
            stages.append((key, STAGES[stage]))
    for name, _, _, doc in ENTRY_NUMBERS:
        yield gauge(name, doc, ["group", "entry"], numbers[name])
    yield gauge(
        "glidewms_frontend_supply_pilots",
        "The entry's pilots for the group by state, as the last cycle counted them",
        ["group", "entry", "state"],
        supply,
    )
    yield gauge(
        "glidewms_frontend_request_remove_stage",
        "Removal stage requested: 0 NO, 1 WAIT, 2 IDLE, 3 ALL",
        ["group", "entry"],
        stages,
    )


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)
