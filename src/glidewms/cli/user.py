"""The user commands: submit, q, rm, hold, release, history, fetch."""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from glidewms.cli.literal import cell, literal, markup_safe, visible
from glidewms.client import ClientError, ClientSettings, PoolClient

# Piped output is read by programs and `grep`: never wrapped at a width
# (rich would take 80 columns when stdout is not a terminal).
UNWRAPPED = 1 << 16
out = Console(highlight=False, width=None if sys.stdout.isatty() else UNWRAPPED)
err = Console(stderr=True, highlight=False)

PoolOption = Annotated[
    str | None,
    typer.Option(
        "--pool", envvar="GLIDEWMS_POOL_URL", help="pool URL (default: from `glidewms up`)"
    ),
]
TokenOption = Annotated[
    Path | None,
    typer.Option("--token-file", envvar="GLIDEWMS_TOKEN_FILE", help="file holding your token"),
]
ConstraintOption = Annotated[
    str | None,
    typer.Option(
        "--constraint",
        "-constraint",
        help="ClassAd expression, e.g. 'Owner == \"alice\" && JobStatus == 1'",
    ),
]


def client(pool: str | None, token_file: Path | None) -> PoolClient:
    return PoolClient(ClientSettings.discover(pool, token_file))


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print `message` as one error line (not wrapped at the terminal's width, its
    brackets not taken for markup and its control characters shown as escapes: it
    quotes ClassAds and what users wrote) and return the Exit to raise.
    Code 2 is a usage error: nothing was sent to the pool."""
    err.print(f"[red]error:[/red] {markup_safe(message)}", soft_wrap=True)
    return typer.Exit(code)


JobRef = tuple[int, int | None]
"""(cluster, proc); proc None names the whole cluster."""

_JOB_ID = re.compile(r"(\d+)(?:\.(\d+))?", re.ASCII)


def job_ids(texts: Iterable[str]) -> list[JobRef]:
    """CLUSTER or CLUSTER.PROC, checked before the pool is asked anything: a
    typo such as `1.x` is a usage error (exit 2), never a traceback."""
    parsed: list[JobRef] = []
    bad = []
    for text in texts:
        match = _JOB_ID.fullmatch(text)
        if match is None:
            bad.append(text)
        else:
            parsed.append((int(match[1]), None if match[2] is None else int(match[2])))
    if bad:
        raise fail(f"not a job id (CLUSTER or CLUSTER.PROC): {' '.join(bad)}", 2)
    return parsed


def submit(
    file: Annotated[Path, typer.Argument(help="HTCondor-style submit description")],
    pool: PoolOption = None,
    token_file: TokenOption = None,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="print the job ads that would be queued; contact no pool"),
    ] = False,
) -> None:
    """Queue the jobs of a submit description (nothing is queued if it has an error)."""
    # imported here: it loads the HTCondor bindings, which no other command needs
    from glidewms.submit import SubmitError, dryrun, load_submit, stream_submit

    if dry_run:  # plain echo: ads must not be wrapped or styled
        try:
            description = load_submit(file)
        except SubmitError as exc:
            raise fail(str(exc), 2) from None
        for warning in description.warnings:
            typer.echo(f"warning: {visible(warning)}", err=True)
        typer.echo(dryrun.ads_text(description), nl=False)
        typer.echo(dryrun.summary(description), err=True)
        return
    # the jobs are built as they are sent: a million-job cluster is never held whole
    try:
        stream = stream_submit(file)
    except SubmitError as exc:
        raise fail(str(exc), 2) from None
    logs: set[str] = set()

    def jobs() -> Iterator[Any]:
        for job in stream.jobs:
            if "UserLog" in job.attrs:
                logs.add(job.attrs["UserLog"])
            yield job

    try:
        with client(pool, token_file) as c:
            try:
                result = c.submit_jobs(jobs(), stream.source, stream.warnings)
            finally:
                for warning in stream.warnings:
                    typer.echo(f"warning: {visible(warning)}", err=True)
            _start_user_logs(c, logs, int(result["cluster_id"]))
    except SubmitError as exc:
        raise fail(f"{exc} (nothing was queued)", 2) from None
    except ClientError as exc:
        raise fail(str(exc)) from None
    if result.get("late"):
        out.print(
            f"{result['total']} job(s) submitted to cluster {result['cluster_id']} "
            f"({result['materialized']} in the queue now; the others materialise as its "
            "limits allow)."
        )
        return
    n = len(result["job_ids"])
    out.print(f"{n} job(s) submitted to cluster {result['cluster_id']}.")


_CLUSTER_REF = re.compile(r"(?<!\$)\$\(ClusterId\)")


def _start_user_logs(c: PoolClient, texts: set[str], cluster_id: int) -> None:
    """The cluster's `log` files (`texts`: the jobs' UserLog expressions):
    remembered, and their Submit events written."""
    from glidewms import classads
    from glidewms.cli import userlog_cmds

    paths = set()
    for text in texts:
        expr = classads.parse_expr(_CLUSTER_REF.sub(str(cluster_id), text))
        value = classads.evaluate(expr, classads.ClassAd())
        if isinstance(value, str) and value.startswith("/"):
            paths.add(value)
    try:
        userlog_cmds.register(c.url, cluster_id, paths)
    except OSError as exc:
        err.print(f"warning: job event logs will not be written: {exc}", markup=False)
        return
    userlog_cmds.sync_quietly(c, [cluster_id])


def _when(ts: float | None) -> str:
    return time.strftime("%m/%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def _table(jobs: list[dict[str, Any]], history: bool) -> Table:
    """Every cell is user data (arguments, owners, hold reasons): `cell` prints it
    literally, never as markup, its control characters as escapes."""
    table = Table(box=None, header_style="bold")
    for col in ("ID", "OWNER", "SUBMITTED", "STATE", "RUNS", "EXIT" if history else "PILOT", "CMD"):
        table.add_column(col)
    for j in jobs:
        cmd = " ".join([Path(j["cmd"] or "?").name, *j.get("args", [])])
        last = str(j["exit_code"]) if history else (j["pilot_id"] or "")
        if j["state"] == "held":
            last = f"held: {j['hold_reason']}"
        table.add_row(
            cell(j["job_id"]),
            cell(j["owner"]),
            _when(j["q_date"]),
            cell(j["state"]),
            str(j["num_starts"]),
            cell(last if j["exit_code"] is not None or not history else "-"),
            cell(visible(cmd)[:60]),
        )
    return table


def _show(jobs: list[dict[str, Any]], long: bool, history: bool, events: Any = None) -> None:
    if long:
        for j in jobs:
            out.print(literal(j.get("ad_long", j["ad"])))
            if events is not None:
                out.print("\n[bold]events[/bold]")
                for e in events(j["job_id"]):
                    line = f"  {_when(e['time'])}  {e['type']:<10} {e['detail']}"
                    out.print(literal(line, lines=False))
            out.print()
        return
    out.print(_table(jobs, history))
    out.print(Text("\n").append(_totals(jobs)))


def _select(
    c: PoolClient,
    ids: list[JobRef],
    constraint: str | None,
    history: bool,
    long: bool,
    mine: bool = False,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    parts = [
        f"ClusterId == {cluster}"
        if proc is None
        else f"(ClusterId == {cluster} && ProcId == {proc})"
        for cluster, proc in ids
    ]
    expr = " || ".join(parts)
    if constraint:
        expr = f"({expr}) && ({constraint})" if expr else constraint
    return c.jobs(expr or None, history=history, long=long, mine=mine, limit=limit)


JobIds = Annotated[Optional[list[str]], typer.Argument(help="CLUSTER or CLUSTER.PROC")]  # noqa: UP045
LongOption = Annotated[bool, typer.Option("--long", "-l", help="full ClassAds and events")]
AfOption = Annotated[
    Optional[list[str]],  # noqa: UP045
    typer.Option(
        "-af",
        "--autoformat",
        help="print these attributes of each ad, space-separated (`-af A B C`: the names "
        "after it that are not job ids count too)",
    ),
]
JsonOption = Annotated[bool, typer.Option("-json", "--json", help="the ads as a JSON list")]
LimitOption = Annotated[
    Optional[int],  # noqa: UP045
    typer.Option("-limit", "--limit", min=1, help="at most this many jobs"),
]
AllUsersOption = Annotated[
    bool, typer.Option("-allusers", "--allusers", help="everyone's jobs, not only yours")
]
TotalsOption = Annotated[bool, typer.Option("-totals", "--totals", help="only the totals")]


def _split_af(ids: list[str] | None, af: list[str] | None) -> tuple[list[str], list[str]]:
    """`-af A B 1.0`: typer gives `-af` one value, the rest land among the
    job ids; names that are not job ids are attributes."""
    attrs = [name for value in af or [] for name in re.split(r"[\s,]+", value) if name]
    if not attrs:
        return list(ids or []), []
    plain = [t for t in ids or [] if _JOB_ID.fullmatch(t)]
    attrs += [t for t in ids or [] if not _JOB_ID.fullmatch(t)]
    return plain, attrs


def _ad_of(j: dict[str, Any]) -> Any:
    from glidewms import classads

    try:
        return classads.parse_ad(j["ad"], classads.CEILING)
    except classads.ClassAdError:
        return classads.ClassAd()


def ad_json(ad: Any) -> dict[str, Any]:
    """A ClassAd as JSON: literals as values, expressions as their text."""
    from glidewms import classads

    values: dict[str, Any] = {}
    for name in sorted(ad.keys()):
        expr = ad.lookup(name)
        value = classads.eval_attr(ad, name)
        literal_value = isinstance(value, (bool, int, float, str)) and not isinstance(
            value, classads.classad2.Value
        )
        if literal_value and str(expr) == str(_as_expr(value)):
            values[name] = value
        else:
            values[name] = str(expr)
    return values


def _as_expr(value: Any) -> Any:
    from glidewms import classads

    ad = classads.ClassAd()
    ad["V"] = value
    return ad.lookup("V")


def af_line(ad: Any, attrs: list[str]) -> str:
    """One `-af` line: values space-separated, strings unquoted, an absent
    attribute as `undefined` (as condor_q prints it)."""
    from glidewms import classads

    cells = []
    for name in attrs:
        value = classads.eval_attr(ad, name) if name in ad else None
        if value is None or isinstance(value, classads.classad2.Value):
            cells.append("undefined" if value is None else value.name.lower())
        elif isinstance(value, bool):
            cells.append("true" if value else "false")
        else:
            cells.append(visible(str(value)))
    return " ".join(cells)


def print_ads(ads: list[Any], attrs: list[str], as_json: bool) -> None:
    """`-af` lines or `-json`: plain echo, never wrapped nor styled."""
    if as_json:
        typer.echo(json.dumps([ad_json(ad) for ad in ads], indent=2, sort_keys=True))
        return
    for ad in ads:
        typer.echo(af_line(ad, attrs))


def _batches(jobs: list[dict[str, Any]], late: list[dict[str, Any]] | None = None) -> Table:
    """condor_q's default: one row per owner and cluster. A late-materialising
    cluster's TOTAL is its jobs materialised so far / all its jobs, and it
    has a row even while none of its jobs is in the queue."""
    table = Table(box=None, header_style="bold")
    for col in ("OWNER", "BATCH", "SUBMITTED", "RUN", "IDLE", "HOLD", "TOTAL", "JOB_IDS"):
        table.add_column(
            col, justify="right" if col in ("RUN", "IDLE", "HOLD", "TOTAL") else "left"
        )
    factories = {int(f["cluster_id"]): f for f in late or []}
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for j in jobs:
        groups.setdefault((j["owner"], int(j["job_id"].split(".")[0])), []).append(j)
    for cluster, factory in factories.items():
        groups.setdefault((factory["owner"], cluster), [])
    for (owner, cluster), members in sorted(groups.items(), key=lambda g: g[0][1]):
        n = {s: sum(1 for j in members if j["state"] == s) for s in ("running", "idle", "held")}
        procs = [j["job_id"] for j in members]
        ids = (
            ""
            if not procs
            else procs[0]
            if len(procs) == 1
            else f"{procs[0]}-{procs[-1].split('.')[1]}"
        )
        f = factories.get(cluster)
        total = str(len(members)) if f is None else f"{f['materialized']}/{f['total']}"
        table.add_row(
            cell(owner),
            f"ID: {cluster}",
            _when(min(j["q_date"] for j in members)) if members else "-",
            str(n["running"] or "_"),
            str(n["idle"] or "_"),
            str(n["held"] or "_"),
            total,
            ids,
        )
    return table


def _totals(jobs: list[dict[str, Any]]) -> Text:
    counts: dict[str, int] = {}
    for j in jobs:
        counts[j["state"]] = counts.get(j["state"], 0) + 1
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    return Text(f"{len(jobs)} jobs; {visible(summary) if summary else 'none'}")


def _listing(
    ids: list[str] | None,
    constraint: str | None,
    long: bool,
    history: bool,
    pool: str | None,
    token_file: Path | None,
    *,
    af: list[str] | None = None,
    as_json: bool = False,
    limit: int | None = None,
    allusers: bool = False,
    batch: bool = False,
    states: tuple[str, ...] = (),
    totals: bool = False,
) -> None:
    plain, attrs = _split_af(ids, af)
    selected = job_ids(plain)
    if states:
        codes = {"held": 5, "running": 2}
        extra = " || ".join(f"JobStatus == {codes[s]}" for s in states)
        constraint = f"({constraint}) && ({extra})" if constraint else extra
    try:
        with client(pool, token_file) as c:
            # own jobs unless -allusers, or named by id (condor_q shows those)
            mine = not allusers and not selected
            jobs = _select(c, selected, constraint, history, long, mine, limit)
            if attrs or as_json:
                print_ads([_ad_of(j) for j in jobs], attrs, as_json)
            elif totals:
                out.print(_totals(jobs))
            elif batch and not long:
                late = [
                    f
                    for f in c.late_clusters(mine=not allusers)
                    if not selected or any(f["cluster_id"] == cl for cl, _ in selected)
                ]
                out.print(_batches(jobs, late))
                out.print(Text("\n").append(_totals(jobs)))
            else:
                _show(jobs, long, history, c.events if long else None)
            from glidewms.cli import userlog_cmds  # the job event logs (`log = file`)

            userlog_cmds.sync_quietly(c)
    except ClientError as exc:
        raise fail(str(exc)) from None


def q(
    ids: JobIds = None,
    constraint: ConstraintOption = None,
    long: LongOption = False,
    af: AfOption = None,
    as_json: JsonOption = False,
    limit: LimitOption = None,
    allusers: AllUsersOption = False,
    nobatch: Annotated[
        bool, typer.Option("-nobatch", "--nobatch", help="one row per job, not per cluster")
    ] = False,
    held: Annotated[
        bool, typer.Option("-hold", "--hold", help="held jobs only, with their reasons")
    ] = False,
    run: Annotated[
        bool, typer.Option("-run", "--run", help="running jobs only, with their pilots")
    ] = False,
    totals: TotalsOption = False,
    better_analyze: Annotated[
        bool,
        typer.Option(
            "-better-analyze", "--better-analyze", help="why the named job is idle (`analyze`)"
        ),
    ] = False,
    pool: PoolOption = None,
    token_file: TokenOption = None,
) -> None:
    """Show your queued jobs (idle, running, held), a row per cluster;
    -allusers: everyone's."""
    if better_analyze:
        from glidewms.cli.status_cmds import analyze

        if not ids:
            raise fail("-better-analyze: name a job (CLUSTER.PROC)", 2)
        for jid in ids:
            analyze(jid, slot=None, as_json=as_json, pool=pool, token_file=token_file)
        return
    states = tuple(s for s, on in (("held", held), ("running", run)) if on)
    _listing(
        ids,
        constraint,
        long,
        False,
        pool,
        token_file,
        af=af,
        as_json=as_json,
        limit=limit,
        allusers=allusers,
        batch=not (nobatch or held or run),
        states=states,
        totals=totals,
    )


def history(
    ids: JobIds = None,
    constraint: ConstraintOption = None,
    long: LongOption = False,
    af: AfOption = None,
    as_json: JsonOption = False,
    limit: LimitOption = None,
    allusers: AllUsersOption = False,
    totals: TotalsOption = False,
    pool: PoolOption = None,
    token_file: TokenOption = None,
) -> None:
    """Show your finished jobs (completed or removed); -allusers: everyone's."""
    _listing(
        ids,
        constraint,
        long,
        True,
        pool,
        token_file,
        af=af,
        as_json=as_json,
        limit=limit,
        allusers=allusers,
        totals=totals,
    )


def _action(
    action: str,
    ids: list[str] | None,
    constraint: str | None,
    reason: str,
    pool: str | None,
    token_file: Path | None,
) -> None:
    if not ids and not constraint:
        raise fail("name job ids (CLUSTER or CLUSTER.PROC) or give --constraint", 2)
    selected = job_ids(ids or [])
    changed: list[str] = []
    pending = 0
    try:
        with client(pool, token_file) as c:
            whole = [cl for cl, proc in selected if proc is None]
            if action == "remove" and not constraint and whole:
                # condor_rm CLUSTER: also the jobs a late-materialising cluster has still to make
                for cluster in whole:
                    removed = c.remove_cluster(cluster, reason)
                    changed += removed["changed"]
                    pending += int(removed["pending"])
                selected = [(cl, proc) for cl, proc in selected if proc is not None]
                if not selected and not changed and not pending:
                    raise fail("no matching jobs in the queue")
            if selected or constraint:
                jobs = _select(c, selected, constraint, False, False)
                if not jobs:
                    raise fail("no matching jobs in the queue")
                changed += c.act(action, [j["job_id"] for j in jobs], reason=reason)
    except ClientError as exc:
        raise fail(str(exc)) from None
    past = {"hold": "held", "release": "released", "remove": "removed"}[action]
    out.print(
        literal(f"{len(changed)} job(s) {past}" + (f": {' '.join(changed)}" if changed else ""))
    )
    if pending:
        out.print(f"{pending} job(s) not yet materialised will not be", markup=False)


def rm(
    ids: JobIds = None,
    constraint: ConstraintOption = None,
    reason: Annotated[str, typer.Option()] = "",
    pool: PoolOption = None,
    token_file: TokenOption = None,
) -> None:
    """Remove jobs from the queue (running ones are stopped)."""
    _action("remove", ids, constraint, reason, pool, token_file)


def hold(
    ids: JobIds = None,
    constraint: ConstraintOption = None,
    reason: Annotated[str, typer.Option()] = "",
    pool: PoolOption = None,
    token_file: TokenOption = None,
) -> None:
    """Hold jobs: they stay in the queue but do not run until released."""
    _action("hold", ids, constraint, reason, pool, token_file)


def release(
    ids: JobIds = None,
    constraint: ConstraintOption = None,
    pool: PoolOption = None,
    token_file: TokenOption = None,
) -> None:
    """Release held jobs back to idle."""
    _action("release", ids, constraint, "", pool, token_file)


def fetch(
    ids: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Argument(help="CLUSTER.PROC of a completed job, or CLUSTER for all of its jobs"),
    ] = None,
    dest: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--dest", "-d", help="put every output in this directory instead"),
    ] = None,
    every: Annotated[
        bool,
        typer.Option("--all", help="every completed job of yours whose outputs are not in place"),
    ] = False,
    wait: Annotated[
        bool, typer.Option("--wait", help="first wait until the jobs are no longer queued")
    ] = False,
    pool: PoolOption = None,
    token_file: TokenOption = None,
) -> None:
    """Download completed jobs' outputs (stdout, stderr, output files).

    As HTCondor leaves them: stdout/stderr at the submit file's `output` and
    `error` paths, other outputs below `initialdir` (subdirectories kept,
    `transfer_output_remaps` applied). With `--dest DIR`, everything goes
    below DIR instead."""
    selected = job_ids(ids or [])
    if not selected and not every:
        raise fail("name a job (CLUSTER.PROC or CLUSTER) or give --all", 2)
    try:
        with client(pool, token_file) as c:
            if wait:
                _wait_until_done(c, selected)
            if not selected or any(proc is None for _, proc in selected):
                jobs = _select(c, selected, "JobStatus == 4", True, False)
                names = [
                    j["job_id"] for j in jobs if j["state"] == "completed" and not j["redacted"]
                ]
                names += [f"{cl}.{proc}" for cl, proc in selected if proc is not None]
            else:
                names = [f"{cl}.{proc}" for cl, proc in selected]
            for name in names:
                if dest is not None:
                    written = c.fetch_outputs(name, dest)
                else:
                    written = c.fetch_in_place(name, skip_fetched=every)
                for path in written:
                    out.print(literal(path, lines=False))
            from glidewms.cli import userlog_cmds  # the job event logs, as q and history do

            userlog_cmds.sync_quietly(c)
    except ClientError as exc:
        raise fail(str(exc)) from None


WAIT_POLL = 2.0  # seconds between looks at the queue in `fetch --wait`


def _wait_until_done(c: PoolClient, selected: list[JobRef]) -> None:
    """Until none of the jobs (all of yours without ids) is idle or running; a
    held job is reported, not waited for."""
    while True:
        queued = [j for j in _select(c, selected, None, False, False) if not j["redacted"]]
        if not any(j["state"] in ("idle", "running") for j in queued):
            for j in queued:
                if j["state"] == "held":
                    err.print(
                        f"job {j['job_id']} is held: {markup_safe(str(j['hold_reason']))}",
                        soft_wrap=True,
                    )
            return
        time.sleep(WAIT_POLL)


def register(app: typer.Typer) -> None:
    for command in (submit, q, rm, hold, release, history, fetch):
        app.command()(command)
