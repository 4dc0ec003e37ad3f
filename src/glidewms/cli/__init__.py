"""The `glidewms` command line."""
