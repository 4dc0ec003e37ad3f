"""Extra `glidewms` commands of the factory (operators' and users' tools)."""

from __future__ import annotations

import typer


def register(app: typer.Typer, service: typer.Typer) -> None:
    """Add top-level commands to `app` and subcommands to `glidewms factory` (`service`)."""
