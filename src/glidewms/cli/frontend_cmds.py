"""Extra `glidewms` commands of the frontend (operators' and users' tools)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any, Optional

import httpx
import typer

from glidewms.cli.literal import visible
from glidewms.frontend.explain_text import render
from glidewms.protocol import API_PREFIX, VERSION_HEADER, IncompatiblePeer, check_peer
from glidewms.security.tls import TlsError, client_context, discover_ca_file


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
                f"{url_file} exists"
            ) from None
    env_token = os.environ.get("GLIDEWMS_TOKEN_FILE")
    path = token_file or (Path(env_token) if env_token else state_dir / "tokens" / "frontend.token")
    try:
        token = Path(path).read_text().strip()
    except OSError as exc:
        raise typer.BadParameter(f"cannot read token file {path}: {exc.strerror}") from None
    return url.rstrip("/"), token


def register(app: typer.Typer, service: typer.Typer) -> None:
    """Add top-level commands to `app` and subcommands to `glidewms frontend` (`service`)."""

    @service.command("explain")
    def explain(
        entry: Annotated[
            str | None,
            typer.Argument(help="entry name or factory/entry; all entries when omitted"),
        ] = None,
        history: Annotated[bool, typer.Option(help="every kept cycle, not only the last")] = False,
        group: Annotated[
            str | None,
            typer.Option(help="only this group's explanations"),
        ] = None,
        as_json: Annotated[bool, typer.Option("--json", help="raw JSON")] = False,
        brief: Annotated[
            bool, typer.Option("--brief", help="one line per entry instead of a table each")
        ] = False,
        url: Annotated[Optional[str], typer.Option(help="frontend URL")] = None,  # noqa: UP045
        token_file: Annotated[
            Path | None,
            typer.Option(help="token with frontend or admin scope"),
        ] = None,
        state_dir: Annotated[Path, typer.Option(help="`glidewms up` state directory")] = Path(
            "glidewms-state"
        ),
    ) -> None:
        """Why the frontend asked what it asked, per entry: a table of the request,
        demand, supply, pressure, limits and curbs hit, removal stage and reasons."""
        base, token = _find(url, token_file, state_dir)
        params: dict[str, Any] = {"history": history}
        if entry:
            params["entry"] = entry
        if group:
            params["group"] = group
        try:
            r = httpx.get(
                f"{base}{API_PREFIX}/explain",
                params=params,
                timeout=30,
                headers={"Authorization": f"Bearer {token}"},
                verify=client_context(discover_ca_file(state_dir)),
            )
        except (httpx.HTTPError, TlsError) as exc:
            typer.echo(f"error: cannot reach the frontend at {base}: {exc}", err=True)
            raise typer.Exit(1) from None
        try:
            check_peer("frontend", r.headers.get(VERSION_HEADER))
        except IncompatiblePeer as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None
        if r.status_code != 200:
            detail = (
                r.json().get("detail")
                if r.headers.get("content-type", "").startswith("application/json")
                else r.text
            )
            typer.echo(f"error: {r.status_code}: {visible(detail)}", err=True)
            raise typer.Exit(1)
        records = r.json()
        if as_json:
            typer.echo(json.dumps(records, indent=2))
            return
        typer.echo(visible(render(records, brief), lines=True))  # names, reasons: not ours
