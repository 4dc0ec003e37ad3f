"""Which parts of a bulk action's constraint become SQL (pool/bulk.py
`sql_filter`): only top-level conjuncts that compare ClusterId, ProcId or
JobStatus with integer constants; all else stays a ClassAd evaluation."""

from __future__ import annotations

import pytest
from sqlalchemy.dialects import sqlite

from glidewms.pool.bulk import sql_filter


@pytest.mark.parametrize(
    ("constraint", "sql", "rest"),
    [
        ("", None, False),
        ("   ", None, False),
        ("true", "1 = 1", False),
        ("ClusterId == 7", "jobs.cluster_id = 7", False),
        ("MY.clusterid >= 7 && ProcId < 3", "jobs.cluster_id >= 7 AND jobs.proc_id < 3", False),
        ("7 <= ClusterId", "jobs.cluster_id >= 7", False),
        ("ClusterId =?= 7 && ProcId isnt 2", "jobs.cluster_id = 7 AND jobs.proc_id != 2", False),
        ("JobStatus == 5", "jobs.state IN ('held')", False),
        ("JobStatus > 9", "0 = 1", False),
        ("ProcId == -1", "jobs.proc_id = -1", False),
        ("(ClusterId == 1 || ClusterId == 2)", "jobs.cluster_id = 1 OR jobs.cluster_id = 2", False),
        ("!(ProcId > 3)", "jobs.proc_id <= 3", False),
        ('ClusterId == 1 && Owner == "a"', "jobs.cluster_id = 1", True),
        ('Owner == "a" && ClusterId == 1', "jobs.cluster_id = 1", True),
        ('ClusterId == 1 || Owner == "a"', None, True),  # || at the top: not split
        ("ClusterId == 1 ? true : false", None, True),
        ("ClusterId == 1.0", None, True),  # a real: left to ClassAd
        ("ClusterId == 99999999999999999999", None, True),  # beyond what SQL holds
        ('ClusterId == "1"', None, True),
        ("ClusterId == ProcId", None, True),
        ("ProcId % 2 == 0", None, True),
        ('Cmd == "a && ClusterId == 1"', None, True),
        ("ClusterId == 1 &&", "jobs.cluster_id = 1", True),  # a parse error later
        ("ClusterId == 1 && $", "jobs.cluster_id = 1", True),
    ],
)
def test_sql_filter(constraint: str, sql: str | None, rest: bool) -> None:
    clause, needs_ad = sql_filter(constraint)
    got = None
    if clause is not None:
        got = str(clause.compile(dialect=sqlite.dialect(), compile_kwargs={"literal_binds": True}))
    assert (got, needs_ad) == (sql, rest)
