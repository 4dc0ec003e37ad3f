"""The services' own time series (glidewms/timeseries.py): sampling from a
metrics registry, the median of a histogram's new observations, downsampling
and its bounds, and the query's choice of level."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import sqlalchemy as sa
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from glidewms import timeseries as ts
from glidewms.db import make_engine, migrate, sqlite_url

INF = math.inf


@pytest.mark.parametrize(
    ("q", "buckets", "expected"),
    [
        (0.5, [], None),
        (0.5, [(1.0, 0.0), (INF, 0.0)], None),
        # 4 observations all in (0, 1]: the median halfway into the bucket
        (0.5, [(1.0, 4.0), (5.0, 4.0), (INF, 4.0)], 0.5),
        # 2 in (0,1], 2 in (1,5]: rank 2 reached at the first bound
        (0.5, [(1.0, 2.0), (5.0, 4.0), (INF, 4.0)], 1.0),
        # 1 in (0,1], 3 in (1,5]: rank 2 is 1/3 into (1,5]
        (0.5, [(1.0, 1.0), (5.0, 4.0), (INF, 4.0)], 1.0 + 4.0 / 3.0),
        # everything beyond the last finite bound: that bound
        (0.5, [(1.0, 0.0), (5.0, 0.0), (INF, 3.0)], 5.0),
        (0.9, [(10.0, 10.0), (INF, 10.0)], 9.0),
    ],
)
def test_bucket_quantile(
    q: float, buckets: list[tuple[float, float]], expected: float | None
) -> None:
    found = ts.bucket_quantile(q, buckets)
    if expected is None:
        assert found is None
    else:
        assert found == pytest.approx(expected)


NOW = 1_000_000_000.0
DAY = 86400.0


@pytest.mark.parametrize(
    ("since", "step", "expected"),
    [
        (NOW - 3600, 0, 0),  # an hour, as fine as can be: raw
        (NOW - 3600, 600, 600),  # an hour in 10-minute steps: the 10-minute means
        (NOW - 3600, 7200, 3600),
        (NOW - 2 * DAY, 0, 600),  # raw keeps a day only
        (NOW - 40 * DAY, 0, 3600),  # 10-minute means keep 30 days
        (NOW - 400 * DAY, 0, 3600),  # beyond everything: the coarsest
    ],
)
def test_resolution_for(since: float, step: float, expected: int) -> None:
    assert ts.resolution_for(since, step, NOW) == expected


def registry_with_numbers() -> tuple[CollectorRegistry, Gauge, Histogram, Counter, Counter]:
    registry = CollectorRegistry(auto_describe=False)
    jobs = Gauge("glidewms_pool_pilots", "pilots", ["state", "site"], registry=registry)
    wait = Histogram(
        "glidewms_pool_job_wait_seconds", "wait", buckets=(1, 10, 100), registry=registry
    )
    good = Counter("glidewms_factory_goodput_seconds", "g", ["entry"], registry=registry)
    bad = Counter("glidewms_factory_badput_seconds", "b", ["entry"], registry=registry)
    return registry, jobs, wait, good, bad


def test_collect_sums_over_the_labels_not_kept() -> None:
    registry, pilots, *_ = registry_with_numbers()
    pilots.labels("active", "A").set(2)
    pilots.labels("active", "B").set(3)
    pilots.labels("draining", "A").set(1)
    found = ts.collect(registry, [ts.SeriesSpec("glidewms_pool_pilots", ("state",))], {})
    assert found == {
        "glidewms_pool_pilots": {'{"state": "active"}': 5.0, '{"state": "draining"}': 1.0}
    }


def test_the_median_is_of_the_observations_since_the_previous_sample() -> None:
    registry, _, wait, _, _ = registry_with_numbers()
    spec = ts.QuantileSpec("glidewms_pool_job_wait_seconds")
    memory: dict[object, object] = {}
    for _ in range(10):
        wait.observe(50)  # before the baseline: not in any interval
    assert ts.collect(registry, [spec], memory) == {spec.name: {}}
    assert ts.collect(registry, [spec], memory) == {spec.name: {}}  # nothing new
    wait.observe(0.5)
    wait.observe(0.5)
    wait.observe(0.5)
    (median,) = ts.collect(registry, [spec], memory)[spec.name].values()
    assert 0 < median <= 1  # the three new ones, not the ten at 50 s


def test_the_goodput_fraction_counts_every_entry() -> None:
    registry, _, _, good, bad = registry_with_numbers()
    spec = ts.RatioSpec(
        "fraction", "glidewms_factory_goodput_seconds", "glidewms_factory_badput_seconds"
    )
    assert ts.collect(registry, [spec], {}) == {"fraction": {}}  # 0/0: no sample
    good.labels("a").inc(30)
    good.labels("b").inc(30)
    bad.labels("a").inc(20)
    assert ts.collect(registry, [spec], {}) == {"fraction": {"{}": 0.75}}


def engine_at(tmp_path: Path) -> sa.Engine:
    engine = make_engine(sqlite_url(tmp_path / "ts.sqlite"))
    migrate(engine, "test", [ts.create_table])
    return engine


def rows(engine: sa.Engine, resolution: int) -> list[tuple[float, float]]:
    with engine.connect() as conn:
        return [
            (r.at, r.value)
            for r in conn.execute(
                sa.select(ts.samples.c.at, ts.samples.c.value)
                .where(ts.samples.c.resolution == resolution)
                .order_by(ts.samples.c.at)
            )
        ]


def test_store_keeps_raw_and_the_means_of_the_current_buckets(tmp_path: Path) -> None:
    engine = engine_at(tmp_path)
    start = 3600.0 * 1000  # on an hour boundary
    for i, value in enumerate([1.0, 2.0, 3.0, 6.0]):
        ts.store(engine, start + 60 * i, {"x": {"{}": value}})
    assert [v for _, v in rows(engine, 0)] == [1.0, 2.0, 3.0, 6.0]
    assert rows(engine, 600) == [(start, 3.0)]  # one 10-minute bucket, recomputed each time
    assert rows(engine, 3600) == [(start, 3.0)]
    ts.store(engine, start + 600, {"x": {"{}": 10.0}})  # the next 10-minute bucket
    assert rows(engine, 600) == [(start, 3.0), (start + 600, 10.0)]
    assert rows(engine, 3600) == [(start, 4.4)]


def test_store_drops_what_each_level_no_longer_keeps(tmp_path: Path) -> None:
    engine = engine_at(tmp_path)
    old = 3600.0 * 1000
    ts.store(engine, old, {"x": {"{}": 1.0}})
    ts.store(engine, old + 2 * DAY, {"x": {"{}": 2.0}})
    assert rows(engine, 0) == [(old + 2 * DAY, 2.0)]  # raw: a day
    assert len(rows(engine, 600)) == 2  # 10-minute means: 30 days
    ts.store(engine, old + 31 * DAY, {"x": {"{}": 3.0}})
    assert [t for t, _ in rows(engine, 600)] == [old + 2 * DAY, old + 31 * DAY]  # 31 days: gone
    assert len(rows(engine, 3600)) == 3  # hourly: a year


def test_query_groups_by_labels_and_bounds_the_points(tmp_path: Path) -> None:
    engine = engine_at(tmp_path)
    now = 3600.0 * 1000
    for i in range(30):
        ts.store(engine, now - 60 * (30 - i), {"x": {'{"s": "a"}': i, '{"s": "b"}': 2 * i}})
    answer = ts.query(engine, "x", now - 3600, 0, now)
    assert answer["resolution"] == 0
    assert [s["labels"] for s in answer["series"]] == [{"s": "a"}, {"s": "b"}]
    assert len(answer["series"][0]["points"]) == 30
    assert answer["series"][1]["points"][-1][1] == 58.0
    coarse = ts.query(engine, "x", now - 3600, 600, now)
    assert coarse["resolution"] == 600
    assert len(coarse["series"][0]["points"]) <= 4
    assert ts.query(engine, "y", now - 3600, 0, now)["series"] == []


def test_a_count_that_falls_to_nothing_is_zero_not_a_gap() -> None:
    registry, pilots, *_ = registry_with_numbers()
    spec = ts.SeriesSpec("glidewms_pool_pilots", ("state",))
    memory: dict[object, object] = {}
    pilots.labels("active", "A").set(2)
    assert ts.collect(registry, [spec], memory)[spec.name] == {'{"state": "active"}': 2.0}
    pilots.remove("active", "A")  # the collector has no row for it any more
    assert ts.collect(registry, [spec], memory)[spec.name] == {'{"state": "active"}': 0.0}
    assert ts.collect(registry, [spec], {})[spec.name] == {}  # never seen: nothing
