"""HTCondor submit descriptions -> job ClassAds, checked before anything is queued.

Users bring the submit files they already write for condor_submit; this package
turns one into a list of jobs, or raises `SubmitError` naming the file and line,
so the caller queues all of the jobs or none. It is pure (no network, no pool,
no command run): it reads only the files the description names (executable,
inputs, includes, `queue ... from` lists, standard input for `from -`).

The language is HTCondor's (the reference is the condor_submit manual and its
implementation, submit_utils.cpp): macros with their functions and predefined
names, `if`/`elif`/`else`/`endif`, `include`, every queue form, and the
commands in `commands.COMMANDS`, each translated to the attributes
condor_submit gives it. Where HTCondor is lenient in ways that silently give a
job other than the one meant, we refuse or warn instead: a key one typo away
from a command (HTCondor keeps it as an unused macro), a command glidewms
cannot honour (refused with the reason), an undefined macro (expands to
nothing, as in HTCondor, with a warning). Warnings are returned with the jobs.

Modules: `lines` (logical lines), `macros` and `functions` (expansion),
`conditions` (if blocks), `queue` (queue statements and items), `reader`
(statements -> queue blocks), `commands` (the command table), `build` with
`files`, `resources` and `container` (one job ad), `dryrun` (printing ads).

The cluster id is unknown while parsing, so `$(Cluster)`/`$(ClusterId)` become the
literal `$(ClusterId)` until the caller calls `JobDescription.with_cluster(id)`.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from glidewms.submit.build import build_jobs, iter_jobs
from glidewms.submit.context import Context
from glidewms.submit.lines import decode
from glidewms.submit.model import (
    CLUSTER_PLACEHOLDER,
    DEFAULT_REQUEST_CPUS,
    DEFAULT_REQUEST_DISK_KIB,
    DEFAULT_REQUEST_MEMORY_MIB,
    VANILLA_UNIVERSE,
    JobDescription,
    Limits,
    SubmitDescription,
    SubmitError,
)
from glidewms.submit.reader import Reader

__all__ = [
    "CLUSTER_PLACEHOLDER",
    "DEFAULT_REQUEST_CPUS",
    "DEFAULT_REQUEST_DISK_KIB",
    "DEFAULT_REQUEST_MEMORY_MIB",
    "VANILLA_UNIVERSE",
    "JobDescription",
    "Limits",
    "StreamedSubmit",
    "SubmitDescription",
    "SubmitError",
    "load_submit",
    "parse_submit",
    "stream_submit",
]


def load_submit(
    path: Path,
    *,
    limits: Limits | None = None,
    stdin: TextIO | str | None = None,
    environ: Mapping[str, str] | None = None,
) -> SubmitDescription:
    """Parse a submit file; relative paths in it are relative to its directory.
    `queue ... from -` reads `stdin` (default: the process's standard input)."""
    path = Path(path)
    limits = limits or Limits.from_environ(environ)
    try:
        with open(path, "rb") as f:
            data = f.read(limits.max_file_bytes + 1)
    except OSError as exc:
        raise SubmitError(f"cannot read submit file: {exc.strerror or exc}", str(path)) from None
    text = decode(data, str(path), limits)
    return parse_submit(
        text,
        str(path),
        path.resolve().parent,
        limits=limits,
        stdin=stdin,
        environ=environ,
        submit_file=str(path.resolve()),
    )


@dataclass
class StreamedSubmit:
    """A submit description whose jobs are built one at a time as `jobs` is
    read (for clusters too large to hold: see `stream_submit`). `warnings`
    grows as jobs are built; read it once `jobs` is exhausted."""

    jobs: Iterator[JobDescription]
    source: str
    warnings: list[str]


def stream_submit(
    path: Path, *, limits: Limits | None = None, environ: Mapping[str, str] | None = None
) -> StreamedSubmit:
    """`load_submit`, with the jobs built lazily: the file, its includes and
    its item lists are read (and their errors raised) now; a job's own
    errors come as SubmitError while `jobs` is read."""
    path = Path(path)
    limits = limits or Limits.from_environ(environ)
    try:
        with open(path, "rb") as f:
            data = f.read(limits.max_file_bytes + 1)
    except OSError as exc:
        raise SubmitError(f"cannot read submit file: {exc.strerror or exc}", str(path)) from None
    text = decode(data, str(path), limits)
    ctx, reader = _read(
        text,
        str(path),
        path.resolve().parent,
        limits=limits,
        stdin=None,
        environ=environ,
        now=None,
        seed=None,
        submit_file=str(path.resolve()),
    )
    return StreamedSubmit(iter_jobs(ctx, reader), str(path), ctx.warnings)


def parse_submit(
    text: str,
    source: str = "<submit>",
    base_dir: Path | None = None,
    *,
    limits: Limits | None = None,
    stdin: TextIO | str | None = None,
    environ: Mapping[str, str] | None = None,
    now: float | None = None,
    seed: int | None = None,
    submit_file: str = "",
) -> SubmitDescription:
    """Parse submit-description text into jobs; any problem raises `SubmitError`.

    `base_dir` is what condor_submit's current directory would be (default: the
    cwd): the executable, `initialdir`, includes and `queue ... from/matching`
    resolve against it. `environ` is what `getenv` and `$ENV()` read (default:
    this process's), `now` the submit time, `seed` seeds `$RANDOM_*()`.
    """
    ctx, reader = _read(
        text,
        source,
        base_dir,
        limits=limits,
        stdin=stdin,
        environ=environ,
        now=now,
        seed=seed,
        submit_file=submit_file,
    )
    jobs = build_jobs(ctx, reader)
    return SubmitDescription(jobs=jobs, source=source, warnings=list(ctx.warnings))


def _read(
    text: str,
    source: str,
    base_dir: Path | None,
    *,
    limits: Limits | None,
    stdin: TextIO | str | None,
    environ: Mapping[str, str] | None,
    now: float | None,
    seed: int | None,
    submit_file: str,
) -> tuple[Context, Reader]:
    """The statements read, the queue statements' items listed; no job built."""
    if "\x00" in text:
        raise SubmitError("the submit description contains a NUL byte", source)
    ctx = Context(
        base_dir=Path(base_dir or Path.cwd()).resolve(),
        submit_file=submit_file,
        limits=limits or Limits(),
        stdin=stdin,
        rng=random.Random(seed),
        environ=dict(os.environ if environ is None else environ),
        now=time.time() if now is None else now,
    )
    reader = Reader(ctx)
    reader.read(text, source)
    reader.finish(source)
    return ctx, reader
