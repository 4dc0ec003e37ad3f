"""`glidewms status` (condor_status), `glidewms analyze` (condor_q
-better-analyze) and `glidewms pool usage`.

Slots come from the pool's GET /slots, which any user may read: what a
pilot offers and how busy it is, never whose jobs run there. A slot's ad for
`-constraint`, `-af` and `-json` is its published ad plus what the pool
knows of it (Name, State, free and total resources, RunningJobs,
DaemonStartTime), in HTCondor's spelling where HTCondor has one.

The clause matching of `analyze` is the pool's (GET /jobs/{id}/analyze):
it holds the slot ads; this command adds what holds a matching job back
(concurrency limits, fair share) from the pool's other reports.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table
from rich.text import Text

from glidewms.cli.literal import cell, literal, visible
from glidewms.cli.user import (
    AfOption,
    ConstraintOption,
    JsonOption,
    PoolOption,
    TokenOption,
    client,
    fail,
    job_ids,
    out,
    print_ads,
)
from glidewms.client import ClientError


def slot_ad(slot: dict[str, Any]) -> Any:
    """The slot's ClassAd as `-constraint` and `-af` read it."""
    from glidewms import classads

    try:
        ad = classads.ad_from_dict(slot.get("ad") or {}, classads.CEILING)
    except classads.ClassAdError:
        ad = classads.ClassAd()
    total, free = slot["total"], slot["free"]
    extra = {
        "Name": slot["pilot_id"],
        "State": slot["state"],
        "Cpus": free["cpus"],
        "Memory": free["memory"],
        "Disk": free["disk"],
        "GPUs": free["gpus"],
        "TotalCpus": total["cpus"],
        "TotalMemory": total["memory"],
        "TotalDisk": total["disk"],
        "TotalGPUs": total["gpus"],
        "RunningJobs": slot["jobs"],
        "DaemonStartTime": int(slot["registered_at"]),
    }
    for name, value in extra.items():
        ad[name] = value
    for name, value in (("GLIDEIN_Site", slot["site"]), ("GLIDEIN_Entry_Name", slot["entry"])):
        if value is not None and name not in ad:
            ad[name] = value
    return ad


def _age(seconds: float) -> str:
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    return f"{days}+{rest // 3600:02d}:{rest % 3600 // 60:02d}:{rest % 60:02d}"


def _slot_table(slots: list[dict[str, Any]]) -> Table:
    table = Table(box=None, header_style="bold")
    for col in ("PILOT", "SITE", "ENTRY", "STATE", "CPUS", "MEMORY", "GPUS", "JOBS", "AGE"):
        table.add_column(
            col, justify="right" if col in ("CPUS", "MEMORY", "GPUS", "JOBS") else "left"
        )
    for s in slots:
        f, t = s["free"], s["total"]
        table.add_row(
            cell(s["pilot_id"]),
            cell(s["site"] or "-"),
            cell(s["entry"] or "-"),
            cell(s["state"]),
            f"{f['cpus']}/{t['cpus']}",
            f"{f['memory']}/{t['memory']}",
            f"{f['gpus']}/{t['gpus']}",
            str(s["jobs"]),
            _age(s["age"]),
        )
    return table


def totals_table(slots: list[dict[str, Any]]) -> Table:
    """condor_status -total: per site and entry, and overall (free/total)."""
    table = Table(box=None, header_style="bold")
    for col in ("SITE", "ENTRY", "PILOTS", "CPUS", "MEMORY", "GPUS", "JOBS"):
        table.add_column(col, justify="left" if col in ("SITE", "ENTRY") else "right")
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for s in slots:
        groups.setdefault((s["site"] or "-", s["entry"] or "-"), []).append(s)

    def row(site: str, entry: str, members: list[dict[str, Any]]) -> list[Any]:
        def both(key: str) -> str:
            free = sum(m["free"][key] for m in members)
            return f"{free}/{sum(m['total'][key] for m in members)}"

        return [
            cell(site),
            cell(entry),
            str(len(members)),
            both("cpus"),
            both("memory"),
            both("gpus"),
            str(sum(m["jobs"] for m in members)),
        ]

    for (site, entry), members in sorted(groups.items()):
        table.add_row(*row(site, entry, members))
    table.add_row(*row("Total", "", slots), style="bold")
    return table


def status(
    constraint: ConstraintOption = None,
    af: AfOption = None,
    as_json: JsonOption = False,
    total: Annotated[
        bool, typer.Option("-total", "--total", help="totals per site and entry only")
    ] = False,
    attrs: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Argument(help="with -af: more attribute names", show_default=False),
    ] = None,
    pool: PoolOption = None,
    token_file: TokenOption = None,
) -> None:
    """Show the pool's slots (pilots): site, entry, free/total cpus, memory
    and GPUs, state, running jobs, age (condor_status)."""
    from glidewms import classads

    names = [n for value in [*(af or []), *(attrs or [])] for n in value.replace(",", " ").split()]
    if attrs and not af:
        raise fail(f"unexpected arguments: {' '.join(attrs)} (attribute names go with -af)", 2)
    try:
        expr = classads.parse_expr(constraint, "constraint") if constraint else None
    except classads.ClassAdError as exc:
        raise fail(str(exc), 2) from None
    try:
        with client(pool, token_file) as c:
            slots = c.slots()
    except ClientError as exc:
        raise fail(str(exc)) from None
    if expr is not None or names or as_json:
        ads = [slot_ad(s) for s in slots]
        if expr is not None:
            keep = [classads.constraint_matches(expr, ad) for ad in ads]
            slots = [s for s, k in zip(slots, keep, strict=True) if k]
            ads = [a for a, k in zip(ads, keep, strict=True) if k]
        if names or as_json:
            print_ads(ads, names, as_json)
            return
    if total:
        out.print(totals_table(slots))
        return
    out.print(_slot_table(slots))
    busy = sum(1 for s in slots if s["jobs"])
    out.print(Text(f"\n{len(slots)} slots; {busy} running jobs, {len(slots) - busy} idle"))


def analyze(
    job: Annotated[str, typer.Argument(help="CLUSTER.PROC")],
    slot: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--slot", help="a pilot id: which of the job's clauses this slot fails"),
    ] = None,
    as_json: JsonOption = False,
    entries: Annotated[
        bool,
        typer.Option(
            "--entries",
            help="also which factory entries could run it (the frontend's view; needs the "
            "factory's URL and a frontend or admin token: --factory, --factory-token-file)",
        ),
    ] = False,
    factory: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--factory", envvar="GLIDEWMS_FACTORY_URL", help="factory URL"),
    ] = None,
    factory_token_file: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            "--factory-token-file",
            envvar="GLIDEWMS_FACTORY_TOKEN_FILE",
            help="a frontend or admin token for the factory",
        ),
    ] = None,
    pool: PoolOption = None,
    token_file: TokenOption = None,
) -> None:
    """Why a job is idle: how many slots each clause of its Requirements
    leaves, and whether concurrency limits or fair share hold it back
    (condor_q -better-analyze)."""
    ((cluster, proc),) = job_ids([job])
    jid = f"{cluster}.{proc or 0}"
    try:
        with client(pool, token_file) as c:
            result = c.analyze(jid, slot)
            if slot is None:
                ad_text = c.job(jid)["ad"]
                result["limits"] = _limits_line(c, jid)
                result["fair_share"] = _fair_share(c, c.job(jid)["owner"])
    except ClientError as exc:
        raise fail(str(exc)) from None
    if entries and slot is None:
        result["factory_entries"] = _entries(ad_text, factory, factory_token_file)
    if as_json:
        import json

        typer.echo(json.dumps(result, indent=2, sort_keys=True))
        return
    for line in analysis_lines(result):
        out.print(literal(line, lines=False))
    if result.get("factory_entries"):
        from glidewms.cli.analyze_entries import entries_lines

        for line in entries_lines(result["factory_entries"]):
            out.print(literal(visible(line), lines=False))


def _entries(ad_text: str, url: str | None, token_file: Path | None) -> dict[str, Any]:
    from glidewms import classads
    from glidewms.cli.analyze_entries import entries_report
    from glidewms.factory.client import FactoryClient, FactoryClientError

    try:
        ads = FactoryClient(url, token_file).call("GET", "/entries")
    except FactoryClientError as exc:
        raise fail(f"--entries: {exc}") from None
    try:
        job = classads.parse_ad(ad_text, classads.CEILING)
    except classads.ClassAdError as exc:
        raise fail(f"the job's ad cannot be read: {exc}") from None
    return entries_report(job, ads)


def _limits_line(c: Any, jid: str) -> str:
    from glidewms.cli.pool_cmds import _why

    return _why(c.job(jid), c.concurrency()["limits"])


def _fair_share(c: Any, owner: str) -> dict[str, Any] | None:
    """The owner's standing among submitters with idle jobs (lower is better)."""
    data = c.userprio()
    rows = [s for s in data["submitters"] if s.get("owner") == owner]
    if not rows:
        return None
    me = min(rows, key=lambda s: s["effective_priority"])
    ahead = [
        s
        for s in data["submitters"]
        if s not in rows and s["idle_jobs"] and s["effective_priority"] < me["effective_priority"]
    ]
    return {
        "submitter": me["submitter"],
        "effective_priority": me["effective_priority"],
        "submitters_ahead": len(ahead),
    }


def analysis_lines(r: dict[str, Any]) -> list[str]:
    """The analysis as text: one line per clause, then the verdict."""
    lines = [f"Job {r['job_id']} ({r['state']})"]
    if "pilot_id" in r:
        lines.append(f"against slot {r['pilot_id']}:")
        for c in r["clauses"]:
            lines.append(f"  {'ok  ' if c['matches'] else 'FAIL'}  {visible(c['clause'])}")
        lines.append(f"  slot's Start {'accepts' if r['slot_accepts_job'] else 'rejects'} the job")
        if r["failing"] or not r["slot_accepts_job"]:
            lines.append("this slot cannot run the job")
        else:
            lines.append("this slot can run the job (when its resources are free)")
        return lines
    n = r["slots"]
    lines.append(f"{n} slot(s) in the pool; the job's Requirements, clause by clause:")
    width = max([len(str(n)), 5])
    for c in r["clauses"]:
        lines.append(f"  {c['matching']:>{width}}  {visible(c['clause'])}")
    if r.get("more_clauses"):
        lines.append(f"  ({r['more_clauses']} more clauses not shown)")
    lines.append(f"  {r['matching_requirements']:>{width}}  match all of its Requirements")
    lines.append(f"  {r['accepting_job']:>{width}}  accept the job (their Start)")
    lines.append(f"  {r['matching_now']:>{width}}  could run it now (free resources)")
    if r.get("slots_not_analyzed"):
        lines.append(f"  ({r['slots_not_analyzed']} more slots not analyzed)")
    none = [c["clause"] for c in r["clauses"] if c["matching"] == 0]
    if none:
        lines.append(f"no slot satisfies: {visible(none[0])}")
    elif r["clauses"] and not r["matching_requirements"]:
        lines.append("each clause matches some slot, but no slot matches all of them")
    if r.get("limits"):
        lines.append(f"concurrency limits: {r['limits']}")
    share = r.get("fair_share")
    if share:
        lines.append(
            f"fair share: {share['submitter']} has effective priority "
            f"{share['effective_priority'] / 3600:.2f}; {share['submitters_ahead']} submitter(s) "
            "with idle jobs come first"
        )
    return lines


def usage(pool: PoolOption = None, token_file: TokenOption = None) -> None:
    """The pool's rows, sandbox files and bytes, and retention periods (admins)."""
    try:
        with client(pool, token_file) as c:
            data = c.usage()
    except ClientError as exc:
        raise fail(str(exc)) from None
    table = Table(box=None, header_style="bold")
    table.add_column("WHAT")
    table.add_column("HOW MANY", justify="right")
    for name, n in data["rows"].items():
        table.add_row(name, str(n))
    more = "+" if data["sandbox_truncated"] else ""
    table.add_row("sandbox files", f"{data['sandbox_files']}{more}")
    table.add_row("sandbox bytes", f"{data['sandbox_bytes']}{more}")
    if data.get("database_bytes") is not None:
        table.add_row("database bytes", str(data["database_bytes"]))
    out.print(table)
    days = data["retention_days"]
    out.print(
        f"retention: history {days['history']:g} d, events {days['events']:g} d, "
        f"unreferenced sandbox files {days['sandbox']:g} d"
    )


def register(app: typer.Typer, pool_service: typer.Typer) -> None:
    app.command()(status)
    app.command()(analyze)
    pool_service.command("usage")(usage)
