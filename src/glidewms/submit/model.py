"""What parsing produces (jobs, the whole description) and what bounds it.

A submit file is user input and also, on a shared pool, possibly hostile input:
every quantity that grows with the input (file size, include depth, macro
nesting, expanded size, jobs per submit) has a limit in `Limits`, and crossing
one is a `SubmitError` naming the file and line, never a hang or an exhausted
machine.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

CLUSTER_PLACEHOLDER = "$(ClusterId)"
"""What `$(Cluster)`/`$(ClusterId)` expand to until `JobDescription.with_cluster`."""

DEFAULT_REQUEST_CPUS = 1
DEFAULT_REQUEST_MEMORY_MIB = 128
DEFAULT_REQUEST_DISK_KIB = 102400  # 100 MiB: a modest sandbox; condor_submit's own default varies
VANILLA_UNIVERSE = 5

_CLUSTER_REF_RE = re.compile(r"(?<!\$)\$\(ClusterId\)")


class SubmitError(Exception):
    """A submit description that must not be queued; `str()` is `source:line: message`."""

    def __init__(self, message: str, source: str = "<submit>", line: int | None = None):
        self.source, self.line, self.message = source, line, message
        where = f"{source}:{line}" if line is not None else source
        super().__init__(f"{where}: {message}")


SWITCHES = frozenset({"run_commands"})  # Limits fields that 0 turns off


@dataclass(frozen=True)
class Limits:
    """Bounds on what one submit may make this process do.

    The defaults are far above what real submit files need (the largest public
    ones queue tens of thousands of jobs from files of a few hundred lines);
    `from_environ` lets a site or a user change them with GLIDEWMS_SUBMIT_*
    variables (e.g. GLIDEWMS_SUBMIT_MAX_JOBS=500000).
    """

    max_file_bytes: int = 4 * 1024 * 1024  # a submit file, an included file
    max_items_file_bytes: int = 64 * 1024 * 1024  # `queue ... from file` and stdin
    max_include_depth: int = 16
    max_if_depth: int = 60
    max_macro_depth: int = 64  # macros defined in terms of macros, nested
    max_value_bytes: int = 1024 * 1024  # one expanded value
    max_substitutions: int = 100_000  # $() replacements while expanding one value
    max_jobs: int = 1_000_000  # jobs queued by one submit
    # `queue ... from cmd |` and `include : cmd |` run a command on the submit
    # machine, as condor_submit does (real files use it to list their inputs);
    # GLIDEWMS_SUBMIT_RUN_COMMANDS=0 refuses them, e.g. to check a file someone
    # sent you without side effects.
    run_commands: int = 1
    command_seconds: int = 60  # how long such a command may run

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> Limits:
        env = os.environ if environ is None else environ
        values: dict[str, int] = {}
        for f in dataclasses.fields(cls):
            raw = env.get(f"GLIDEWMS_SUBMIT_{f.name.upper()}")
            if raw is None or not raw.strip().isdigit():
                continue
            if int(raw) > 0 or f.name in SWITCHES:  # a switch may be turned off
                values[f.name] = int(raw)
        return cls(**values)


@dataclass(frozen=True)
class JobDescription:
    """One job: its ClassAd attributes plus the parsed pieces the pilot side needs."""

    attrs: dict[str, str]  # attribute -> ClassAd expression source text
    args: list[str]
    env: dict[str, str]
    executable: Path | None  # local file to transfer; None when it is not transferred
    inputs: list[Path]  # local files/directories to transfer (incl. stdin file, proxy)
    out: str | None
    err: str | None
    transfer_output: list[str] | None  # None: HTCondor's "all new files in the sandbox"
    proc_id: int
    iwd: Path = field(default_factory=Path.cwd)
    input_urls: list[str] = field(default_factory=list)  # fetched on the execute side

    def ad_text(self) -> str:
        """The bracketed ClassAd (parseable by `classad2.parseOne` once no expression
        still holds the cluster placeholder, i.e. always after `with_cluster`)."""
        return "[ " + "".join(f"{k} = {v}; " for k, v in self.attrs.items()) + "]"

    def with_cluster(self, cluster_id: int) -> JobDescription:
        """The job once the schedd has assigned its cluster: placeholder replaced."""
        sub = _CLUSTER_REF_RE.sub

        def fill(text: str) -> str:
            return sub(str(cluster_id), text) if "$(" in text else text

        attrs = {k: fill(v) for k, v in self.attrs.items()}
        attrs["ClusterId"] = str(cluster_id)
        return dataclasses.replace(
            self,
            attrs=attrs,
            args=[fill(a) for a in self.args],
            env={k: fill(v) for k, v in self.env.items()},
            out=None if self.out is None else fill(self.out),
            err=None if self.err is None else fill(self.err),
            transfer_output=None
            if self.transfer_output is None
            else [fill(t) for t in self.transfer_output],
        )


@dataclass(frozen=True)
class SubmitDescription:
    jobs: list[JobDescription]
    source: str
    warnings: list[str] = field(default_factory=list)  # `source:line: text`, as condor_submit warns
