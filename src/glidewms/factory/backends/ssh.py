"""SSH backend (BOSCO style): a remote login node's batch system, driven over SSH.

The batch logic is not repeated here: an entry's `ssh.batch_system` picks the
backend of that batch system (Slurm, Grid Engine, ...) and this module only
supplies the `Shell` it runs in, `SshShell`:

- commands run over an asyncssh connection to `ssh.user@ssh.host`,
  authenticated with the entry's own key (`ssh.key_file`) and the server's
  host key checked against `ssh.known_hosts` (never skipped: an unknown or
  changed host key fails the submission, with the reason in the entry ad);
- files go over SFTP: the log directory under `ssh.remote_dir` (relative to
  the remote home), the pilot token as a 0600 file there (the job script
  names the file; the token never travels in a command line);
- connections are opened on demand, reused, and capped at
  `ssh.max_connections` per login node and account, shared by every entry
  that goes there; one that breaks is dropped and replaced on next use.

The key's path and content never appear in logs or errors.
"""

from __future__ import annotations

import asyncio
import logging
import os
import posixpath
import shlex
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TypeVar

try:
    import asyncssh
except ModuleNotFoundError as exc:  # the `ssh` extra: only SSH entries need it
    if exc.name != "asyncssh":
        raise
    HAS_ASYNCSSH = False  # and the name `asyncssh` stays unbound: SshPool refuses first
else:
    HAS_ASYNCSSH = True

from glidewms.config.factory import EntryConfig
from glidewms.config.sites import SshConfig
from glidewms.extras import MissingExtra
from glidewms.factory.backends.base import (
    Backend,
    BackendContext,
    BackendError,
    PilotLogs,
    PilotState,
    PilotSubmission,
)
from glidewms.factory.backends.batch import BatchBackend, split_backend_id
from glidewms.factory.backends.lsf import LsfBackend
from glidewms.factory.backends.pbs import PbsBackend
from glidewms.factory.backends.sge import SgeBackend
from glidewms.factory.backends.shell import LOG_TAIL_BYTES, CommandResult, Shell
from glidewms.factory.backends.slurm import SlurmBackend

log = logging.getLogger(__name__)

T = TypeVar("T")

# The batch systems an SSH entry can drive (`ssh.batch_system`).
REMOTE_BACKENDS: dict[str, type[BatchBackend]] = {
    SlurmBackend.kind: SlurmBackend,
    SgeBackend.kind: SgeBackend,
    PbsBackend.kind: PbsBackend,
    LsfBackend.kind: LsfBackend,
}
CONNECT_TIMEOUT = 30.0


class SshPool:
    """Connections to one login node as one account: opened on demand, reused, capped.

    At most `max_connections` are open, because a connection is only ever
    used by the holder of one of `max_connections` slots.
    """

    def __init__(self, contact: SshConfig, entry: str) -> None:
        if not HAS_ASYNCSSH:
            raise MissingExtra(f"entry {entry!r}, reached over SSH,", "asyncssh")
        self.contact = contact
        self.entry = entry  # named in errors instead of the key's path
        self._slots = asyncio.Semaphore(contact.max_connections)
        self._idle: list[asyncssh.SSHClientConnection] = []
        self.opened = 0  # connections opened so far (reuse shows as a small number)

    def scrub(self, text: str) -> str:
        key = str(self.contact.key_file)
        return text.replace(key, f"<key_file of entry {self.entry}>")

    async def _connect(self) -> asyncssh.SSHClientConnection:
        c = self.contact
        known = c.known_hosts or Path(os.path.expanduser("~/.ssh/known_hosts"))
        where = f"ssh {c.user}@{c.host}:{c.port}"
        if not known.is_file():
            raise BackendError(
                f"{where}: known_hosts file {known} does not exist (host keys are always checked)"
            )
        try:
            conn = await asyncio.wait_for(
                asyncssh.connect(
                    c.host,
                    port=c.port,
                    username=c.user,
                    client_keys=[str(c.key_file)],
                    known_hosts=str(known),
                    agent_path=None,
                    preferred_auth="publickey",
                    connect_timeout=CONNECT_TIMEOUT,
                ),
                CONNECT_TIMEOUT,
            )
        except (asyncssh.Error, OSError, ValueError, asyncio.TimeoutError) as exc:
            reason = str(exc) or type(exc).__name__
            raise BackendError(self.scrub(f"{where}: cannot connect: {reason}")) from None
        self.opened += 1
        log.info("%s: connected (%d opened so far)", where, self.opened)
        return conn

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncssh.SSHClientConnection]:
        async with self._slots:
            conn = self._idle.pop() if self._idle else await self._connect()
            broken = False
            try:
                yield conn
            except (asyncssh.Error, OSError):
                broken = True
                raise
            finally:
                if broken or conn.is_closed():
                    conn.close()
                else:
                    self._idle.append(conn)

    async def close(self) -> None:
        while self._idle:
            conn = self._idle.pop()
            conn.close()
            await conn.wait_closed()


class SshShell(Shell):
    """Batch commands and files on a remote login node (see the module docstring)."""

    stages_token = True

    def __init__(self, pool: SshPool, env: Mapping[str, str] | None = None) -> None:
        self.pool = pool
        self.env = dict(env or {})

    def command_line(self, argv: Sequence[str]) -> str:
        """One remote command line; the batch environment through `env`, all quoted."""
        words = [
            *(["env", *(f"{k}={v}" for k, v in sorted(self.env.items()))] if self.env else []),
            *argv,
        ]
        return shlex.join(words)

    async def run(
        self, argv: Sequence[str], *, stdin: str | None = None, timeout: float = 60.0
    ) -> CommandResult:
        where = f"{self.pool.contact.user}@{self.pool.contact.host}"
        try:
            async with self.pool.connection() as conn:
                done = await conn.run(
                    self.command_line(argv), input=stdin, check=False, timeout=timeout
                )
        except asyncssh.TimeoutError:
            message = f"{argv[0]} on {where} did not answer within {timeout:.0f}s"
            raise BackendError(message) from None
        except (asyncssh.Error, OSError) as exc:
            raise BackendError(self.pool.scrub(f"{argv[0]} on {where}: {exc}")) from None
        code = done.returncode if done.returncode is not None else 255
        return CommandResult(code, _text(done.stdout), _text(done.stderr))

    async def _sftp(
        self, what: str, path: str, action: Callable[[asyncssh.SFTPClient], Awaitable[T]]
    ) -> T:
        try:
            async with self.pool.connection() as conn, conn.start_sftp_client() as sftp:
                return await action(sftp)
        except (asyncssh.Error, OSError) as exc:
            raise BackendError(self.pool.scrub(f"sftp {what} {path}: {exc}")) from None

    async def write_secret(self, path: str, data: str) -> None:
        async def write(sftp: asyncssh.SFTPClient) -> None:
            parent = posixpath.dirname(path)
            if parent:
                await sftp.makedirs(
                    parent, attrs=asyncssh.SFTPAttrs(permissions=0o700), exist_ok=True
                )
            tmp = f"{path}.tmp"
            async with sftp.open(tmp, "w", attrs=asyncssh.SFTPAttrs(permissions=0o600)) as f:
                await f.write(data)
            await sftp.chmod(tmp, 0o600)  # a stale tmp keeps its old mode on open
            await sftp.posix_rename(tmp, path)

        await self._sftp("write", path, write)

    async def read_tail(self, path: str, limit: int = LOG_TAIL_BYTES) -> str:
        async def read(sftp: asyncssh.SFTPClient) -> str:
            try:
                size = (await sftp.stat(path)).size or 0
            except asyncssh.SFTPNoSuchFile:
                return ""
            async with sftp.open(path, "rb") as f:
                await f.seek(max(0, size - limit))
                data = await f.read(limit)
            return _text(data)

        return await self._sftp("read", path, read)

    async def make_dirs(self, path: str) -> None:
        async def make(sftp: asyncssh.SFTPClient) -> None:
            await sftp.makedirs(path, attrs=asyncssh.SFTPAttrs(permissions=0o700), exist_ok=True)

        await self._sftp("mkdir", path, make)

    async def home(self) -> str:
        """The remote account's home directory (where relative paths start)."""

        async def realpath(sftp: asyncssh.SFTPClient) -> str:
            return str(await sftp.realpath("."))

        return await self._sftp("realpath", ".", realpath)

    async def close(self) -> None:
        await self.pool.close()


def _text(data: object) -> str:
    if data is None:
        return ""
    if isinstance(data, bytes):
        return data.decode(errors="replace")
    return str(data)


class SshBackend(Backend):
    """Pilots on a remote cluster: its batch system's backend over an `SshShell`.

    Release and adoption are the remote batch system's own (`scontrol release`,
    `qrls`...; the marks on its arrays), run over the same connections.
    """

    kind = "ssh"
    can_release = True  # every batch system in REMOTE_BACKENDS can

    def __init__(self, context: BackendContext) -> None:
        super().__init__(context)
        self._pools: dict[tuple[object, ...], SshPool] = {}
        self._homes: dict[str, str] = {}
        self._remote: dict[str, BatchBackend] = {
            name: cls(context, shell_factory=self._shell, log_dirs=self._log_dir)
            for name, cls in REMOTE_BACKENDS.items()
        }

    @staticmethod
    def _contact(entry: EntryConfig) -> SshConfig:
        if entry.ssh is None:
            raise BackendError(f"entry {entry.name}: backend ssh needs an ssh: section")
        return entry.ssh

    def pool(self, entry: EntryConfig) -> SshPool:
        c = self._contact(entry)
        key = (c.host, c.port, c.user, str(c.key_file), str(c.known_hosts))
        if key not in self._pools:
            self._pools[key] = SshPool(c, entry.name)
        return self._pools[key]

    def _shell(self, entry: EntryConfig) -> Shell:
        return SshShell(self.pool(entry), entry.batch.env)

    def _log_dir(self, entry: EntryConfig) -> str:
        remote = self._contact(entry).remote_dir.rstrip("/")
        if not remote.startswith("/"):
            remote = f"{self._homes.get(entry.name, '.')}/{remote}"
        return f"{remote}/{entry.name}"

    def remote(self, entry: EntryConfig) -> BatchBackend:
        kind = self._contact(entry).batch_system
        try:
            return self._remote[kind]
        except KeyError:
            raise BackendError(f"entry {entry.name}: no SSH support for {kind} yet") from None

    async def _prepare(self, entry: EntryConfig) -> BatchBackend:
        """The entry's batch backend, with the remote home known (absolute paths)."""
        remote = self.remote(entry)
        if entry.name not in self._homes:
            shell = remote.shell(entry)
            assert isinstance(shell, SshShell)
            self._homes[entry.name] = await shell.home()
        return remote

    async def submit(self, entry: EntryConfig, pilots: Sequence[PilotSubmission]) -> list[str]:
        return await (await self._prepare(entry)).submit(entry, pilots)

    def stages_token(self, entry: EntryConfig) -> bool:
        return True  # pilots read the copy written over SFTP on the login node

    async def refresh_token(self, entry: EntryConfig, token_file: Path) -> None:
        await (await self._prepare(entry)).refresh_token(entry, token_file)

    def _by_remote(self, backend_ids: Sequence[str]) -> tuple[dict[str, list[str]], list[str]]:
        groups: dict[str, list[str]] = {}
        lost: list[str] = []
        for backend_id in backend_ids:
            try:
                entry = self.context.entries.get(split_backend_id(backend_id)[0])
            except ValueError:
                entry = None
            if entry is None or entry.ssh is None or entry.ssh.batch_system not in self._remote:
                lost.append(backend_id)
            else:
                groups.setdefault(entry.ssh.batch_system, []).append(backend_id)
        return groups, lost

    async def status(self, backend_ids: Sequence[str]) -> dict[str, PilotState]:
        groups, lost = self._by_remote(backend_ids)
        out = dict.fromkeys(lost, PilotState.unknown)
        for kind, ids in groups.items():
            out.update(await self._remote[kind].status(ids))
        return out

    async def remove(self, backend_ids: Sequence[str]) -> None:
        groups, _ = self._by_remote(backend_ids)
        for kind, ids in groups.items():
            await self._remote[kind].remove(ids)

    async def release(self, backend_ids: Sequence[str]) -> None:
        groups, _ = self._by_remote(backend_ids)
        for kind, ids in groups.items():
            await self._remote[kind].release(ids)

    async def adopt(self, entry: EntryConfig, glidein_ids: Sequence[str]) -> dict[str, str]:
        return await (await self._prepare(entry)).adopt(entry, glidein_ids)

    async def logs(self, backend_id: str) -> PilotLogs:
        entry = self.context.entries.get(split_backend_id(backend_id)[0])
        if entry is None:
            return PilotLogs("", "")
        return await (await self._prepare(entry)).logs(backend_id)

    async def close(self) -> None:
        for remote in self._remote.values():
            await remote.close()
        for pool in self._pools.values():
            await pool.close()
