"""The pilot's validation runs: every script before it registers, periodic ones after.

validation.py knows scripts (lists, stages, one run, results); this module
runs them for one pilot: it records each result in the trail, keeps them
all for the final report, and gathers what a successful startup run gives
the pilot (the configuration the scripts completed, the container setup,
the job environment). What the pilot then does (exit, stop taking work) is
the agent's decision.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Dict, List, Optional

from . import validation
from .config import ConfigError, GlideinConfig, build_config
from .container import ContainerSetup
from .trail import Trail


class ValidationFailed(Exception):
    """The node failed validation; the message is the report's detail."""


@dataclass
class Validated:
    """What a successful startup validation gives the pilot."""

    cfg: GlideinConfig  # re-read: the scripts complete glidein_config
    container: ContainerSetup
    job_env: Dict[str, str]  # published for jobs (job_env of the scripts)


class Checks:
    """One pilot's validation scripts and every result so far (``results``)."""

    def __init__(self, trail: Trail) -> None:
        self.trail = trail
        self.results: List[validation.Result] = []
        self.periodic: List[validation.Script] = []  # rerun by ``rerun_periodic``

    def at_startup(self, cfg: GlideinConfig) -> Validated:
        """Run every script in order; raise ValidationFailed at the first failure."""
        try:
            scripts = validation.discover(cfg.work_dir, cfg.values)
        except ConfigError as exc:
            raise ValidationFailed(f"Config: {exc}") from None
        if scripts:
            # forked children for Python scripts unless the entry says no (forkrun.py)
            fork = cfg.values.get("GLIDEIN_Validation_Fork", "auto").lower() != "no"
            self.results = validation.run_all(
                scripts, cfg.config_path, cfg.validation_timeout, fork
            )
            for result in self.results:
                self.trail.add(
                    "INFO" if result.ok else "ERROR",
                    "validation",
                    f"{result.stage}/{result.name}: {result.status} "
                    f"{result.category} {result.detail}".strip(),
                    {"output": result.output.encode()} if result.output else None,
                )
            failed = validation.failure_summary(self.results)
            if failed:
                raise ValidationFailed(failed)
        try:
            values = validation.read_values(cfg.config_path)
            completed = build_config(values, cfg.work_dir)
            container = ContainerSetup.from_values(values)
        except (OSError, ConfigError, ValueError) as exc:
            raise ValidationFailed(f"Config: after validation: {exc}") from None
        attrs, job_env = validation.published(values, self.results)
        completed.attrs.update(attrs)
        completed.config_path = cfg.config_path
        self.periodic = [s for s in scripts if s.period > 0]
        return Validated(completed, container, job_env)

    def rerun_periodic(self, cfg: GlideinConfig, finished: threading.Event) -> Optional[str]:
        """Rerun the periodic scripts until ``finished``; the failure summary of
        the first one that fails (the pilot then takes no new work), else None."""
        due = {s: time.monotonic() + s.period for s in self.periodic}
        while due:
            script = min(due, key=lambda s: due[s])
            if finished.wait(max(0.0, due[script] - time.monotonic())):
                return None
            result = validation.run_script(script, cfg.config_path, cfg.validation_timeout)
            self.results.append(result)
            due[script] = time.monotonic() + script.period
            if not result.ok:
                self.trail.add(
                    "ERROR",
                    "validation",
                    f"periodic {script.name}: {result.category}: {result.detail}",
                )
                return validation.failure_summary([result]) or script.name
        return None
