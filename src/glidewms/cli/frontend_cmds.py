"""Extra `glidewms` commands of the frontend (operators' and users' tools)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any, Optional

import httpx
import typer


def _find(url: str | None, token_file: Path | None, state_dir: Path) -> tuple[str, str]:
    """The frontend URL and a token: options, environment, then `glidewms up`'s files."""
    url = url or os.environ.get("GLIDEWMS_FRONTEND_URL")
    if not url:
        url_file = state_dir / "run" / "frontend.url"
        try:
            url = url_file.read_text().strip()
        except OSError:
            raise typer.BadParameter(
                f"no frontend URL: give --url, set GLIDEWMS_FRONTEND_URL, or run where "
                f"{url_file} exists") from None
    env_token = os.environ.get("GLIDEWMS_TOKEN_FILE")
    path = token_file or (Path(env_token) if env_token else
                          state_dir / "tokens" / "frontend.token")
    try:
        token = Path(path).read_text().strip()
    except OSError as exc:
        raise typer.BadParameter(f"cannot read token file {path}: {exc.strerror}") from None
    return url.rstrip("/"), token


def format_record(r: dict[str, Any]) -> str:
    """One explanation as a few readable lines."""
    head = f"{r['entry']}  (group {r.get('group')}, cycle {r.get('cycle')})"
    if "skipped" in r:
        return f"{head}\n  skipped: {r['skipped']}"
    if "frozen" in r:
        return f"{head}\n  frozen: {r['frozen']}"
    d, s, p, req = r["demand"], r["supply"], r.get("pressure") or {}, r["request"]
    lines = [
        head,
        f"  request   idle={req['idle']} max_running={req['max_running']} "
        f"remove={req['remove']} margin={req['remove_margin']}",
        f"  demand    {d['idle_jobs']} idle jobs ({d['prop_jobs']} proportional, "
        f"{d['unique_jobs']} only here, {d['old_jobs']} old, {d['overflow_jobs']} overflow) "
        f"= {d['prop_units']} pilots; {d['running_jobs']} running",
        f"  supply    queued={s['queued']} starting={s['starting']} idle={s['idle']} "
        f"partial={s['partial']} busy={s['busy']} unusable={s['unusable']} "
        f"retiring={s['retiring']} (idle supply {s['idle_supply']} pilots)",
        f"  pressure  missing={p.get('effective_idle')} attenuated={p.get('attenuated')} "
        f"reserve={p.get('reserve')}",
    ]
    lines += [f"  limit     {x}" for x in p.get("limits", [])]
    lines += [f"  curb      {x}" for x in p.get("curbs", [])]
    lines.append(f"  removal   stage {r['removal']['stage']} after "
                 f"{r['removal']['no_demand_cycles']} cycle(s) without demand")
    lines += [f"  why       {x}" for x in r.get("reasons", [])]
    if r.get("error"):
        lines.append(f"  error     {r['error']}")
    return "\n".join(lines)


def register(app: typer.Typer, service: typer.Typer) -> None:
    """Add top-level commands to `app` and subcommands to `glidewms frontend` (`service`)."""

    @service.command("explain")
    def explain(
        entry: Annotated[Optional[str], typer.Argument(  # noqa: UP045 (typer on 3.10)
            help="entry name or factory/entry; all entries when omitted")] = None,
        history: Annotated[bool, typer.Option(help="every kept cycle, not only the last")]
        = False,
        as_json: Annotated[bool, typer.Option("--json", help="raw JSON")] = False,
        url: Annotated[Optional[str], typer.Option(help="frontend URL")] = None,  # noqa: UP045
        token_file: Annotated[Optional[Path], typer.Option(  # noqa: UP045
            help="token with frontend or admin scope")] = None,
        state_dir: Annotated[Path, typer.Option(help="`glidewms up` state directory")]
        = Path("glidewms-state"),
    ) -> None:
        """Why the frontend asked what it asked, per entry: demand, supply, limits and
        curbs hit, removal stage."""
        base, token = _find(url, token_file, state_dir)
        params: dict[str, Any] = {"history": history}
        if entry:
            params["entry"] = entry
        try:
            r = httpx.get(f"{base}/api/v1/explain", params=params, timeout=30,
                          headers={"Authorization": f"Bearer {token}"})
        except httpx.HTTPError as exc:
            typer.echo(f"error: cannot reach the frontend at {base}: {exc}", err=True)
            raise typer.Exit(1) from None
        if r.status_code != 200:
            detail = r.json().get("detail") if r.headers.get("content-type", "").startswith(
                "application/json") else r.text
            typer.echo(f"error: {r.status_code}: {detail}", err=True)
            raise typer.Exit(1)
        records = r.json()
        if as_json:
            typer.echo(json.dumps(records, indent=2))
            return
        if not records:
            typer.echo("no explanation yet (has a cycle run?)")
        typer.echo("\n\n".join(format_record(x) for x in records))
