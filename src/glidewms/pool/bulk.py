"""Which queued jobs a bulk action's constraint selects, page by page, without
a ClassAd evaluation per job where it can do without.

A hold or remove "by constraint" over a million jobs used to read each job's
whole row (its JSON columns decoded) and evaluate the constraint on an ad
with the job's columns set on it, one job at a time: most of the time of a
bulk action went there. Two shortcuts, both exact:

- The parts of the constraint that read only ClusterId, ProcId or JobStatus
  (compared with integer constants, joined by &&, || and !) are columns, and
  become SQL (`sql_filter`): `ClusterId == 12` reads only cluster 12, by the
  primary key. Only the top-level conjuncts are split off: `A && B` is true
  exactly when both are, so the rows SQL leaves out by A could not match,
  and the whole constraint is still evaluated on those left when B is not
  SQL too. These three are always defined integers (the pool sets ClusterId
  and ProcId, which no edit may change, and JobStatus comes from the state
  column), so ClassAd's three-valued logic never differs from SQL's here.
- Otherwise the constraint is evaluated once per distinct stored ad text,
  ProcId aside (the jobs of a cluster share it), when it reads neither ProcId
  nor an attribute that comes from the job's columns (listing.DYNAMIC): its
  value is then the same for every such job.

Rows are read with the columns an action needs and those a constraint reads,
never the JSON ones.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import sqlalchemy as sa

from glidewms import classads
from glidewms.classad_limits import AdLimits
from glidewms.pool import listing
from glidewms.pool.lifecycle import JOB_STATUS, TERMINAL_JOBS
from glidewms.pool.schema import jobs

# What an action needs of a job (besides its key) to move it and the memory.
ACT_COLUMNS = (
    jobs.c.cluster_id,
    jobs.c.proc_id,
    jobs.c.owner,
    jobs.c.submitter,
    jobs.c.state,
    jobs.c.autocluster_id,
    jobs.c.prio,
    jobs.c.q_date,
    jobs.c.cpus,
)
KEY_COLUMNS = (jobs.c.cluster_id, jobs.c.proc_id)


class Key(NamedTuple):
    cluster_id: int
    proc_id: int


# The ad and what listing.AdCache sets on it from the job's columns (jobs.dynamic).
AD_COLUMNS = (
    jobs.c.ad,
    jobs.c.state,
    jobs.c.num_starts,
    jobs.c.num_restarts,
    jobs.c.updated_at,
    jobs.c.completions,
    jobs.c.num_checkpoints,
    jobs.c.exit_code,
    jobs.c.pilot_id,
    jobs.c.hold_reason,
    jobs.c.hold_code,
    jobs.c.start_date,
    jobs.c.completion_date,
)
# names whose value may differ between jobs of one stored ad text
PER_JOB = frozenset(n.lower() for n in (*listing.DYNAMIC, "NumCkpts", "ProcId"))
_PROC = re.compile(r"(?:^\[ |; )ProcId = (-?\d+)(?:;| \])")
MAX_CACHED = 10_000  # distinct stored texts whose verdict is kept

# -- constraint -> SQL ------------------------------------------------------

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
      | (?P<num>\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)
      | (?P<name>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)
      | (?P<op>=\?=|=!=|==|!=|<=|>=|&&|\|\||[<>!()?:\-+*/%,\[\]{};])
      | (?P<other>\S)
    )""",
    re.VERBOSE,
)
_COMPARE = {"==", "!=", "<", "<=", ">", ">=", "=?=", "=!=", "is", "isnt"}
_FLIP = {"<": ">", "<=": ">=", ">": "<", ">=": "<="}
_COLUMNS = {"clusterid": jobs.c.cluster_id, "procid": jobs.c.proc_id}


def _tokens(text: str) -> list[tuple[str, str]] | None:
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        if m is None or m.lastgroup is None:
            return None
        kind = m.lastgroup
        value = m.group(kind)
        if kind == "name" and value.lower() in ("is", "isnt"):
            kind = "op"
            value = value.lower()
        out.append((kind, value))
        pos = m.end()
    return out


def _conjuncts(tokens: list[tuple[str, str]]) -> list[list[tuple[str, str]]] | None:
    """The top-level && terms, or None when the top level is not a chain of
    && (an || or ?: outside every parenthesis binds looser)."""
    depth = 0
    terms: list[list[tuple[str, str]]] = []
    current: list[tuple[str, str]] = []
    for tok in tokens:
        if tok[1] in ("(", "[", "{"):
            depth += 1
        elif tok[1] in (")", "]", "}"):
            depth -= 1
        if depth == 0 and tok[0] == "op" and tok[1] in ("||", "?", ":"):
            return None
        if depth == 0 and tok == ("op", "&&"):
            terms.append(current)
            current = []
        else:
            current.append(tok)
    terms.append(current)
    return terms


class _Parser:
    """or := and (|| and)*; and := unary (&& unary)*; unary := ! unary |
    ( or ) | true | false | attr op int | int op attr. Anything else: None."""

    def __init__(self, tokens: list[tuple[str, str]]) -> None:
        self.t = tokens
        self.i = 0

    def peek(self) -> tuple[str, str] | None:
        return self.t[self.i] if self.i < len(self.t) else None

    def take(self) -> tuple[str, str]:
        tok = self.t[self.i]
        self.i += 1
        return tok

    def whole(self) -> Any:
        clause = self.disjunction()
        return clause if clause is not None and self.i == len(self.t) else None

    def disjunction(self) -> Any:
        parts = [self.conjunction()]
        while self.peek() == ("op", "||"):
            self.take()
            parts.append(self.conjunction())
        return None if any(p is None for p in parts) else sa.or_(*parts)

    def conjunction(self) -> Any:
        parts = [self.unary()]
        while self.peek() == ("op", "&&"):
            self.take()
            parts.append(self.unary())
        return None if any(p is None for p in parts) else sa.and_(*parts)

    def unary(self) -> Any:
        tok = self.peek()
        if tok is None:
            return None
        if tok == ("op", "!"):
            self.take()
            inner = self.unary()
            return None if inner is None else sa.not_(inner)
        if tok == ("op", "("):
            self.take()
            inner = self.disjunction()
            if inner is None or self.peek() != ("op", ")"):
                return None
            self.take()
            return inner
        if tok[0] == "name" and tok[1].lower() in ("true", "false"):
            self.take()
            return sa.true() if tok[1].lower() == "true" else sa.false()
        return self.comparison()

    def operand(self) -> tuple[str, Any] | None:
        tok = self.peek()
        if tok is None:
            return None
        if tok == ("op", "-"):
            self.take()
            num = self.peek()
            if num is None or num[0] != "num" or not num[1].isdigit() or len(num[1]) > 15:
                return None
            self.take()
            return ("int", -int(num[1]))
        if tok[0] == "num":
            self.take()
            return ("int", int(tok[1])) if tok[1].isdigit() and len(tok[1]) <= 15 else None
        if tok[0] == "name":
            name = tok[1].lower()
            name = name[3:] if name.startswith("my.") else name
            if name in _COLUMNS or name == "jobstatus":
                self.take()
                return ("attr", name)
        return None

    def comparison(self) -> Any:
        left = self.operand()
        op = self.peek()
        if left is None or op is None or op[0] != "op" or op[1] not in _COMPARE:
            return None
        self.take()
        right = self.operand()
        if right is None or left[0] == right[0]:
            return None
        name, value, how = left[1], right[1], op[1]
        if left[0] == "int":
            name, value, how = right[1], left[1], _FLIP.get(how, how)
        how = {"=?=": "==", "is": "==", "=!=": "!=", "isnt": "!="}.get(how, how)
        if name == "jobstatus":
            states = [s for s, n in JOB_STATUS.items() if _holds(n, how, value)]
            return jobs.c.state.in_(states) if states else sa.false()
        column = _COLUMNS[name]
        return {
            "==": column == value,
            "!=": column != value,
            "<": column < value,
            "<=": column <= value,
            ">": column > value,
            ">=": column >= value,
        }[how]


def _holds(a: int, how: str, b: int) -> bool:
    return {
        "==": a == b,
        "!=": a != b,
        "<": a < b,
        "<=": a <= b,
        ">": a > b,
        ">=": a >= b,
    }[how]


def sql_filter(text: str | None) -> tuple[Any | None, bool]:
    """(SQL condition for the top-level conjuncts of `text` that are column
    comparisons, or None; whether the rest must still be evaluated as a
    ClassAd). An empty constraint selects everything."""
    if not text or not text.strip():
        return None, False
    tokens = _tokens(text)
    terms = _conjuncts(tokens) if tokens else None
    if not terms:
        return None, True
    clauses, rest = [], False
    for term in terms:
        clause = _Parser(term).whole() if term else None
        if clause is None:
            rest = True
        else:
            clauses.append(clause)
    return (sa.and_(*clauses) if clauses else None), rest


# -- selection --------------------------------------------------------------


class Selection:
    """The queued jobs of `owner` (None: everyone's, an admin) that match
    `constraint`, read page by page in job-id order, each page in its own
    short read (no store lock): at most `size` matching jobs per page, and
    at most `scan` rows read for one (a constraint that SQL cannot narrow
    and that matches few jobs still yields, with fewer jobs, so the caller
    regains control regularly)."""

    def __init__(
        self,
        engine: Any,
        owner: str | None,
        constraint: str | None,
        limits: AdLimits,
        columns: Sequence[Any] = ACT_COLUMNS,
    ) -> None:
        self.engine = engine
        where, self.needs_ad = sql_filter(constraint)
        self.expr = classads.parse_expr(constraint, "constraint", limits) if constraint else None
        if self.expr is None:
            self.needs_ad = False
        wanted = list(columns)
        self.keys_only = not self.needs_ad and [c.key for c in wanted] == ["cluster_id", "proc_id"]
        if self.needs_ad:
            wanted += [c for c in AD_COLUMNS if c not in wanted]
        query = sa.select(*wanted).where(jobs.c.state.notin_(TERMINAL_JOBS))
        if owner is not None:
            # COALESCE (owner is NOT NULL: same meaning) keeps SQLite on the
            # primary key: by the owner index it would sort all of the owner's
            # jobs for every page
            query = query.where(sa.func.coalesce(jobs.c.owner, "") == owner)
        if where is not None:
            query = query.where(where)
        self.query = query.order_by(jobs.c.cluster_id, jobs.c.proc_id)
        self.ads = listing.AdCache()
        self.verdicts: dict[str, bool | None] = {}
        self.evaluated = 0  # ClassAd evaluations made (tests read it)

    def pages(self, size: int, scan: int | None = None) -> Iterator[list[Any]]:
        after = (-1, -1)
        limit = max(size, scan or size) if self.needs_ad else size
        while True:
            # The rest of the cluster the last page ended in, then the next
            # clusters: each a seek on the primary key. A row value
            # `(cluster_id, proc_id) > after` beside a ClusterId range from
            # the constraint made SQLite seek by the range and skip every
            # row before `after`, each page (quadratic over a million jobs).
            cluster_id, proc_id = after
            with self.engine.connect() as conn:
                rows = self._read(
                    conn,
                    self.query.where(jobs.c.cluster_id == cluster_id, jobs.c.proc_id > proc_id),
                    limit,
                )
                if len(rows) < limit:
                    rows += self._read(
                        conn, self.query.where(jobs.c.cluster_id > cluster_id), limit - len(rows)
                    )
            if not rows:
                return
            page: list[Any] = []
            for row in rows:
                if not self.needs_ad or self.matches(row):
                    page.append(row)
                    if len(page) == size:
                        break
            after = (row.cluster_id, row.proc_id)
            yield page

    def _read(self, conn: Any, query: Any, limit: int) -> list[Any]:
        if self.keys_only:
            return self._keys(conn, query.limit(limit))
        return list(conn.execute(query.limit(limit)).all())

    def _keys(self, conn: Any, query: Any) -> list[Key]:
        """The page's job keys as one row per cluster (its ids joined by
        commas), not one row per job: SQLite lets go of the GIL for every
        row it steps, and under a busy interpreter each time back can cost
        up to the switch interval (pool/actions.py `_apply_batch`)."""
        inner = query.subquery()
        if conn.dialect.name == "postgresql":
            joined = sa.func.string_agg(sa.cast(inner.c.proc_id, sa.Text), ",")
        else:
            joined = sa.func.group_concat(inner.c.proc_id, ",")
        keys = [
            Key(cluster_id, int(p))
            for cluster_id, procs in conn.execute(
                sa.select(inner.c.cluster_id, joined).group_by(inner.c.cluster_id)
            )
            for p in procs.split(",")
        ]
        keys.sort()
        return keys

    def matches(self, row: Any) -> bool:
        """The constraint on the job's full ad (listing.AdCache), once per
        stored text when its value cannot differ between those jobs."""
        found = _PROC.search(row.ad)
        key = row.ad if found is None else row.ad[: found.start(1)] + row.ad[found.end(1) :]
        verdict = self.verdicts.get(key)
        if verdict is not None:
            return verdict
        if key not in self.verdicts:
            if len(self.verdicts) >= MAX_CACHED:
                self.verdicts.clear()
            ad = self.ads.full_ad(row)
            self.evaluated += 1
            result = ad is not None and classads.constraint_matches(self.expr, ad)
            shared = ad is not None and self._same_for_all(ad, row.ad)
            self.verdicts[key] = result if shared else None
            return result
        ad = self.ads.full_ad(row)
        self.evaluated += 1
        return ad is not None and classads.constraint_matches(self.expr, ad)

    def _same_for_all(self, ad: Any, text: str) -> bool:
        if listing._mentions_any(text):
            return False  # the stored ad sets a column's attribute: merged per job
        names: set[str] = set()
        for refs in (classads.internal_refs(ad, self.expr), classads.external_refs(ad, self.expr)):
            if refs is None:
                return False
            names |= refs
        for name in names:
            low = name.lower()
            low = low[3:] if low.startswith("my.") else low
            if "." in low or low in PER_JOB:
                return False
        return True
