"""What every command-line batch backend shares (Slurm, Grid Engine, PBS, LSF).

`BatchBackend` is the flow: pilots grouped into arrays and submitted with a
rendered job script (`script.py`), their states asked in as few commands as
possible, removals and releases in chunks, interrupted submissions found by
the mark each array carries. Every command runs in a `Shell` (`shell.py`):
on the factory's host, or over SSH on a remote login node. A subclass says
only the commands and how to read what they print.
"""

from __future__ import annotations

import asyncio
import logging
from abc import abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import ClassVar

from glidewms.config.factory import EntryConfig
from glidewms.config.sites import BatchConfig
from glidewms.factory.backends.base import (
    Backend,
    BackendContext,
    BackendError,
    PilotLogs,
    PilotState,
    PilotSubmission,
)
from glidewms.factory.backends.script import PilotArray, pilot_arrays, render_script
from glidewms.factory.backends.shell import CommandResult, LocalShell, Shell

log = logging.getLogger(__name__)


def split_backend_id(backend_id: str) -> tuple[str, str]:
    """`<entry>/<batch job ref>` -> (entry, job ref)."""
    entry, sep, ref = backend_id.partition("/")
    if not sep or not entry or not ref:
        raise ValueError(f"not a batch backend id: {backend_id!r}")
    return entry, ref


def chunks(items: Sequence[str], size: int) -> list[Sequence[str]]:
    """Keep command lines short: a few hundred job ids per call."""
    return [items[i : i + size] for i in range(0, len(items), size)]


class BatchBackend(Backend):
    """The flow every command-line batch system follows; subclasses say the commands.

    A backend id is `<entry>/<job ref>` (Slurm `1234_5`, Grid Engine `1234.6`):
    the entry tells which shell (local or SSH, which environment) to ask and
    where the pilot's logs are. Subclasses implement `directives`,
    `submit_array`, `query` and `cancel`, and set `task_index`/`job_ref`.
    """

    task_index: ClassVar[str]  # shell arithmetic: the 0-based index of this task
    job_ref: ClassVar[str]  # shell word: this task's job reference, for the pilot log

    def __init__(
        self,
        context: BackendContext,
        shell_factory: Callable[[EntryConfig], Shell] | None = None,
        log_dirs: Callable[[EntryConfig], str] | None = None,
    ) -> None:
        super().__init__(context)
        self._shell_factory = shell_factory
        self._log_dirs = log_dirs
        self._shells: dict[object, Shell] = {}
        self._prepared: set[tuple[object, str]] = set()

    # -- where things are -------------------------------------------------------------

    def shell_key(self, entry: EntryConfig) -> object:
        """Entries with the same key share a shell and one status query per cycle."""
        if self._shell_factory is not None:
            return entry.name
        return (tuple(sorted(entry.batch.env.items())), tuple(entry.batch.command_prefix))

    def shell(self, entry: EntryConfig) -> Shell:
        key = self.shell_key(entry)
        if key not in self._shells:
            factory = self._shell_factory or (
                lambda e: LocalShell(e.batch.env, e.batch.command_prefix)
            )
            self._shells[key] = factory(entry)
        return self._shells[key]

    def log_dir(self, entry: EntryConfig) -> str:
        if entry.batch.log_dir:
            return entry.batch.log_dir
        if self._log_dirs is not None:  # e.g. the SSH backend: under the remote home
            return self._log_dirs(entry)
        return str(self.context.state_dir / "batch" / entry.name)

    def entry(self, name: str) -> EntryConfig | None:
        return self.context.entries.get(name)

    def staged_token_path(self, entry: EntryConfig, token_file: Path) -> str:
        """Where jobs of another account find their copy of `token_file`:
        credentials/<frontend>/<name> -> <log_dir>/tokens/<frontend>.<name>."""
        return f"{self.log_dir(entry)}/tokens/{token_file.parent.name}.{token_file.name}"

    async def token_path(self, entry: EntryConfig, shell: Shell, array: PilotArray) -> str:
        """Where the job finds the pilot token.

        On the factory's host, as its user: the factory's own 0600 file (a
        renewed token reaches running pilots as the file is replaced). Where
        jobs run as another account: a 0600 copy of that account, written at
        every submission and rewritten by `refresh_token` when the frontend
        renews the token, under `<log_dir>/tokens/`.
        """
        if not shell.stages_token:
            return str(array.token_file)
        return await self._write_copy(entry, shell, array.token_file)

    async def _write_copy(self, entry: EntryConfig, shell: Shell, token_file: Path) -> str:
        try:
            token = await asyncio.to_thread(token_file.read_text)
        except OSError as exc:
            raise BackendError(f"pilot token not readable: {exc.strerror}") from exc
        path = self.staged_token_path(entry, token_file)
        await shell.write_secret(path, token)
        return path

    def stages_token(self, entry: EntryConfig) -> bool:
        return self.shell(entry).stages_token

    async def refresh_token(self, entry: EntryConfig, token_file: Path) -> None:
        shell = self.shell(entry)
        if shell.stages_token:
            await self._write_copy(entry, shell, token_file)

    async def bootstrap_text(self) -> str:
        try:
            return await asyncio.to_thread(self.context.bootstrap.read_text)
        except OSError as exc:
            raise BackendError(f"bootstrap script not readable: {exc}") from exc

    # -- what subclasses share ---------------------------------------------------

    @staticmethod
    def directive_lines(
        prefix: str,
        lines: Sequence[str],
        batch: BatchConfig,
        *,
        queue: str,
        account: str,
        project: str | None = None,
    ) -> list[str]:
        """`lines`, then the entry's queue, project and account as the system spells
        them (each option a format with one `{}`, e.g. `--partition={}`; project only
        where the system has one), then the entry's own `options`, each after the
        directive `prefix` (`#SBATCH`, `#$`)."""
        out = list(lines)
        for option, value in (
            (queue, batch.queue),
            (project, batch.project),
            (account, batch.account),
        ):
            if option and value:
                out.append(option.format(value))
        out += batch.options
        return [f"{prefix} {line}" for line in out]

    async def run_checked(
        self, shell: Shell, entry: EntryConfig, argv: Sequence[str], stdin: str | None = None
    ) -> CommandResult:
        """Run a batch command (the entry's timeout); a non-zero exit raises BackendError
        with what it said."""
        result = await shell.run(argv, stdin=stdin, timeout=entry.batch.command_timeout)
        if result.returncode != 0:
            raise BackendError(result.describe(argv))
        return result

    async def remove_in_chunks(
        self,
        shell: Shell,
        entry: EntryConfig,
        command: Sequence[str],
        refs: Sequence[str],
        per_call: int,
    ) -> None:
        """`command` with the refs, a chunk at a time. Jobs that already ended make batch
        systems complain while the others go: a failure is logged (in the backend's
        own module's log), not raised."""
        logger = logging.getLogger(type(self).__module__)
        for part in chunks(list(refs), per_call):
            argv = [*command, *part]
            result = await shell.run(argv, timeout=entry.batch.command_timeout)
            if result.returncode != 0:
                logger.info("%s", result.describe(argv))

    # -- what subclasses say ------------------------------------------------------

    @abstractmethod
    def directives(self, entry: EntryConfig, array: PilotArray, log_dir: str) -> list[str]:
        """The job script's directive lines (`#SBATCH ...`, `#$ ...`)."""

    @abstractmethod
    async def submit_array(
        self, shell: Shell, entry: EntryConfig, script: str, count: int
    ) -> list[str]:
        """Submit one array of `count` tasks; their job refs in task order."""

    @abstractmethod
    async def query(
        self, shell: Shell, entry: EntryConfig, refs: Sequence[str]
    ) -> dict[str, PilotState]:
        """The state of each job ref, in as few commands as possible."""

    @abstractmethod
    async def cancel(self, shell: Shell, entry: EntryConfig, refs: Sequence[str]) -> None:
        """Remove these jobs from the batch system."""

    async def release_jobs(self, shell: Shell, entry: EntryConfig, refs: Sequence[str]) -> None:
        """Release held jobs (backends that can set `can_release`)."""
        raise BackendError(f"the {self.kind} backend cannot release held pilots")

    async def find_arrays(self, shell: Shell, entry: EntryConfig) -> dict[str, list[str]]:
        """The entry's arrays the batch system knows: {first glidein id: job refs in
        task order}, from the mark `directives` put on each array (see `adopt`)."""
        return {}

    def log_names(self, entry: EntryConfig, ref: str) -> tuple[str, str]:
        """The stdout and stderr file names of a job ref inside the log dir."""
        return f"{ref}.out", f"{ref}.err"

    # -- the Backend interface ------------------------------------------------------

    async def submit(self, entry: EntryConfig, pilots: Sequence[PilotSubmission]) -> list[str]:
        shell = self.shell(entry)
        log_dir = self.log_dir(entry)
        bootstrap = await self.bootstrap_text()
        submitted: list[str] = []
        try:
            if (self.shell_key(entry), log_dir) not in self._prepared:
                await shell.make_dirs(log_dir)
                self._prepared.add((self.shell_key(entry), log_dir))
            for array in pilot_arrays(pilots, entry.batch.array_size):
                script = render_script(
                    array,
                    directives=self.directives(entry, array, log_dir),
                    task_index=self.task_index,
                    job_ref=self.job_ref,
                    token_file=await self.token_path(entry, shell, array),
                    bootstrap=bootstrap,
                    environment=entry.environment,
                )
                refs = await self.submit_array(shell, entry, script, len(array.glidein_ids))
                submitted += [f"{entry.name}/{ref}" for ref in refs]
        except BackendError as exc:
            raise BackendError(str(exc), submitted) from exc
        except OSError as exc:
            raise BackendError(f"{type(exc).__name__}: {exc}", submitted) from exc
        return submitted

    def _by_shell(
        self, backend_ids: Sequence[str]
    ) -> tuple[dict[object, tuple[EntryConfig, dict[str, str]]], list[str]]:
        """Group ids by shell: {key: (an entry of it, {ref: backend id})}, and bad ids."""
        groups: dict[object, tuple[EntryConfig, dict[str, str]]] = {}
        bad: list[str] = []
        for backend_id in backend_ids:
            try:
                name, ref = split_backend_id(backend_id)
            except ValueError:
                bad.append(backend_id)
                continue
            entry = self.entry(name)
            if entry is None:
                bad.append(backend_id)
                continue
            groups.setdefault(self.shell_key(entry), (entry, {}))[1][ref] = backend_id
        return groups, bad

    async def status(self, backend_ids: Sequence[str]) -> dict[str, PilotState]:
        groups, bad = self._by_shell(backend_ids)
        out = dict.fromkeys(bad, PilotState.unknown)
        for entry, refs in groups.values():
            try:
                seen = await self.query(self.shell(entry), entry, list(refs))
            except BackendError as exc:
                log.warning("%s status at entry %s failed: %s", self.kind, entry.name, exc)
                seen = {}
            for ref, backend_id in refs.items():
                out[backend_id] = seen.get(ref, PilotState.unknown)
        return out

    async def remove(self, backend_ids: Sequence[str]) -> None:
        groups, _ = self._by_shell(backend_ids)
        for entry, refs in groups.values():
            await self.cancel(self.shell(entry), entry, list(refs))

    async def release(self, backend_ids: Sequence[str]) -> None:
        groups, _ = self._by_shell(backend_ids)
        for entry, refs in groups.values():
            await self.release_jobs(self.shell(entry), entry, list(refs))

    async def adopt(self, entry: EntryConfig, glidein_ids: Sequence[str]) -> dict[str, str]:
        """Arrays carry their first glidein id; task k is the k-th pilot from it.

        `pilot_arrays()` cuts a submission into arrays of consecutive pilots, so
        with the unrecorded glideins in submission order, an array marked with
        glidein X holds X and the pilots that follow it.
        """
        arrays = await self.find_arrays(self.shell(entry), entry)
        found: dict[str, str] = {}
        for i, glidein_id in enumerate(glidein_ids):
            for k, ref in enumerate(arrays.get(glidein_id, [])):
                if i + k < len(glidein_ids):
                    found[glidein_ids[i + k]] = f"{entry.name}/{ref}"
        return found

    async def logs(self, backend_id: str) -> PilotLogs:
        name, ref = split_backend_id(backend_id)
        entry = self.entry(name)
        if entry is None:
            return PilotLogs("", "")
        shell, log_dir = self.shell(entry), self.log_dir(entry)
        out_name, err_name = self.log_names(entry, ref)
        return PilotLogs(
            await shell.read_tail(f"{log_dir}/{out_name}"),
            await shell.read_tail(f"{log_dir}/{err_name}"),
        )

    async def close(self) -> None:
        for shell in self._shells.values():
            await shell.close()
        self._shells.clear()
