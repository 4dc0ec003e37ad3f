"""Extra `glidewms` commands of the pool: `qedit`, `userprio` and `limits`."""

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
) -> None:
    """Show fair share: effective priority (lower is better), usage, factors."""
    try:
        with client(pool, token_file) as c:
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


def register(app: typer.Typer, service: typer.Typer) -> None:
    """Add top-level commands to `app` and subcommands to `glidewms pool` (`service`)."""
    app.command()(qedit)
    app.command()(userprio)
    app.command()(limits)
