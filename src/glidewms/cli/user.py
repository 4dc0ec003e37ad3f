"""The user commands: submit, q, rm, hold, release, history, fetch."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from glidewms.client import ClientError, ClientSettings, PoolClient
from glidewms.submit import SubmitError, dryrun, load_submit

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

PoolOption = Annotated[Optional[str], typer.Option(  # noqa: UP045
    "--pool", envvar="GLIDEWMS_POOL_URL", help="pool URL (default: from `glidewms up`)")]
TokenOption = Annotated[Optional[Path], typer.Option(  # noqa: UP045
    "--token-file", envvar="GLIDEWMS_TOKEN_FILE", help="file holding your token")]
ConstraintOption = Annotated[Optional[str], typer.Option(  # noqa: UP045
    "--constraint", help='ClassAd expression, e.g. \'Owner == "alice" && JobStatus == 1\'')]


def client(pool: str | None, token_file: Path | None) -> PoolClient:
    return PoolClient(ClientSettings.discover(pool, token_file))


def fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[red]error:[/red] {message}")
    return typer.Exit(code)


def submit(
    file: Annotated[Path, typer.Argument(help="HTCondor-style submit description")],
    pool: PoolOption = None, token_file: TokenOption = None,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="print the job ads that would be queued; contact no pool")] = False,
) -> None:
    """Queue the jobs of a submit description (nothing is queued if it has an error)."""
    try:
        description = load_submit(file)
    except SubmitError as exc:
        raise fail(str(exc), 2) from None
    for warning in description.warnings:
        typer.echo(f"warning: {warning}", err=True)
    if dry_run:  # plain echo: ads must not be wrapped or styled
        typer.echo(dryrun.ads_text(description), nl=False)
        typer.echo(dryrun.summary(description), err=True)
        return
    try:
        with client(pool, token_file) as c:
            result = c.submit(description)
    except ClientError as exc:
        raise fail(str(exc)) from None
    n = len(result["job_ids"])
    out.print(f"{n} job(s) submitted to cluster {result['cluster_id']}.")


def _when(ts: float | None) -> str:
    return time.strftime("%m/%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def _table(jobs: list[dict[str, Any]], history: bool) -> Table:
    table = Table(box=None, header_style="bold")
    for col in ("ID", "OWNER", "SUBMITTED", "STATE", "RUNS", "EXIT" if history else "PILOT",
                "CMD"):
        table.add_column(col)
    for j in jobs:
        cmd = " ".join([Path(j["cmd"] or "?").name, *j.get("args", [])])
        last = str(j["exit_code"]) if history else (j["pilot_id"] or "")
        if j["state"] == "held":
            last = f"held: {j['hold_reason']}"
        table.add_row(j["job_id"], j["owner"], _when(j["q_date"]), j["state"],
                      str(j["num_starts"]), last if j["exit_code"] is not None or not history
                      else "-", cmd[:60])
    return table


def _show(jobs: list[dict[str, Any]], long: bool, history: bool, events: Any = None) -> None:
    if long:
        for j in jobs:
            out.print(j.get("ad_long", j["ad"]))
            if events is not None:
                out.print("\n[bold]events[/bold]")
                for e in events(j["job_id"]):
                    out.print(f"  {_when(e['time'])}  {e['type']:<10} {e['detail']}")
            out.print()
        return
    out.print(_table(jobs, history))
    counts: dict[str, int] = {}
    for j in jobs:
        counts[j["state"]] = counts.get(j["state"], 0) + 1
    out.print(f"\n{len(jobs)} jobs; " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))


def _select(c: PoolClient, ids: list[str], constraint: str | None,
            history: bool, long: bool) -> list[dict[str, Any]]:
    clusters = [i for i in ids if "." not in i]
    procs = [i for i in ids if "." in i]
    parts = [f"ClusterId == {int(x)}" for x in clusters if x.isdigit()]
    if len(parts) != len(clusters):
        raise ClientError(f"not a job id: {', '.join(x for x in clusters if not x.isdigit())}")
    parts += [f"(ClusterId == {int(a)} && ProcId == {int(b)})"
              for a, b in (p.split(".", 1) for p in procs)]
    expr = " || ".join(parts)
    if constraint:
        expr = f"({expr}) && ({constraint})" if expr else constraint
    return c.jobs(expr or None, history=history, long=long)


JobIds = Annotated[Optional[list[str]], typer.Argument(help="CLUSTER or CLUSTER.PROC")]  # noqa: UP045
LongOption = Annotated[bool, typer.Option("--long", "-l", help="full ClassAds and events")]


def _listing(ids: list[str] | None, constraint: str | None, long: bool, history: bool,
             pool: str | None, token_file: Path | None) -> None:
    try:
        with client(pool, token_file) as c:
            jobs = _select(c, ids or [], constraint, history, long)
            _show(jobs, long, history, c.events if long else None)
    except ClientError as exc:
        raise fail(str(exc)) from None


def q(ids: JobIds = None, constraint: ConstraintOption = None, long: LongOption = False,
      pool: PoolOption = None, token_file: TokenOption = None) -> None:
    """Show queued jobs (idle, running, held)."""
    _listing(ids, constraint, long, False, pool, token_file)


def history(ids: JobIds = None, constraint: ConstraintOption = None, long: LongOption = False,
            pool: PoolOption = None, token_file: TokenOption = None) -> None:
    """Show finished jobs (completed or removed)."""
    _listing(ids, constraint, long, True, pool, token_file)


def _action(action: str, ids: list[str] | None, constraint: str | None, reason: str,
            pool: str | None, token_file: Path | None) -> None:
    if not ids and not constraint:
        raise fail("name job ids (CLUSTER or CLUSTER.PROC) or give --constraint", 2)
    try:
        with client(pool, token_file) as c:
            jobs = _select(c, ids or [], constraint, False, False)
            if not jobs:
                raise fail("no matching jobs in the queue")
            changed = c.act(action, [j["job_id"] for j in jobs], reason=reason)
    except ClientError as exc:
        raise fail(str(exc)) from None
    past = {"hold": "held", "release": "released", "remove": "removed"}[action]
    out.print(f"{len(changed)} job(s) {past}" + (f": {' '.join(changed)}" if changed else ""))


def rm(ids: JobIds = None, constraint: ConstraintOption = None,
       reason: Annotated[str, typer.Option()] = "", pool: PoolOption = None,
       token_file: TokenOption = None) -> None:
    """Remove jobs from the queue (running ones are stopped)."""
    _action("remove", ids, constraint, reason, pool, token_file)


def hold(ids: JobIds = None, constraint: ConstraintOption = None,
         reason: Annotated[str, typer.Option()] = "", pool: PoolOption = None,
         token_file: TokenOption = None) -> None:
    """Hold jobs: they stay in the queue but do not run until released."""
    _action("hold", ids, constraint, reason, pool, token_file)


def release(ids: JobIds = None, constraint: ConstraintOption = None,
            pool: PoolOption = None, token_file: TokenOption = None) -> None:
    """Release held jobs back to idle."""
    _action("release", ids, constraint, "", pool, token_file)


def fetch(
    job_id: Annotated[str, typer.Argument(help="CLUSTER.PROC of a completed job")],
    dest: Annotated[Path, typer.Option("--dest", "-d", help="directory for the outputs")]
    = Path("."),
    pool: PoolOption = None, token_file: TokenOption = None,
) -> None:
    """Download a completed job's outputs (stdout, stderr, output files)."""
    try:
        with client(pool, token_file) as c:
            written = c.fetch_outputs(job_id if "." in job_id else f"{job_id}.0", dest)
    except ClientError as exc:
        raise fail(str(exc)) from None
    for path in written:
        out.print(str(path))


def register(app: typer.Typer) -> None:
    for command in (submit, q, rm, hold, release, history, fetch):
        app.command()(command)
