"""`GET /metrics` of every service, in the Prometheus text format.

Each app has its own `CollectorRegistry` (`app.state.metrics`), never
prometheus_client's global one: several services (and several pools) run in
one test process, and a global registry would mix their numbers or refuse
the second service's metric names.

Most numbers are read at scrape time by custom collectors from what the
service already keeps (the pool's in-memory queue index, grouped counts over
indexed columns, the frontend's last explanations), so nothing on a hot path
has to count them; only what happens once and cannot be recomputed later
(a turn's duration, a job's wait, a backend call's latency, a cycle) is a
counter or histogram observed where it happens. docs/operations.md lists
every metric.

Access follows the token rules: `/metrics` is not a public route, so the
gate (security/asgi.py) answers 401 without a token; the route then wants
the read-only `metrics` scope (or admin), so a user's or a pilot's token
gets 403. A Prometheus scrapes with a `metrics` token in a file
(`authorization: credentials_file:`; deploy/prometheus/prometheus.yml).

Labels whose values come from outside (job owners, submitters, pilot sites,
failure categories) are capped (`top`): the largest `limit` values keep
their own label, the rest are summed under `other`, so a hostile or merely
large installation cannot grow a scrape without bound.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.concurrency import run_in_threadpool

from glidewms.errors import GATED, responses
from glidewms.security.http import require
from glidewms.security.tokens import Identity

log = logging.getLogger(__name__)

PATH = "/metrics"
SCOPE = "metrics"  # the read-only scope of a scraper (security/tokens.py SCOPES)
OTHER = "other"  # the label value the values beyond a cap are summed under
MAX_LABEL_VALUES = 50  # per capped label: owners, submitters, sites, categories...

# Latencies of calls served in-process (a pilot turn) and of commands (a backend):
# from a tenth of a millisecond to a minute.
LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
# Waits of jobs and durations of cycles: from a second to a week.
WAIT_BUCKETS = (1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, 86400.0, 7 * 86400.0)


def top(values: Mapping[str, float], limit: int | None = None) -> dict[str, float]:
    """The `limit` (default MAX_LABEL_VALUES) largest values under their own
    names, the rest summed under `OTHER` (present only when something was
    summed). Ties keep the first name in sorted order, so a scrape is stable."""
    name_of = capped_names(values, limit)
    out: dict[str, float] = {}
    for name, v in values.items():
        out[name_of(name)] = out.get(name_of(name), 0.0) + v
    return out


def capped_names(values: Mapping[str, float], limit: int | None = None) -> Callable[[str], str]:
    """A function naming each value's label as `top` does: itself if it is
    among the kept ones, else `OTHER` (to fold several numbers per name the
    same way)."""
    most = MAX_LABEL_VALUES if limit is None else limit
    ranked = sorted(values.items(), key=lambda kv: (-kv[1], kv[0]))
    kept = {name for name, _ in ranked[:most]}
    return lambda name: name if name in kept else OTHER


def label(value: Any) -> str:
    """A label value from a column that may be NULL or not a string."""
    return "" if value is None else str(value)[:128]


def gauge(
    name: str, doc: str, labels: Iterable[str], rows: Iterable[tuple[tuple[str, ...], float]]
) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=list(labels))
    for values, value in rows:
        family.add_metric(list(values), value)
    return family


class StateCollector(Collector):
    """A collector whose families are read from a service at scrape time.

    A failing read (a database gone away) must not make the whole scrape a
    500: the error is logged and counted (`glidewms_scrape_errors_total`,
    labelled by collector), and the other collectors' numbers are served."""

    name = "state"

    def __init__(self, errors: Counter) -> None:
        self.errors = errors.labels(self.name)

    def families(self) -> Iterable[Metric]:  # pragma: no cover - overridden
        return ()

    def collect(self) -> Iterable[Metric]:
        try:
            found = list(self.families())
        except Exception:
            log.exception("metrics: the %s collector failed", self.name)
            self.errors.inc()
            return []
        return found

    def describe(self) -> Iterable[Metric]:
        return ()  # no read at registration: the service may not be started yet


def new_registry() -> tuple[CollectorRegistry, Counter]:
    """A service's own registry, and its counter of failed collector reads."""
    registry = CollectorRegistry(auto_describe=False)
    errors = Counter(
        "glidewms_scrape_errors",
        "Collector reads of the service's state that failed (the scrape went on without them)",
        ["collector"],
        registry=registry,
    )
    return registry, errors


router = APIRouter()
MetricsCaller = Annotated[Identity, Depends(require(SCOPE))]


@router.get(
    PATH,
    response_class=Response,
    responses={
        200: {
            "description": "every metric of this service (Prometheus text format 0.0.4)",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        },
        **responses(*GATED),
    },
)
async def metrics(request: Request, who: MetricsCaller) -> Response:
    """Every metric of this service, read now (docs/operations.md lists them)."""
    registry: CollectorRegistry = request.app.state.metrics
    body = await run_in_threadpool(generate_latest, registry)  # collectors read the database
    return Response(body, media_type=CONTENT_TYPE_LATEST)
