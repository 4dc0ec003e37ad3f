"""The pool's `/metrics` (glidewms/metrics.py): the queue, pilots, slots and
fair share read at scrape time, and what a pilot turn observes as it happens.

Read at scrape time (`PoolCollector`), each with one grouped query or from
memory, bounded by the live jobs and pilots, never by the history:

- jobs by state (idle, running, held) and owner, owners capped (`top`);
- pilots by state, site and entry (sites and entries capped), and their
  slots and cores busy (held by running jobs) and idle;
- fair share per submitter (capped): decayed usage, cores in use, effective
  priority;
- concurrency limits per name (capped): limit, held by running jobs, idle
  jobs waiting because it is used up;
- the pool's stored counters (jobs completed, failed runs, site failures,
  clusters submitted): they survive restarts.

Observed where they happen, by wrapping the store's own entry points at app
assembly (`instrument`), so the hot path itself carries no metrics code:

- the store time of each pilot turn and single completion (lock wait and
  transaction: what a pilot waits for besides the network);
- jobs submitted and jobs started (claims handed out);
- how long each job handed out had waited since its queue date (the one
  hook inside turns.py: only the claim loop knows the queue date).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from functools import wraps
from typing import Any, TypeVar

import sqlalchemy as sa
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, Metric

from glidewms.metrics import (
    LATENCY_BUCKETS,
    WAIT_BUCKETS,
    StateCollector,
    capped_names,
    gauge,
    label,
    new_registry,
    top,
)
from glidewms.pool.lifecycle import LIVE_PILOTS, JobState
from glidewms.pool.schema import counters, jobs, pilots
from glidewms.pool.slots import free_from
from glidewms.pool.store import PoolStore

F = TypeVar("F", bound=Callable[..., Any])

LIVE_JOBS = (JobState.IDLE, JobState.RUNNING, JobState.HELD)
# the pool's stored counters, as Prometheus counters (shared.COUNTERS)
STORED = {
    "cluster": ("glidewms_pool_clusters_submitted", "Clusters submitted (stored)"),
    "jobs_completed": (
        "glidewms_pool_jobs_completed",
        "Jobs that reached the completed state (stored)",
    ),
    "job_failures": ("glidewms_pool_job_failures", "Job runs that ended with a non-zero code"),
    "site_failures": (
        "glidewms_pool_site_failures",
        "Running jobs evicted because their pilot was lost or left (stored)",
    ),
}


class PoolMetrics:
    """One pool's registry and what it observes."""

    def __init__(self, store: PoolStore) -> None:
        self.registry: CollectorRegistry
        self.registry, errors = new_registry()
        self.turn_seconds = Histogram(
            "glidewms_pool_turn_seconds",
            "Store time of one pilot call: lock wait and transaction",
            ["call"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.job_wait = Histogram(
            "glidewms_pool_job_wait_seconds",
            "Seconds from a job's queue date to the claim that started it",
            buckets=WAIT_BUCKETS,
            registry=self.registry,
        )
        self.submitted = Counter(
            "glidewms_pool_jobs_submitted",
            "Jobs submitted since the pool started",
            registry=self.registry,
        )
        self.started = Counter(
            "glidewms_pool_jobs_started",
            "Jobs handed to pilots (claims) since the pool started",
            registry=self.registry,
        )
        self.registry.register(PoolCollector(errors, store))
        instrument(store, self)


def instrument(store: PoolStore, metrics: PoolMetrics) -> None:
    """Observe the store's turns, completions and submits: each entry point
    is replaced on the instance by a timed one (the routes and `claim_many`
    call them through the instance, so all go through it)."""
    turns, queue = store.turns, store.queue
    cycle_seconds = metrics.turn_seconds.labels("cycle")
    complete_seconds = metrics.turn_seconds.labels("complete")
    started, submitted = metrics.started, metrics.submitted

    def after_cycle(result: Any) -> None:
        if result[1]:
            started.inc(len(result[1]))

    def after_submit(result: Any) -> None:
        submitted.inc(len(result[1]))

    turns.cycle = _timed(turns.cycle, cycle_seconds.observe, after_cycle)  # type: ignore[method-assign]
    turns.complete = _timed(turns.complete, complete_seconds.observe)  # type: ignore[method-assign]
    queue.submit = _timed(queue.submit, None, after_submit)  # type: ignore[method-assign]
    turns.observe_wait = metrics.job_wait.observe


def _timed(
    fn: F, observe: Callable[[float], None] | None, after: Callable[[Any], None] | None = None
) -> F:
    @wraps(fn)
    def timed(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        if observe is not None:
            observe(time.perf_counter() - start)
        if after is not None:
            after(result)
        return result

    return timed  # type: ignore[return-value]


class PoolCollector(StateCollector):
    name = "pool"

    def __init__(self, errors: Counter, store: PoolStore) -> None:
        super().__init__(errors)
        self.store = store

    def families(self) -> Iterable[Metric]:
        store = self.store
        engine = store.engine
        with engine.connect() as conn:
            job_rows = conn.execute(
                sa.select(jobs.c.owner, jobs.c.state, sa.func.count())
                .where(jobs.c.state.in_(LIVE_JOBS))
                .group_by(jobs.c.owner, jobs.c.state)
            ).all()
            pilot_rows = conn.execute(
                sa.select(pilots.c.pilot_id, pilots.c.state, pilots.c.slot, pilots.c.free).where(
                    pilots.c.state.in_(LIVE_PILOTS)
                )
            ).all()
            busy = {
                r[0]: int(r[1] or 0)
                for r in conn.execute(
                    sa.select(jobs.c.pilot_id, sa.func.sum(jobs.c.cpus))
                    .where(jobs.c.state == JobState.RUNNING)
                    .group_by(jobs.c.pilot_id)
                )
            }
            stored = {r.name: int(r.value) for r in conn.execute(sa.select(counters))}
        yield from jobs_families(job_rows)
        yield from pilot_families(pilot_rows, busy)
        yield from fair_share_families(store.reports.userprio())
        yield from concurrency_families(store.reports.concurrency())
        for key, (name, doc) in STORED.items():
            family = CounterMetricFamily(name, doc)
            family.add_metric([], stored.get(key, 0))
            yield family


def jobs_families(rows: Iterable[Any]) -> Iterable[Metric]:
    """Jobs by state and owner; owners beyond the cap summed as `other`."""
    per_owner: dict[str, float] = {}
    counted: list[tuple[str, str, int]] = []
    for owner, state, n in rows:
        per_owner[label(owner)] = per_owner.get(label(owner), 0) + n
        counted.append((label(owner), str(state), int(n)))
    name_of = capped_names(per_owner)
    out: dict[tuple[str, str], float] = {}
    totals = {str(s): 0.0 for s in LIVE_JOBS}
    for owner, state, n in counted:
        key = (state, name_of(owner))
        out[key] = out.get(key, 0) + n
        totals[state] += n
    yield gauge(
        "glidewms_pool_jobs",
        "Jobs in the queue by state (idle, running, held) and owner (capped: other)",
        ["state", "owner"],
        sorted(out.items()),
    )
    yield gauge(
        "glidewms_pool_jobs_by_state",
        "Jobs in the queue by state (idle, running, held), every owner",
        ["state"],
        [((s,), n) for s, n in sorted(totals.items())],
    )


def pilot_families(rows: Iterable[Any], busy: dict[str, int]) -> Iterable[Metric]:
    """Live pilots by state, site and entry; slots and cores busy and idle.

    `busy`: cores held by running jobs per pilot. A pilot is a busy slot if
    it runs a job; its busy cores are its jobs' (at most its own), the rest
    of its slot's cores idle."""
    counts: dict[tuple[str, str, str], float] = {}
    per_site: dict[str, float] = {}
    per_entry: dict[str, float] = {}
    seen: list[tuple[str, str, str, bool, int, int]] = []
    for r in rows:
        slot = r.slot if isinstance(r.slot, dict) else {}
        site, entry = label(slot.get("GLIDEIN_Site")), label(slot.get("GLIDEIN_Entry_Name"))
        total = free_from(slot, None)["cpus"]
        used = busy.get(r.pilot_id, 0)
        seen.append((str(r.state), site, entry, r.pilot_id in busy, total, max(0, total - used)))
        per_site[site] = per_site.get(site, 0) + 1
        per_entry[entry] = per_entry.get(entry, 0) + 1
    site_of, entry_of = capped_names(per_site), capped_names(per_entry)
    slots = {"busy": 0.0, "idle": 0.0}
    cores = {"busy": 0.0, "idle": 0.0}
    for state, site, entry, is_busy, total, idle in seen:
        key = (state, site_of(site), entry_of(entry))
        counts[key] = counts.get(key, 0) + 1
        slots["busy" if is_busy else "idle"] += 1
        cores["busy"] += total - idle
        cores["idle"] += idle
    yield gauge(
        "glidewms_pool_pilots",
        "Registered pilots by state (active, draining), site and entry (capped: other)",
        ["state", "site", "entry"],
        sorted(counts.items()),
    )
    yield gauge(
        "glidewms_pool_slots",
        "Registered pilots running at least one job (busy) or none (idle)",
        ["status"],
        [((k,), v) for k, v in sorted(slots.items())],
    )
    yield gauge(
        "glidewms_pool_cores",
        "Cores of registered pilots held by running jobs (busy) or not (idle)",
        ["status"],
        [((k,), v) for k, v in sorted(cores.items())],
    )


def fair_share_families(submitters: list[dict[str, Any]]) -> Iterable[Metric]:
    """Per submitter (capped by usage): usage, cores in use, effective priority.
    Beyond the cap usage and cores are summed under `other`; a priority has no
    sum, so `other` has none."""
    usage = {label(s["submitter"]): float(s["usage"]) for s in submitters}
    name_of = capped_names(usage)
    cores: dict[str, float] = {}
    for s in submitters:
        name = name_of(label(s["submitter"]))
        cores[name] = cores.get(name, 0) + float(s["running_cores"])
    yield gauge(
        "glidewms_pool_submitter_usage_core_seconds",
        "Fair-share usage per submitter: core-seconds decayed by the half-life",
        ["submitter"],
        [((k,), v) for k, v in sorted(top(usage).items())],
    )
    yield gauge(
        "glidewms_pool_submitter_running_cores",
        "Cores held by the running jobs of each submitter",
        ["submitter"],
        [((k,), v) for k, v in sorted(cores.items())],
    )
    yield gauge(
        "glidewms_pool_submitter_effective_priority",
        "Effective priority per submitter (lower is better; capped submitters only)",
        ["submitter"],
        [
            ((label(s["submitter"]),), float(s["effective_priority"]))
            for s in submitters
            if name_of(label(s["submitter"])) == label(s["submitter"])
        ],
    )


def concurrency_families(rows: list[dict[str, Any]]) -> Iterable[Metric]:
    """Per concurrency limit name (capped by use; names come from job ads):
    what running jobs hold, idle jobs waiting for it, and its limit (unlimited
    names have none; nor has `other`)."""
    weight = {  # configured names first, then by use
        label(r["name"]): float(r["in_use"]) + r["idle_jobs"] + (r["limit"] is not None)
        for r in rows
    }
    name_of = capped_names(weight)
    used: dict[str, float] = {}
    waiting: dict[str, float] = {}
    for r in rows:
        name = name_of(label(r["name"]))
        used[name] = used.get(name, 0.0) + float(r["in_use"])
        waiting[name] = waiting.get(name, 0.0) + float(r["blocked_jobs"])
    yield gauge(
        "glidewms_pool_concurrency_limit",
        "Configured concurrency limit per name (names with a limit, capped)",
        ["name"],
        [
            ((label(r["name"]),), float(r["limit"]))
            for r in rows
            if r["limit"] is not None and name_of(label(r["name"])) == label(r["name"])
        ],
    )
    yield gauge(
        "glidewms_pool_concurrency_in_use",
        "Concurrency limit held by running jobs, per name (capped: other)",
        ["name"],
        [((k,), v) for k, v in sorted(used.items())],
    )
    yield gauge(
        "glidewms_pool_concurrency_waiting_jobs",
        "Idle jobs that cannot start because this limit is used up, per name (capped: other)",
        ["name"],
        [((k,), v) for k, v in sorted(waiting.items())],
    )
