"""glidewms: a pilot-based workload management system in the GlideinWMS tradition."""

__version__ = "0.1.0"
