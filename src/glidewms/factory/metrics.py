"""The factory's `/metrics` (glidewms/metrics.py): pilots, submissions,
failures, pauses and goodput read at scrape time; backend latency observed.

Read at scrape time (`FactoryCollector`) from the glideins table with
grouped queries, so every number survives a restart and nothing on the
converge loop counts them:

- pilots alive by entry, frontend and state (queued, held, running,
  removing): a gauge;
- pilots submitted, and pilots ended by state, per entry and frontend:
  counters over the stored rows;
- failures per entry, frontend and category (`stats.failure_category`:
  the pilot's exit reason, or `failed`), categories capped;
- goodput, badput and pilot wall seconds per entry and frontend, summed
  from the pilots' final reports, and the same in core-seconds as
  `stats.report_core_seconds` counts them (an older pilot's jobs as one
  core each, a black hole's hold on all its cores as badput);
- per configured entry: paused or not, submissions failed in a row;
- converge cycles run.

The totals count the pilot rows the factory keeps: ended pilots' rows
go after `glidein_retention_days` (store.purge_ended), which lowers them
and Prometheus reads as a counter reset. Their queries read the whole table
(one grouped scan per scrape).

Observed where it happens: every backend call (submit, status, remove,
release, logs, adopt, token refresh), timed per backend kind and operation
with failures counted, by wrapping each backend as it enters
`factory.backends` (`MeteredBackends`, also for backends a reload adds).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from functools import wraps
from typing import Any, cast

import sqlalchemy as sa
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from glidewms.factory.backends import Backend
from glidewms.factory.schema import glideins_table
from glidewms.factory.service import Factory
from glidewms.factory.states import ACTIVE_STATES, FINAL_STATES, GlideinState
from glidewms.factory.stats import MAX_CPUS, MAX_SECONDS, failure_category
from glidewms.factory.store import Glidein
from glidewms.metrics import (
    LATENCY_BUCKETS,
    StateCollector,
    capped_names,
    gauge,
    label,
    new_registry,
)

OPERATIONS = ("submit", "status", "remove", "release", "logs", "adopt", "refresh_token")
REPORT_SECONDS = {  # metric name -> the final report's key
    "glidewms_factory_goodput_seconds": "goodput_seconds",
    "glidewms_factory_badput_seconds": "badput_seconds",
    "glidewms_factory_pilot_seconds": "wall_seconds",
}
REPORT_DOCS = {
    "glidewms_factory_goodput_seconds": "Wall seconds of jobs that succeeded, from pilot reports",
    "glidewms_factory_badput_seconds": "Wall seconds of jobs that failed, from pilot reports",
    "glidewms_factory_pilot_seconds": "Wall seconds of the pilots themselves, from their reports",
}
CORE_DOCS = {
    "glidewms_factory_goodput_core_seconds": "Core-seconds of jobs that succeeded (wall x cores)",
    "glidewms_factory_badput_core_seconds": (
        "Core-seconds of jobs that failed, and of nodes a black hole kept"
    ),
    "glidewms_factory_pilot_core_seconds": (
        "Core-seconds of the pilots themselves (wall x cores, black-hole hold included)"
    ),
}


class FactoryMetrics:
    """One factory's registry and its backend timings."""

    def __init__(self, factory: Factory) -> None:
        self.registry: CollectorRegistry
        self.registry, errors = new_registry()
        self.backend_seconds = Histogram(
            "glidewms_factory_backend_seconds",
            "Duration of one backend call (a batch command, an SSH round trip...)",
            ["backend", "operation"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.backend_errors = Counter(
            "glidewms_factory_backend_errors",
            "Backend calls that raised",
            ["backend", "operation"],
            registry=self.registry,
        )
        self.registry.register(FactoryCollector(errors, factory))
        factory.backends = MeteredBackends(self, factory.backends)


class MeteredBackends(dict[str, Backend]):
    """`factory.backends`, whose every backend is timed as it is put in."""

    def __init__(self, metrics: FactoryMetrics, backends: Mapping[str, Backend]) -> None:
        super().__init__()
        self.metrics = metrics
        for kind, backend in backends.items():
            self[kind] = backend

    def __setitem__(self, kind: str, backend: Backend) -> None:
        if not getattr(backend, "_glidewms_metered", False):
            for operation in OPERATIONS:
                method = getattr(backend, operation, None)
                if method is not None:
                    setattr(backend, operation, self._timed(kind, operation, method))
            backend._glidewms_metered = True  # type: ignore[attr-defined]
        super().__setitem__(kind, backend)

    def _timed(self, kind: str, operation: str, call: Callable[..., Any]) -> Callable[..., Any]:
        seconds = self.metrics.backend_seconds.labels(kind, operation)
        errors = self.metrics.backend_errors.labels(kind, operation)

        @wraps(call)
        async def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return await call(*args, **kwargs)
            except BaseException:
                errors.inc()
                raise
            finally:
                seconds.observe(time.perf_counter() - start)

        return timed


class FactoryCollector(StateCollector):
    name = "factory"

    def __init__(self, errors: Counter, factory: Factory) -> None:
        super().__init__(errors)
        self.factory = factory

    def families(self) -> Iterable[Metric]:
        factory = self.factory
        t = glideins_table
        engine = factory.store.engine
        code = sa.case((t.c.exit_code.is_(None), None), (t.c.exit_code == 0, 0), else_=1)
        sums = [
            sa.func.coalesce(sa.func.sum(_number(t.c.report, key, engine.dialect.name)), 0.0)
            for key in REPORT_SECONDS.values()
        ] + [
            sa.func.coalesce(sa.func.sum(e), 0.0)
            for e in _core_seconds(t.c.report, engine.dialect.name)
        ]
        with engine.connect() as conn:
            alive = conn.execute(
                sa.select(t.c.entry, t.c.frontend, t.c.state, sa.func.count())
                .where(t.c.state.in_([s.value for s in ACTIVE_STATES]))
                .group_by(t.c.entry, t.c.frontend, t.c.state)
            ).all()
            submitted = conn.execute(
                sa.select(t.c.entry, t.c.frontend, sa.func.count()).group_by(
                    t.c.entry, t.c.frontend
                )
            ).all()
            ended = conn.execute(
                sa.select(
                    t.c.entry, t.c.frontend, t.c.state, t.c.exit_reason, code, sa.func.count()
                )
                .where(t.c.state.in_([s.value for s in FINAL_STATES]))
                .group_by(t.c.entry, t.c.frontend, t.c.state, t.c.exit_reason, code)
            ).all()
            reported = conn.execute(
                sa.select(t.c.entry, t.c.frontend, *sums)
                .where(t.c.report.is_not(None))
                .group_by(t.c.entry, t.c.frontend)
            ).all()
        yield gauge(
            "glidewms_factory_glideins",
            "Pilots alive by entry, frontend and state (queued, held, running, removing)",
            ["entry", "frontend", "state"],
            [((label(e), label(f), label(s)), n) for e, f, s, n in alive],
        )
        family = CounterMetricFamily(
            "glidewms_factory_glideins_submitted",
            "Pilots submitted (the factory's stored pilot rows)",
            labels=["entry", "frontend"],
        )
        for e, f, n in submitted:
            family.add_metric([label(e), label(f)], n)
        yield family
        yield from ended_families(ended)
        for i, name in enumerate(REPORT_SECONDS):
            family = CounterMetricFamily(name, REPORT_DOCS[name], labels=["entry", "frontend"])
            for row in reported:
                family.add_metric([label(row[0]), label(row[1])], float(row[2 + i]))
            yield family
        for i, name in enumerate(CORE_DOCS, start=len(REPORT_SECONDS)):
            family = CounterMetricFamily(name, CORE_DOCS[name], labels=["entry", "frontend"])
            for row in reported:
                family.add_metric([label(row[0]), label(row[1])], float(row[2 + i]))
            yield family
        yield from entry_families(factory)
        cycles = CounterMetricFamily("glidewms_factory_cycles", "Converge cycles run")
        cycles.add_metric([], factory.cycles)
        yield cycles


def _is_number(column: Any, key: str, dialect: str) -> Any:
    if dialect == "postgresql":
        return sa.func.json_typeof(column[key]) == "number"
    return sa.func.json_type(column, f'$."{key}"').in_(("integer", "real"))  # SQLite


def _number(column: Any, key: str, dialect: str) -> Any:
    """The report's `key` if it is a JSON number, else 0 (reports carry extra
    keys as pilots sent them: a string must not fail the sum)."""
    return sa.case((_is_number(column, key, dialect), column[key].as_float()), else_=0.0)


def _bounded(column: Any, key: str, dialect: str, most: float, absent: Any = 0.0) -> Any:
    """The report's number under `key` within [0, most]; `absent` if it is none."""
    value = column[key].as_float()
    number = _is_number(column, key, dialect)  # NULL, not false, for a key not there
    return sa.case(
        (number & (value < 0), 0.0),
        (number & (value > most), most),
        (number, value),
        else_=absent,
    )


def _core_seconds(column: Any, dialect: str) -> tuple[Any, Any, Any]:
    """(goodput, badput, pilot) core-seconds of a report, in SQL: what
    `stats.report_core_seconds` computes, so scrapes and `factory stats` agree."""
    cpus = _bounded(column, "cpus", dialect, MAX_CPUS, 1.0)
    cpus = sa.case((cpus < 1, 1.0), else_=sa.cast(cpus, sa.Integer))
    held = _bounded(column, "hold_seconds", dialect, MAX_SECONDS) * cpus

    def core(key: str, older: Any) -> Any:
        return _bounded(column, key, dialect, MAX_SECONDS, older)

    good = core("goodput_core_seconds", _bounded(column, "goodput_seconds", dialect, MAX_SECONDS))
    bad = core("badput_core_seconds", _bounded(column, "badput_seconds", dialect, MAX_SECONDS))
    own = core("pilot_core_seconds", _bounded(column, "wall_seconds", dialect, MAX_SECONDS) * cpus)
    return good, bad + held, own + held


class _Ended:
    """What `failure_category` reads of a pilot, from a grouped row."""

    def __init__(self, state: str, exit_reason: str | None, exit_code: int | None) -> None:
        self.state = GlideinState(state)
        self.exit_reason = exit_reason
        self.exit_code = exit_code


def ended_families(rows: Iterable[Any]) -> Iterable[Metric]:
    """Pilots ended by state, and failures by category (capped: `other`)."""
    by_state: dict[tuple[str, str, str], float] = {}
    failures: dict[tuple[str, str, str], float] = {}
    per_category: dict[str, float] = {}
    for entry, frontend, state, reason, code, n in rows:
        ended = (label(entry), label(frontend), label(state))
        by_state[ended] = by_state.get(ended, 0) + n
        category = failure_category(cast(Glidein, _Ended(state, reason, code)))
        if category is not None:
            failed = (label(entry), label(frontend), label(category))
            failures[failed] = failures.get(failed, 0) + n
            per_category[failed[2]] = per_category.get(failed[2], 0) + n
    family = CounterMetricFamily(
        "glidewms_factory_glideins_ended",
        "Pilots ended by entry, frontend and final state (finished, failed, removed)",
        labels=["entry", "frontend", "state"],
    )
    for values, n in sorted(by_state.items()):
        family.add_metric(list(values), n)
    yield family
    name_of = capped_names(per_category)
    capped: dict[tuple[str, str, str], float] = {}
    for (entry, frontend, category), n in failures.items():
        capped_key = (entry, frontend, name_of(category))
        capped[capped_key] = capped.get(capped_key, 0) + n
    family = CounterMetricFamily(
        "glidewms_factory_glidein_failures",
        "Pilots that ended badly, by category: their exit reason, or `failed`",
        labels=["entry", "frontend", "category"],
    )
    for values, n in sorted(capped.items()):
        family.add_metric(list(values), n)
    yield family


def entry_families(factory: Factory) -> Iterable[Metric]:
    """Per configured entry: paused, submissions failed in a row, pilot failure streak."""
    paused = GaugeMetricFamily(
        "glidewms_factory_entry_paused",
        "1 while an entry is paused (failed submissions, failing pilots or an operator)",
        labels=["entry"],
    )
    failing = GaugeMetricFamily(
        "glidewms_factory_entry_submit_failures",
        "Submissions failed in a row at each entry (0: the last one worked)",
        labels=["entry"],
    )
    streak = GaugeMetricFamily(
        "glidewms_factory_entry_pilot_failures",
        "Pilot failure streak of each entry (validation, exit before the first job, "
        "black hole; successes shrink it)",
        labels=["entry"],
    )
    health = dict(factory.health)
    for entry in factory.config.entries:
        state = health.get(entry.name)
        paused.add_metric([entry.name], 1.0 if state is not None and state.paused else 0.0)
        failing.add_metric([entry.name], float(state.failures if state is not None else 0))
        streak.add_metric([entry.name], float(state.pilot_failures if state is not None else 0))
    yield paused
    yield failing
    yield streak
