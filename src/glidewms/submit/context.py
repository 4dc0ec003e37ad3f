"""Everything parsing reads besides the submit text: the submit directory, the
submitter's environment, the clock, standard input, the limits, and the
predefined macros condor_submit provides (`$(ARCH)`, `$(Year)`, `$(JobId)`...).

Collected in one object so that tests can pin each of them (a fixed time, a
fixed environment, a seeded random source) and so that nothing below reads
the process's global state directly.
"""

from __future__ import annotations

import os
import platform
import random
import selectors
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from glidewms.glidein.agent.resources import htcondor_arch, os_attributes, read_os_release
from glidewms.submit.conditions import condor_version
from glidewms.submit.functions import FunctionContext
from glidewms.submit.macros import CLUSTER_SENTINEL
from glidewms.submit.model import Limits, SubmitError


def host_macros() -> dict[str, str]:
    """ARCH, OPSYS, OPSYSANDVER, OPSYSMAJORVER, OPSYSVER of the submit machine."""
    release = read_os_release()
    attrs = os_attributes(release)
    version = release.get("VERSION_ID", "")
    major, _, minor = version.partition(".")
    opsysver = (
        (int(major) * 100 + int(minor[:2] or 0))
        if major.isdigit() and (minor[:2] or "0").isdigit()
        else 0
    )
    is_linux = sys.platform.startswith("linux")
    return {
        "arch": htcondor_arch(platform.machine()),
        "opsys": "LINUX" if is_linux else sys.platform.upper(),
        "opsysandver": str(attrs.get("OpSysAndVer", "")),
        "opsysmajorver": str(attrs.get("OpSysMajorVer", "")),
        "opsysver": str(opsysver) if opsysver else "",
        "islinux": "1" if is_linux else "0",
        "iswindows": "0",
        "spool": "",
    }


@dataclass
class Context:
    base_dir: Path
    submit_file: str  # full path, "" when the text did not come from a file
    limits: Limits = field(default_factory=Limits)
    environ: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    now: float = field(default_factory=time.time)
    stdin: TextIO | str | None = None
    rng: random.Random = field(default_factory=random.Random)
    login: str = ""
    host: dict[str, str] = field(default_factory=host_macros)
    warnings: list[str] = field(default_factory=list)
    version: tuple[int, int, int] = field(default_factory=condor_version)
    functions: FunctionContext = field(init=False)
    defaults: dict[str, str] = field(init=False)
    parse_live: dict[str, str] = field(init=False)
    _stdin_used: bool = False
    _exists: dict[Path, tuple[bool, bool]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.functions = FunctionContext(self.environ, self.rng, self.base_dir)
        stamp = time.localtime(self.now)
        self.defaults = {
            **self.host,
            "year": time.strftime("%Y", stamp),
            "month": time.strftime("%m", stamp),
            "day": time.strftime("%d", stamp),
            "submit_time": str(int(self.now)),
            "submit_file": self.submit_file,
            "jobid": "$(ClusterId).$(ProcId)",
            "joblistid": "$(ClusterId)",
            "node": "",
            "taskid": "0",
            "step": "0",
            "row": "0",
            "itemindex": "0",
            "request_cpus": "$(RequestCPUs)",
            "request_memory": "$(RequestMemory)",
            "vm_memory": "$(Request_Memory)",
            "vm_vcpus": "$(Request_CPUs)",
        }
        self.parse_live = {
            "cluster": CLUSTER_SENTINEL,
            "clusterid": CLUSTER_SENTINEL,
            "process": "0",
            "procid": "0",
        }
        if not self.login:
            self.login = self.environ.get("USER") or self.environ.get("LOGNAME") or _login_name()

    def stat(self, path: Path) -> tuple[bool, bool]:
        """(exists, is a directory), looked up once per path and submit."""
        found = self._exists.get(path)
        if found is None:
            found = self._exists[path] = (path.exists(), path.is_dir())
        return found

    def warn(self, source: str, line: int | None, text: str) -> None:
        where = f"{source}:{line}" if line is not None else source
        message = f"{where}: {text}"
        if message not in self.warnings and len(self.warnings) < 1000:
            self.warnings.append(message)

    def read_bytes(
        self, path: Path, source: str, line: int, limit: int, what: str = "include"
    ) -> bytes:
        try:
            size = path.stat().st_size
            if size > limit:
                raise SubmitError(f"{what}: {path} is larger than {limit} bytes", source, line)
            with open(path, "rb") as f:
                return f.read(limit + 1)
        except OSError as exc:
            raise SubmitError(
                f"{what}: cannot read {path}: {exc.strerror or exc}", source, line
            ) from None

    def read_stdin(self, source: str, line: int) -> str:
        """`queue ... from -`: standard input, read once (as condor_submit can)."""
        if self._stdin_used:
            raise SubmitError(
                "queue from -: standard input was already read by an earlier queue statement",
                source,
                line,
            )
        self._stdin_used = True
        stream: TextIO | str | None = self.stdin
        if stream is None:
            stream = sys.stdin
        if isinstance(stream, str):
            text = stream
        else:
            if stream.isatty():
                raise SubmitError(
                    "queue from -: standard input is a terminal; redirect the "
                    "item list into glidewms submit",
                    source,
                    line,
                )
            text = stream.read(self.limits.max_items_file_bytes + 1)
        if len(text) > self.limits.max_items_file_bytes:
            raise SubmitError(
                f"queue from -: more than {self.limits.max_items_file_bytes} "
                "bytes on standard input",
                source,
                line,
            )
        return text

    def run_command(self, command: str, source: str, line: int, what: str) -> str:
        """The standard output of `command`, run in the submit directory with the
        submitter's environment, as condor_submit runs `from cmd |` and
        `include : cmd |`: split at white space and run directly, with no shell (no
        quoting, redirection or `$VAR`, exactly as HTCondor). With
        GLIDEWMS_SUBMIT_RUN_COMMANDS=0 they are refused: checking a file then
        runs nothing."""
        if not self.limits.run_commands:
            raise SubmitError(
                f"{what} {command!r} |: commands named in a submit file are not run "
                "here (GLIDEWMS_SUBMIT_RUN_COMMANDS=0); unset it, or run the command "
                "yourself and use its output file",
                source,
                line,
            )
        limit = self.limits.max_items_file_bytes
        try:
            status, out, err = _bounded_run(
                command.split(), self.base_dir, self.environ, limit, self.limits.command_seconds
            )
        except OSError as exc:
            raise SubmitError(
                f"{what}: cannot run {command!r}: {exc.strerror or exc}", source, line
            ) from None
        if status is None:
            raise SubmitError(
                f"{what}: command {command!r} did not finish within "
                f"{self.limits.command_seconds} s (GLIDEWMS_SUBMIT_COMMAND_SECONDS)",
                source,
                line,
            )
        if len(out) > limit:
            raise SubmitError(
                f"{what}: command {command!r} printed more than {limit} bytes", source, line
            )
        if status != 0:
            tail = err.decode("utf-8", "replace").strip()[-300:]
            raise SubmitError(
                f"{what}: command {command!r} failed with exit status {status}"
                + (f": {tail}" if tail else ""),
                source,
                line,
            )
        try:
            return out.decode("utf-8")
        except UnicodeDecodeError:
            raise SubmitError(
                f"{what}: the output of {command!r} is not UTF-8 text", source, line
            ) from None


def _bounded_run(
    argv: list[str], cwd: Path, environ: Mapping[str, str], limit: int, seconds: int
) -> tuple[int | None, bytes, bytes]:
    """(exit status or None when out of time, stdout, last bytes of stderr): the
    command is killed once it prints more than `limit` bytes or runs past
    `seconds`, so that neither a chatty nor a stuck command holds this process."""
    proc = subprocess.Popen(
        argv,
        cwd=cwd,
        env=dict(environ),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    out, err = bytearray(), bytearray()
    deadline = time.monotonic() + seconds
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ, out)
        sel.register(proc.stderr, selectors.EVENT_READ, err)
        while sel.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                proc.kill()
                proc.wait()
                return None, bytes(out), bytes(err)
            for key, _ in sel.select(left):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    sel.unregister(key.fileobj)
                    continue
                buf: bytearray = key.data
                buf += chunk
                if buf is err and len(err) > 4096:
                    del err[:-4096]
                if len(out) > limit:
                    proc.kill()
                    proc.wait()
                    return proc.returncode, bytes(out), bytes(err)
    proc.stdout.close()
    proc.stderr.close()
    try:
        return proc.wait(max(deadline - time.monotonic(), 0.1)), bytes(out), bytes(err)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return None, bytes(out), bytes(err)


def _login_name() -> str:
    try:
        import pwd

        return pwd.getpwuid(os.getuid()).pw_name
    except (ImportError, KeyError):
        return "unknown"


ErrorAt = Callable[[str], SubmitError]
