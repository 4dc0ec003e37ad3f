"""`glidewms factory entry list|pause|resume`: entries, their health and pauses.

An entry is paused by its failed submissions, by its failing pilots (then a
probe pilot goes now and then, and one that validates resumes it), or by an
operator (`pause`, until `resume`). `list` shows who paused it, why and when
the factory tries again by itself, and the pilot failure streak.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from glidewms.cli.factory_cmds import FactoryOpt, TokenOpt, call, out, show_time
from glidewms.cli.literal import cell


def state_text(e: dict[str, Any]) -> str:
    """An entry's state in words: its pause (who, since, why, next try), downtime,
    back-off, or enabled/disabled."""
    p = e.get("paused")
    if p:
        by = p.get("by", "submissions")
        then = (
            "until resumed"
            if p.get("retry_at") is None
            else f"{'probe' if by == 'pilots' else 'retry'} at {show_time(p['retry_at'])}"
        )
        if p.get("probe"):
            then = f"probe {p['probe']} out"
        return f"PAUSED by {by} since {show_time(p['since'])}, {then}: {p['reason']}"
    if e.get("in_downtime"):
        return f"downtime: {e['downtime']['reason']}"
    state = "enabled" if e["enabled"] else "disabled"
    if e.get("pilot_failures"):
        state += f", backing off (pilot failure streak {e['pilot_failures']})"
    return state


def register_entries(service: typer.Typer) -> None:
    """Add `entry list|pause|resume` to `glidewms factory`."""
    entry_cmd = typer.Typer(help="Entries: their state, pauses after failures, pause, resume.")
    service.add_typer(entry_cmd, name="entry")

    @entry_cmd.command("list")
    def entry_list(factory: FactoryOpt = None, token_file: TokenOpt = None) -> None:
        """Every entry with its pilots, state (pause, downtime, back-off) and last errors."""
        found = call(factory, token_file, "GET", "/entries")
        table = Table("entry", "site", "backend", "pilots", "state", "last error")
        for e in found:
            counts = ", ".join(f"{k} {v}" for k, v in e["counts"].items() if v) or "-"
            errors = [
                f"submit: {e['last_error']}" if e.get("last_error") else "",
                f"pilot: {e['last_pilot_failure']}" if e.get("last_pilot_failure") else "",
            ]
            table.add_row(
                *map(cell, (e["name"], e["site"], e["backend"], counts, state_text(e))),
                cell("; ".join(x for x in errors if x) or "-"),
            )
        out.print(table)

    @entry_cmd.command("resume")
    def entry_resume(
        name: Annotated[str, typer.Argument(help="the entry to resume")],
        factory: FactoryOpt = None,
        token_file: TokenOpt = None,
    ) -> None:
        """Submit again at a paused (or backing off) entry; its failures are forgotten
        (admin token)."""
        got = call(factory, token_file, "POST", f"/entries/{name}/resume")
        typer.echo(f"entry {name} resumed" if got["resumed"] else f"entry {name} was not paused")

    @entry_cmd.command("pause")
    def entry_pause(
        name: Annotated[str, typer.Argument(help="the entry to pause")],
        reason: Annotated[str, typer.Option(help="why (shown in entry ads and the log)")],
        factory: FactoryOpt = None,
        token_file: TokenOpt = None,
    ) -> None:
        """No new pilots (not even probes) at an entry until `resume`; running ones stay
        (admin token)."""
        call(factory, token_file, "POST", f"/entries/{name}/pause", json={"reason": reason})
        typer.echo(f"entry {name} paused: {reason}")
