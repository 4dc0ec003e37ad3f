"""Operators' commands of the factory: downtimes, pilot logs and their search
(entries, their pauses and resumes: factory_entry_cmds.py).

They talk to a running factory over its API through `FactoryClient`
(glidewms.factory.client: where the factory is and which token to use).
Its errors end the command with exit code 2 and the message on stderr.
What the factory returns is shown literally (cli/literal.py): reasons, errors
and pilot logs hold text that frontends, sites and jobs wrote.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from glidewms.cli.literal import cell, markup_safe, visible
from glidewms.factory.client import FactoryClient, FactoryClientError

err = Console(stderr=True)
out = Console()

FactoryOpt = Annotated[Optional[str], typer.Option("--factory", help="factory URL")]  # noqa: UP045
TokenOpt = Annotated[
    Optional[Path],  # noqa: UP045
    typer.Option("--token-file", help="file holding an admin (or frontend) token"),
]
DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd]?)")  # fullmatch
UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def _fail(message: str) -> typer.Exit:
    err.print(f"[red]error:[/red] {markup_safe(message)}", highlight=False)
    return typer.Exit(2)


def call(
    factory: str | None, token_file: Path | None, method: str, path: str, **kwargs: Any
) -> Any:
    """One call to the factory's API; a FactoryClientError becomes an exit (2)."""
    try:
        return FactoryClient(factory, token_file).call(method, path, **kwargs)
    except FactoryClientError as exc:
        raise _fail(str(exc)) from None


def parse_time(text: str) -> float:
    """Epoch seconds, an ISO 8601 time (UTC unless it says), or `-2h` (ago) / `+1d` (from now)."""
    text = text.strip()
    now = dt.datetime.now(dt.timezone.utc).timestamp()
    if text and text[0] in "+-" and DURATION.fullmatch(text[1:]):
        seconds = parse_duration(text[1:])
        return now + seconds if text[0] == "+" else now - seconds
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(
            f"expected epoch seconds, an ISO time (2026-01-31T08:00) or -2h/+1d, got {text!r}"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return when.timestamp()


def parse_duration(text: str) -> float:
    match = DURATION.fullmatch(text.strip())
    if not match:
        raise typer.BadParameter(f"expected a duration such as 90, 30m, 2h or 1d, got {text!r}")
    return float(match.group(1)) * UNITS[match.group(2)]


def show_time(value: float | None) -> str:
    if value is None:
        return "-"
    return dt.datetime.fromtimestamp(value, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def register(app: typer.Typer, service: typer.Typer) -> None:
    """Add top-level commands to `app` and subcommands to `glidewms factory` (`service`)."""
    downtime = typer.Typer(help="Downtimes: no new pilots at an entry (or for a frontend).")
    service.add_typer(downtime, name="downtime")

    @downtime.command("add")
    def downtime_add(
        reason: Annotated[str, typer.Option(help="why (shown to frontends and in entry ads)")],
        entry: Annotated[str, typer.Option(help="entry name, or * for all")] = "*",
        frontend: Annotated[str, typer.Option(help="frontend name, or * for all")] = "*",
        start: Annotated[Optional[str], typer.Option(help="when it starts; default now")] =  # noqa: UP045
        None,
        end: Annotated[Optional[str], typer.Option(help="when it ends (time)")] = None,  # noqa: UP045
        duration: Annotated[Optional[str], typer.Option(help="or how long: 2h, 1d")] = None,  # noqa: UP045
        factory: FactoryOpt = None,
        token_file: TokenOpt = None,
    ) -> None:
        """Stop new pilots from being submitted (running ones are left alone)."""
        begin = parse_time(start) if start else None
        finish = parse_time(end) if end else None
        if duration is not None:
            if finish is not None:
                raise _fail("give --end or --duration, not both")
            base = begin if begin is not None else dt.datetime.now(dt.timezone.utc).timestamp()
            finish = base + parse_duration(duration)
        body = {
            "entry": entry,
            "frontend": frontend,
            "start": begin,
            "end": finish,
            "reason": reason,
        }
        added = call(factory, token_file, "POST", "/downtimes", json=body)
        typer.echo(
            f"downtime {added['id']} added: entry {entry}, frontend {frontend}, "
            f"{show_time(added['start'])} to {show_time(added['end'])}"
        )

    @downtime.command("list")
    def downtime_list(
        past: Annotated[bool, typer.Option(help="also the ones that ended")] = False,
        factory: FactoryOpt = None,
        token_file: TokenOpt = None,
    ) -> None:
        """Downtimes in force or to come."""
        found = call(factory, token_file, "GET", "/downtimes", params={"past": past})
        table = Table("id", "entry", "frontend", "start", "end", "reason", "by")
        for d in found:
            table.add_row(
                str(d["id"]),
                cell(d["entry"]),
                cell(d["frontend"]),
                show_time(d["start"]),
                show_time(d["end"]),
                cell(d["reason"]),
                cell(d["created_by"]),
            )
        out.print(table)

    @downtime.command("rm")
    def downtime_rm(
        downtime_id: Annotated[int, typer.Argument(help="the id shown by `downtime list`")],
        factory: FactoryOpt = None,
        token_file: TokenOpt = None,
    ) -> None:
        """End a downtime now (remove it)."""
        call(factory, token_file, "DELETE", f"/downtimes/{downtime_id}")
        typer.echo(f"downtime {downtime_id} removed")

    @service.command("logs")
    def logs(
        glidein_id: Annotated[str, typer.Argument(help="the pilot's glidein id")],
        trail: Annotated[bool, typer.Option(help="show the JSON trail records")] = True,
        as_json: Annotated[bool, typer.Option("--json", help="everything as JSON")] = False,
        factory: FactoryOpt = None,
        token_file: TokenOpt = None,
    ) -> None:
        """A pilot's state, exit reason, stdout, stderr and trail."""
        got = call(factory, token_file, "GET", f"/glideins/{glidein_id}/logs")
        if as_json:
            typer.echo(json.dumps(got, indent=2))
            return
        submitted = show_time(got["submitted_at"])
        typer.echo(
            visible(
                f"glidein {got['glidein_id']}: entry {got['entry']}, frontend "
                f"{got['frontend']}/{got['group']}, {got['state']}, exit reason "
                f"{got['exit_reason'] or '-'}, submitted {submitted}"
            )
        )
        for name in ("stdout", "stderr"):
            typer.echo(f"----- {name} -----")
            typer.echo(visible(got[name].rstrip("\n"), lines=True) or "(empty)")
        if trail:
            typer.echo("----- trail -----")
            for record in got["trail"]:
                if record.get("final"):
                    typer.echo(f"{show_time(record.get('received'))} (final flush)")
                    continue
                typer.echo(
                    visible(
                        f"{show_time(record.get('time'))} {record.get('severity', '?'):8} "
                        f"{record.get('type', '?')}: {record.get('content', '')}",
                        lines=True,
                    )
                )

    @service.command("search")
    def search(
        entry: Annotated[Optional[str], typer.Option(help="entry name")] = None,  # noqa: UP045
        exit_reason: Annotated[Optional[str], typer.Option(help="e.g. idle_timeout")] = None,  # noqa: UP045
        since: Annotated[Optional[str], typer.Option(help="submitted at or after (time, -2h)")] =  # noqa: UP045
        None,
        until: Annotated[Optional[str], typer.Option(help="submitted at or before")] = None,  # noqa: UP045
        state: Annotated[Optional[str], typer.Option(help="queued, running, finished...")] =  # noqa: UP045
        None,
        limit: Annotated[int, typer.Option(min=1)] = 100,
        factory: FactoryOpt = None,
        token_file: TokenOpt = None,
    ) -> None:
        """Find pilots by entry, submission time and exit reason (newest first)."""
        params: dict[str, Any] = {"limit": limit}
        for key, value in (("entry", entry), ("exit_reason", exit_reason), ("state", state)):
            if value is not None:
                params[key] = value
        if since is not None:
            params["since"] = parse_time(since)
        if until is not None:
            params["until"] = parse_time(until)
        found = call(factory, token_file, "GET", "/glideins", params=params)
        table = Table("glidein", "entry", "frontend", "state", "exit reason", "submitted")
        for g in found:
            table.add_row(
                cell(g["glidein_id"]),
                cell(g["entry"]),
                cell(f"{g['frontend']}/{g['group']}"),
                cell(g["state"]),
                cell(g["exit_reason"] or "-"),
                show_time(g["submitted_at"]),
            )
        out.print(table)

    from glidewms.cli.factory_entry_cmds import register_entries

    register_entries(service)

    @service.command("reload")
    def reload_cmd(factory: FactoryOpt = None, token_file: TokenOpt = None) -> None:
        """Make a running factory re-read its configuration (entries) now (admin token)."""
        got = call(factory, token_file, "POST", "/reload")
        typer.echo(visible(reload_text(got)))

    @service.command("stats")
    def stats_cmd(
        since: Annotated[str, typer.Option(help="window start (time, or -2h, -1d)")] = "-1d",
        as_json: Annotated[bool, typer.Option("--json", help="the API's answer as JSON")] = False,
        factory: FactoryOpt = None,
        token_file: TokenOpt = None,
    ) -> None:
        """Per entry and frontend: pilots by state, submit rate, failures, goodput and
        badput in core-hours, and goodput as a fraction of the pilots' core time."""
        got = call(factory, token_file, "GET", "/stats", params={"since": parse_time(since)})
        if as_json:
            typer.echo(json.dumps(got, indent=2))
            return
        table = Table(
            "entry",
            "frontend",
            "pilots",
            "submitted",
            "per hour",
            "failures",
            "goodput core-h",
            "badput core-h",
            "goodput %",
            title=f"since {show_time(got['since'])}",
        )
        for r in got["rows"]:
            pilots = ", ".join(f"{k} {v}" for k, v in sorted(r["pilots"].items())) or "-"
            failures = ", ".join(f"{k} {v}" for k, v in sorted(r["failures"].items())) or "-"
            table.add_row(
                cell(r["entry"]),
                cell(r["frontend"]),
                cell(pilots),
                str(r["submitted"]),
                f"{r['submit_rate_per_hour']:.1f}",
                cell(failures),
                f"{_core_seconds(r, 'goodput') / 3600:.2f}",
                f"{_core_seconds(r, 'badput') / 3600:.2f}",
                "-" if r.get("goodput_fraction") is None else f"{100 * r['goodput_fraction']:.1f}",
            )
        out.print(table)

    register_catalogue(service)


def _core_seconds(row: dict[str, Any], kind: str) -> float:
    """A stats row's core-seconds; a factory older than them: its wall seconds."""
    value = row.get(f"{kind}_core_seconds")
    return float(value if value is not None else row.get(f"{kind}_seconds") or 0.0)


def reload_text(got: dict[str, Any]) -> str:
    parts = [
        f"{len(got[k])} {k} ({', '.join(got[k])})" if got[k] else f"0 {k}"
        for k in ("added", "removed", "changed")
    ]
    text = f"reloaded: {'; '.join(parts)}; {got['unchanged']} unchanged"
    if got.get("ignored"):
        text += f"; needs a restart: {', '.join(got['ignored'])}"
    return text


CatalogueOpt = Annotated[
    Path | None,
    typer.Option("--catalogue", help="CRIC-style JSON; default: the shipped sample"),
]
OverridesOpt = Annotated[
    Path | None,
    typer.Option(
        "--overrides", help="YAML: defaults, flavours, include/exclude, per-entry changes"
    ),
]
EntriesOpt = Annotated[Path, typer.Option("--entries", help="the entries file the factory reads")]


def register_catalogue(service: typer.Typer) -> None:
    """`glidewms factory catalogue generate|diff|apply`."""
    from glidewms.config.loader import ConfigError
    from glidewms.factory import catalogue as cat

    group = typer.Typer(help="Entries from a site catalogue (CRIC-style JSON) and overrides.")
    service.add_typer(group, name="catalogue")

    def build(catalogue: Path | None, overrides: Path | None) -> cat.Generated:
        try:
            made = cat.generate(
                cat.load_catalogue(catalogue),
                cat.load_overrides(overrides),
                str(catalogue or cat.SAMPLE),
            )
        except ConfigError as exc:
            raise _fail(str(exc)) from None
        err.print(
            f"{len(made.entries)} entries generated; {len(made.skipped)} skipped", highlight=False
        )
        for why in made.skipped:
            err.print(f"  skipped {markup_safe(why)}", highlight=False)
        return made

    def show(diff: cat.EntryDiff) -> None:
        if diff.empty:
            typer.echo("no change")
            return
        typer.echo(f"added: {', '.join(diff.added) or '-'}")
        typer.echo(f"removed: {', '.join(diff.removed) or '-'}")
        for name, keys in diff.changed.items():
            typer.echo(f"changed: {name}: {', '.join(keys)}")
        typer.echo(diff.text.rstrip("\n"))

    def current(entries: Path) -> list[dict[str, Any]]:
        try:
            return cat.read_entries(entries)
        except ConfigError as exc:
            raise _fail(str(exc)) from None

    @group.command("generate")
    def generate(
        catalogue: CatalogueOpt = None,
        overrides: OverridesOpt = None,
        out_file: Annotated[Optional[Path], typer.Option("--out", help="default: stdout")] =  # noqa: UP045
        None,
    ) -> None:
        """Print (or write) the entries the catalogue and the overrides make."""
        text = cat.entries_yaml(build(catalogue, overrides).entries)
        if out_file is None:
            typer.echo(text.rstrip("\n"))
        else:
            write_text(out_file, text)

    @group.command("diff")
    def diff(
        entries: EntriesOpt, catalogue: CatalogueOpt = None, overrides: OverridesOpt = None
    ) -> None:
        """What `apply` would change in the entries file."""
        show(
            cat.diff_entries(
                current(entries), build(catalogue, overrides).entries, str(entries), "generated"
            )
        )

    @group.command("apply")
    def apply(
        entries: EntriesOpt,
        catalogue: CatalogueOpt = None,
        overrides: OverridesOpt = None,
        yes: Annotated[bool, typer.Option("--yes", help="do not ask")] = False,
        reload: Annotated[bool, typer.Option(help="then make the running factory reload")] = False,
        factory: FactoryOpt = None,
        token_file: TokenOpt = None,
    ) -> None:
        """Show the diff, ask, write the entries file (and with --reload, reconfigure the
        running factory: no pilot is lost, removed entries get no new pilots)."""
        made = build(catalogue, overrides)
        change = cat.diff_entries(current(entries), made.entries, str(entries), "generated")
        show(change)
        if change.empty:
            return
        if not yes and not typer.confirm(f"write {entries}?", default=False):
            raise typer.Exit(1)
        write_text(entries, cat.entries_yaml(made.entries))
        typer.echo(f"{entries} written ({len(made.entries)} entries)")
        if reload:
            typer.echo(visible(reload_text(call(factory, token_file, "POST", "/reload"))))


def write_text(path: Path, text: str) -> None:
    """Replace a file atomically: a factory reloading meanwhile reads old or new, not half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
