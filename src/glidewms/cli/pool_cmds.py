"""Extra `glidewms` commands of the pool: `qedit`, `userprio` and `limits`;
and the operator's `glidewms pool drain`, `undrain` and `drains`."""

from __future__ import annotations

import re
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from glidewms.cli.literal import cell, literal
from glidewms.cli.user import (
    ConstraintOption,
    PoolOption,
    TokenOption,
    _select,
    client,
    err,
    fail,
    job_ids,
    out,
)
from glidewms.client import ClientError


def qedit(
    job: Annotated[str, typer.Argument(help="CLUSTER[.PROC]; `-`: all of --constraint")],
    attribute: Annotated[str, typer.Argument(help="ClassAd attribute, e.g. RequestMemory")],
    value: Annotated[str, typer.Argument(help="ClassAd expression, e.g. 2048 or '\"text\"'")],
    constraint: ConstraintOption = None,
    pool: PoolOption = None,
    token_file: TokenOption = None,
) -> None:
    """Edit one attribute of idle or held jobs (strings need their quotes: '"x"').

    The pool re-derives what depends on the attribute (autocluster, JobPrio,
    accounting group) and records an `edited` event. Attributes the pool sets
    (Owner, ClusterId, JobStatus, ...) are refused.
    """
    ids = job_ids([job]) if job != "-" else []
    try:
        with client(pool, token_file) as c:
            jobs = _select(c, ids, constraint, False, False)
            if not jobs:
                raise fail("no matching jobs in the queue")
            result = c.edit(attribute, value, [j["job_id"] for j in jobs])
    except ClientError as exc:
        raise fail(str(exc)) from None
    for jid, why in sorted(result["skipped"].items()):
        err.print(literal(f"{jid}: not edited: {why}", lines=False))
    changed = result["changed"]
    out.print(
        literal(
            f"{len(changed)} job(s) edited: {attribute} = {value}"
            + (f" ({' '.join(changed)})" if changed else ""),
            lines=False,
        )
    )
    if not changed:
        raise typer.Exit(1)


def userprio(
    pool: PoolOption = None,
    token_file: TokenOption = None,
    all_: Annotated[bool, typer.Option("--all", "-a", help="also submitters with no jobs")] = False,
    set_accum: Annotated[
        Optional[tuple[str, float]],  # noqa: UP045 (typer needs Optional on 3.10)
        typer.Option(
            "--set-accum",
            metavar="SUBMITTER CORE_HOURS",
            help="admin: set a submitter's accumulated usage (core-hours; it decays "
            "from now on), like HTCondor's userprio -setaccum",
        ),
    ] = None,
) -> None:
    """Show fair share: effective priority (lower is better), usage, factors."""
    if set_accum is not None and not 0 <= set_accum[1] < 1e11:
        raise fail(f"--set-accum: {set_accum[1]:g} core-hours is not in [0, 1e11)", 2)
    try:
        with client(pool, token_file) as c:
            if set_accum is not None:
                row = c.set_usage(set_accum[0], set_accum[1] * 3600)
                out.print(
                    literal(
                        f"{row['submitter']}: usage {row['usage'] / 3600:.2f} core-h, "
                        f"effective priority {row['effective_priority'] / 3600:.2f}",
                        lines=False,
                    )
                )
                return
            data = c.userprio()
    except ClientError as exc:
        raise fail(str(exc)) from None
    table = Table(box=None, header_style="bold")
    for col in (
        "SUBMITTER",
        "GROUP",
        "EFFECTIVE PRIO",
        "FACTOR",
        "USAGE (core-h)",
        "RUNNING CORES",
        "IDLE JOBS",
    ):
        table.add_column(col, justify="left" if col in ("SUBMITTER", "GROUP") else "right")
    shown = 0
    for s in data["submitters"]:
        if not all_ and not s["running_cores"] and not s["idle_jobs"] and s["usage"] < 1:
            continue
        shown += 1
        table.add_row(
            cell(s["submitter"]),
            cell(s.get("group") or "-"),
            f"{s['effective_priority'] / 3600:.2f}",
            f"{s['factor']:g}",
            f"{s['usage'] / 3600:.2f}",
            str(s["running_cores"]),
            str(s["idle_jobs"]),
        )
    out.print(table)
    out.print(
        f"\n{shown} submitter(s); usage half-life {data['halflife'] / 3600:g} h; "
        "effective priority = factor x usage one half-life ahead at today's cores "
        "(core-hours)"
    )


def limits(
    jobs: Annotated[
        Optional[list[str]],  # noqa: UP045 (typer needs Optional on 3.10)
        typer.Argument(help="CLUSTER.PROC: say which of its limits keeps it idle"),
    ] = None,
    pool: PoolOption = None,
    token_file: TokenOption = None,
) -> None:
    """Show concurrency limits: limit, held by running jobs, idle jobs that
    want each name and how many of them wait because it is used up."""
    try:
        with client(pool, token_file) as c:
            data = c.concurrency()
            if jobs:
                job_ids(jobs)  # a malformed id is a usage error before any call
                for jid in jobs:
                    out.print(literal(_why(c.job(jid), data["limits"]), lines=False))
                return
    except ClientError as exc:
        raise fail(str(exc)) from None
    table = Table(box=None, header_style="bold")
    for col in ("NAME", "LIMIT", "IN USE", "IDLE JOBS", "WAITING FOR IT"):
        table.add_column(col, justify="left" if col == "NAME" else "right")
    for row in data["limits"]:
        limit = row["limit"]
        table.add_row(
            cell(row["name"]),
            "unlimited" if limit is None else f"{limit:g}",
            f"{row['in_use']:g}",
            str(row["idle_jobs"]),
            str(row["blocked_jobs"]),
        )
    out.print(table)
    if not data["limits"]:
        out.print("no concurrency limits configured or named by jobs")


def _why(job: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """One job against the limits: what it holds or wants, and what keeps it idle."""
    from glidewms.pool import concurrency

    text = str(job.get("ad_long") or job.get("ad") or "")
    found = re.search(r'^ConcurrencyLimits = "([^"]*)"$', text, re.MULTILINE)
    head = f"{job['job_id']} ({job['state']})"
    if found is None:
        return f"{head}: names no concurrency limit"
    try:
        wanted = concurrency.parse(found.group(1))
    except concurrency.BadLimits as exc:
        return f"{head}: ConcurrencyLimits cannot be read ({exc}): it never starts"
    by = {r["name"]: r for r in rows}
    parts, short = [], []
    for name in sorted(wanted):
        row = by.get(name, {})
        limit, used = row.get("limit"), float(row.get("in_use") or 0)
        cap = "unlimited" if limit is None else f"{limit:g}"
        parts.append(f"{name}:{wanted[name]:g} ({used:g} of {cap} in use)")
        if job["state"] == "idle" and limit is not None and used + wanted[name] > limit + 1e-9:
            short.append(name)
    tail = f"; waits for {', '.join(short)}" if short else ""
    return f"{head}: {', '.join(parts)}{tail}"


PilotTarget = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(
        "--pilot", help="one pilot, by its pool id (a job's pilot_id, GET /api/v1/pilots)"
    ),
]
EntryTarget = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option("--entry", help="every pilot of this entry (GLIDEIN_Entry_Name), later ones too"),
]
SiteTarget = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option("--site", help="every pilot of this site (GLIDEIN_Site), later ones too"),
]


def _target(pilot: str | None, entry: str | None, site: str | None) -> tuple[str, str]:
    named = [(k, v) for k, v in (("pilot", pilot), ("entry", entry), ("site", site)) if v]
    if len(named) != 1:
        raise fail("name exactly one of --pilot, --entry, --site", 2)
    return named[0]


def drain(
    pilot: PilotTarget = None,
    entry: EntryTarget = None,
    site: SiteTarget = None,
    hard: Annotated[
        bool, typer.Option("--hard", help="vacate running jobs now (they are requeued)")
    ] = False,
    reason: Annotated[str, typer.Option("--reason", help="why (shown by `drains`)")] = "",
    pool: PoolOption = None,
    token_file: TokenOption = None,
) -> None:
    """Admin: drain a pilot, an entry or a site: no new jobs, then the pilots exit.

    Gentle by default (running jobs finish); --hard vacates them now, back to
    idle without counting a failure. An entry or site drain also drains the
    pilots that register there later, until `glidewms pool undrain`.
    """
    kind, name = _target(pilot, entry, site)
    try:
        with client(pool, token_file) as c:
            result = c.drain(kind, name, hard, reason)
    except ClientError as exc:
        raise fail(str(exc)) from None
    how = "hard" if hard else "gentle"
    out.print(
        literal(
            f"{kind} {name}: {how} drain; {len(result['pilots'])} pilot(s) draining, "
            f"{len(result['vacated'])} job(s) vacated",
            lines=False,
        )
    )


def undrain(
    pilot: PilotTarget = None,
    entry: EntryTarget = None,
    site: SiteTarget = None,
    pool: PoolOption = None,
    token_file: TokenOption = None,
) -> None:
    """Admin: lift a drain; its pilots not yet gone take jobs again.

    A pilot another drain still covers (its entry, site or itself) stays drained.
    """
    kind, name = _target(pilot, entry, site)
    try:
        with client(pool, token_file) as c:
            result = c.undrain(kind, name)
    except ClientError as exc:
        raise fail(str(exc)) from None
    out.print(literal(f"{kind} {name}: undrained {len(result['pilots'])} pilot(s)", lines=False))


def drains(pool: PoolOption = None, token_file: TokenOption = None) -> None:
    """Admin: the drains that hold, and how many live pilots each covers."""
    try:
        with client(pool, token_file) as c:
            rows = c.drains()
    except ClientError as exc:
        raise fail(str(exc)) from None
    table = Table(box=None, header_style="bold")
    for col in ("KIND", "NAME", "HOW", "PILOTS", "BY", "REASON"):
        table.add_column(col, justify="right" if col == "PILOTS" else "left")
    for d in rows:
        table.add_row(
            cell(d["kind"]),
            cell(d["name"]),
            "hard" if d["hard"] else "gentle",
            str(len(d["pilots"])),
            cell(d.get("by") or "-"),
            cell(d.get("reason") or "-"),
        )
    out.print(table)
    if not rows:
        out.print("no drains")


def register(app: typer.Typer, service: typer.Typer) -> None:
    """Add top-level commands to `app` and subcommands to `glidewms pool` (`service`)."""
    app.command()(qedit)
    app.command()(userprio)
    app.command()(limits)
    service.command()(drain)
    service.command()(undrain)
    service.command()(drains)
