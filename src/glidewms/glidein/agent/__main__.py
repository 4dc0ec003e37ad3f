"""Entry point: ``python3 -m agent --config glidein_config`` (run by the bootstrap).

Logs go to stderr as timestamped lines, which the batch system captures and
the factory collects; nothing logged ever contains the pilot token.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from .agent import Agent
from .config import ConfigError, UnsafeValue, load_config
from .policy import ExitReason
from .pools import MultiPoolAgent, serves_several


def setup_logging(verbose: bool) -> None:
    """UTC ISO timestamps, so logs from many sites line up."""
    handler = logging.StreamHandler(sys.stderr)
    formatter = logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%SZ"
    )
    formatter.converter = time.gmtime
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)


def main(argv: list[str] | None = None) -> int:
    """Parse options, read glidein_config, run the pilot; return its exit code."""
    parser = argparse.ArgumentParser(prog="agent", description="glidewms pilot agent")
    parser.add_argument("--config", required=True, help="path to glidein_config")
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    options = parser.parse_args(argv)
    setup_logging(options.verbose)
    log = logging.getLogger("glidein")
    try:
        cfg = load_config(options.config)
    except UnsafeValue as exc:
        # a value the bootstrap should have refused: a validation failure, said plainly
        log.error("validation failed: glidein_config refused: %s", exc)
        return ExitReason.VALIDATION_FAILED.exit_code
    except ConfigError as exc:
        log.error("bad glidein_config: %s", exc)
        return 2
    try:
        agent = MultiPoolAgent(cfg) if serves_several(cfg) else Agent(cfg)
    except ConfigError as exc:
        log.error("bad glidein_config: %s", exc)
        return 2
    except OSError as exc:
        log.error("cannot inspect the node: %s", exc)
        return 1
    return agent.run()


if __name__ == "__main__":
    sys.exit(main())
