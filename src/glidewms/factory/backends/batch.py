"""What every command-line batch backend shares (Slurm, Grid Engine, PBS, LSF).

- `Shell`: where batch commands run and files are written. `LocalShell` runs
  them on the factory's host; the SSH backend supplies one that runs them on a
  remote login node. A backend written against `Shell` works in both places.
- `pilot_arrays()`: pilots of one submission grouped into job arrays. Their
  arguments differ only by `--glidein-id`, so one script serves a whole array
  and picks the id by task index: 1000 pilots are one `sbatch`, not 1000.
- `render_script()`: the job script from the template `data/pilot_array.sh`;
  the template holds the shape, the backends only the values. The bootstrap
  is embedded in the script, so the site needs no shared file system and no
  copy of glidewms: the rest of the pilot comes from the factory's stage.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shlex
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import glidewms
from glidewms.config.factory import BatchConfig, EntryConfig
from glidewms.factory.backends.base import (
    Backend,
    BackendContext,
    BackendError,
    PilotLogs,
    PilotState,
    PilotSubmission,
)

log = logging.getLogger(__name__)

TEMPLATE = "pilot_array.sh"
HEREDOC_END = "GLIDEWMS_BOOTSTRAP_END"
PLACEHOLDER = re.compile(r"@@([A-Z_]+)@@")
LOG_TAIL_BYTES = 256 * 1024
# sh -c script: write stdin to "$1" atomically, 0600, creating its directory.
WRITE_SECRET = 'umask 077 && mkdir -p "$(dirname "$1")" && cat > "$1.tmp" && mv -f "$1.tmp" "$1"'


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

    def __init__(self, env: Mapping[str, str] | None = None,
                 prefix: Sequence[str] = ()) -> None:  # fmt: skip
        self.env = {**os.environ, **(env or {})}
        self.prefix = list(prefix)
        self.stages_token = bool(self.prefix)

    async def run(
        self, argv: Sequence[str], *, stdin: str | None = None, timeout: float = 60.0
    ) -> CommandResult:
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.prefix, *argv,
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
        return CommandResult(proc.returncode or 0, out.decode(errors="replace"),
                             err.decode(errors="replace"))  # fmt: skip

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
        try:
            with open(path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - limit))
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    async def make_dirs(self, path: str) -> None:
        if self.prefix:
            argv = ["mkdir", "-p", "-m", "700", path]
            result = await self.run(argv)
            if result.returncode != 0:
                raise BackendError(result.describe(argv))
            return
        Path(path).mkdir(parents=True, exist_ok=True, mode=0o700)


@dataclass(frozen=True)
class PilotArray:
    """Pilots that share one job script: the same arguments but their ids."""

    arguments: tuple[str, ...]
    glidein_ids: tuple[str, ...]
    token_file: Path


def common_arguments(pilot: PilotSubmission) -> tuple[str, ...]:
    """The pilot's arguments without its own `--glidein-id ID` pair."""
    args = list(pilot.arguments)
    for i in range(len(args) - 1):
        if args[i] == "--glidein-id" and args[i + 1] == pilot.glidein_id:
            del args[i : i + 2]
            return tuple(args)
    return tuple(args)


def pilot_arrays(pilots: Sequence[PilotSubmission], max_size: int) -> list[PilotArray]:
    """Group pilots into arrays of at most `max_size`, keeping their order.

    Consecutive pilots with the same common arguments and token file share an
    array, so the ids the backend returns line up with `pilots`.
    """
    arrays: list[PilotArray] = []
    for pilot in pilots:
        args = common_arguments(pilot)
        last = arrays[-1] if arrays else None
        if (last is not None and last.arguments == args and last.token_file == pilot.token_file
                and len(last.glidein_ids) < max_size):  # fmt: skip
            arrays[-1] = PilotArray(args, (*last.glidein_ids, pilot.glidein_id), last.token_file)
        else:
            arrays.append(PilotArray(args, (pilot.glidein_id,), pilot.token_file))
    return arrays


def shell_words(words: Sequence[str]) -> str:
    return " ".join(shlex.quote(w) for w in words)


def template_text(name: str = TEMPLATE) -> str:
    return (Path(glidewms.__file__).resolve().parent / "data" / name).read_text()


def render(template: str, values: Mapping[str, str]) -> str:
    """Fill `@@NAME@@` placeholders; a missing or unused value is a bug, said loudly."""
    used: set[str] = set()

    def fill(match: re.Match[str]) -> str:
        key = match.group(1)
        if key not in values:
            raise KeyError(f"template placeholder @@{key}@@ has no value")
        used.add(key)
        return values[key]

    text = PLACEHOLDER.sub(fill, template)
    unused = set(values) - used
    if unused:
        raise KeyError(f"values not in the template: {sorted(unused)}")
    return text


def render_script(
    array: PilotArray,
    *,
    directives: Sequence[str],
    task_index: str,
    job_ref: str,
    token_file: str,
    bootstrap: str,
    environment: Mapping[str, str],
) -> str:
    """The job script of one pilot array (see data/pilot_array.sh).

    `task_index` is a shell arithmetic expression giving the 0-based task
    index (e.g. `${SGE_TASK_ID:-1} - 1`); `job_ref` a shell word naming the
    batch job in the pilot's log.
    """
    if any(line.strip() == HEREDOC_END for line in bootstrap.splitlines()):
        raise BackendError(f"the bootstrap contains the line {HEREDOC_END}: cannot embed it")
    exports = "\n".join(f"export {k}={shlex.quote(v)}" for k, v in sorted(environment.items()))
    return render(
        template_text(),
        {
            "DIRECTIVES": "\n".join(directives),
            "GLIDEIN_IDS": shell_words(array.glidein_ids),
            "TASK_INDEX": task_index,
            "TOKEN_FILE": shlex.quote(token_file),
            "ENVIRONMENT": exports,
            "BOOTSTRAP": bootstrap.rstrip("\n"),
            "JOB_REF": job_ref,
            "ARGUMENTS": shell_words(array.arguments),
        },
    )


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

    def __init__(self, context: BackendContext,
                 shell_factory: Callable[[EntryConfig], Shell] | None = None,
                 log_dirs: Callable[[EntryConfig], str] | None = None) -> None:  # fmt: skip
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
                lambda e: LocalShell(e.batch.env, e.batch.command_prefix))
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
    def directive_lines(prefix: str, lines: Sequence[str], batch: BatchConfig, *, queue: str,
                        account: str, project: str | None = None) -> list[str]:  # fmt: skip
        """`lines`, then the entry's queue, project and account as the system spells
        them (each option a format with one `{}`, e.g. `--partition={}`; project only
        where the system has one), then the entry's own `options`, each after the
        directive `prefix` (`#SBATCH`, `#$`)."""
        out = list(lines)
        for option, value in ((queue, batch.queue), (project, batch.project),
                              (account, batch.account)):  # fmt: skip
            if option and value:
                out.append(option.format(value))
        out += batch.options
        return [f"{prefix} {line}" for line in out]

    async def run_checked(self, shell: Shell, entry: EntryConfig, argv: Sequence[str],
                          stdin: str | None = None) -> CommandResult:  # fmt: skip
        """Run a batch command (the entry's timeout); a non-zero exit raises BackendError
        with what it said."""
        result = await shell.run(argv, stdin=stdin, timeout=entry.batch.command_timeout)
        if result.returncode != 0:
            raise BackendError(result.describe(argv))
        return result

    async def remove_in_chunks(self, shell: Shell, entry: EntryConfig, command: Sequence[str],
                               refs: Sequence[str], per_call: int) -> None:  # fmt: skip
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
    async def submit_array(self, shell: Shell, entry: EntryConfig, script: str,
                           count: int) -> list[str]:  # fmt: skip
        """Submit one array of `count` tasks; their job refs in task order."""

    @abstractmethod
    async def query(self, shell: Shell, entry: EntryConfig,
                    refs: Sequence[str]) -> dict[str, PilotState]:  # fmt: skip
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
        return PilotLogs(await shell.read_tail(f"{log_dir}/{out_name}"),
                         await shell.read_tail(f"{log_dir}/{err_name}"))  # fmt: skip

    async def close(self) -> None:
        for shell in self._shells.values():
            await shell.close()
        self._shells.clear()
