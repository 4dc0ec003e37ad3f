"""Where batch commands run and pilot files are written: the `Shell` interface.

`LocalShell` runs commands on the factory's host (as the factory's user, or
as another account through a command prefix); the SSH backend supplies one
that runs them on a remote login node (`ssh.SshShell`). A backend written
against `Shell` works in both places.
"""

from __future__ import annotations

import asyncio
import os
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from glidewms.factory.backends.base import BackendError

LOG_TAIL_BYTES = 256 * 1024
# sh -c script: write stdin to "$1" atomically, 0600, creating its directory.
WRITE_SECRET = 'umask 077 && mkdir -p "$(dirname "$1")" && cat > "$1.tmp" && mv -f "$1.tmp" "$1"'


def read_tail(path: Path, limit: int = LOG_TAIL_BYTES) -> str:
    """The last `limit` bytes of a local file (a pilot's log), or "" when it does not
    exist; bytes that do not decode are replaced, never an error."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - limit))
            return f.read().decode(errors="replace")
    except FileNotFoundError:
        return ""


@dataclass(frozen=True)
class CommandResult:
    returncode: int
    stdout: str
    stderr: str

    def describe(self, argv: Sequence[str]) -> str:
        """`sbatch` failed (rc 1): <its stderr>: the error an operator sees."""
        said = (self.stderr or self.stdout).strip().splitlines()
        return f"{argv[0]} failed (rc {self.returncode}): {' / '.join(said[-3:]) or 'no output'}"


class Shell(ABC):
    """Runs batch commands and handles files where the batch system is.

    `stages_token` is true when jobs run as another account than the factory
    (a command prefix such as `runuser -u USER --`, or SSH to a login node):
    the factory's own 0600 token file is not readable there, so the backend
    writes a copy, 0600 and owned by that account, next to the pilot logs.
    """

    stages_token: bool = False

    @abstractmethod
    async def run(
        self, argv: Sequence[str], *, stdin: str | None = None, timeout: float = 60.0
    ) -> CommandResult:
        """Run a command (no shell in between); a timeout raises BackendError."""

    @abstractmethod
    async def write_secret(self, path: str, data: str) -> None:
        """Write a file only its owner can read (0600), atomically."""

    @abstractmethod
    async def read_tail(self, path: str, limit: int = LOG_TAIL_BYTES) -> str:
        """The last `limit` bytes of a file, or "" when it does not exist."""

    @abstractmethod
    async def make_dirs(self, path: str) -> None:
        """Create a directory and its parents (mode 0700 for new ones)."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections; nothing to do for a local shell."""


class LocalShell(Shell):
    """Commands on the factory's own host, with the entry's batch environment.

    With a `prefix` (e.g. `runuser -u wmsuser --`, `sudo -n -u wmsuser --`),
    every command and every file operation runs as that account: a batch
    system that refuses root's jobs (Grid Engine), or a site account the
    factory's own user does not own.
    """

    def __init__(self, env: Mapping[str, str] | None = None, prefix: Sequence[str] = ()) -> None:
        self.env = {**os.environ, **(env or {})}
        self.prefix = list(prefix)
        self.stages_token = bool(self.prefix)

    async def run(
        self, argv: Sequence[str], *, stdin: str | None = None, timeout: float = 60.0
    ) -> CommandResult:
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.prefix,
                *argv,
                stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=self.env,
            )
        except OSError as exc:
            raise BackendError(f"cannot run {argv[0]}: {exc}") from exc
        try:
            out, err = await asyncio.wait_for(
                proc.communicate(stdin.encode() if stdin is not None else None), timeout
            )
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()
            raise BackendError(f"{argv[0]} did not answer within {timeout:.0f}s") from None
        return CommandResult(
            proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace")
        )

    async def write_secret(self, path: str, data: str) -> None:
        if self.prefix:  # as the batch account; the secret on stdin, never in argv
            argv = ["sh", "-c", WRITE_SECRET, "write_secret", path]
            result = await self.run(argv, stdin=data)
            if result.returncode != 0:
                raise BackendError(f"cannot write {path}: {result.describe(argv)}")
            return
        target = Path(path)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(data)
        os.replace(tmp, target)

    async def read_tail(self, path: str, limit: int = LOG_TAIL_BYTES) -> str:
        if self.prefix:
            result = await self.run(["tail", "-c", str(limit), path])
            return result.stdout if result.returncode == 0 else ""
        return read_tail(Path(path), limit)

    async def make_dirs(self, path: str) -> None:
        if self.prefix:
            argv = ["mkdir", "-p", "-m", "700", path]
            result = await self.run(argv)
            if result.returncode != 0:
                raise BackendError(result.describe(argv))
            return
        Path(path).mkdir(parents=True, exist_ok=True, mode=0o700)
