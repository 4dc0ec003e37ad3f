"""`python -m glidewms`: the same as the `glidewms` command."""

from glidewms.cli.main import app

app()
