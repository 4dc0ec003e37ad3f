"""Local backend: each pilot is a process on the factory's own machine.

The embedded set-up and the tests use it; it is also the reference for what a
backend must do. A pilot is `bash glidein_startup.sh <options>` in a session of
its own (so removal reaches the whole process group), with GLIDEIN_TOKEN_FILE
naming the 0600 token file and its output in
`<state_dir>/logs/<entry>/<glidein_id>.out|.err`.

A backend id is `<entry>/<glidein_id>/<pid>/<starttime>`: the process start
time (from /proc) guards against a recycled pid after a factory restart, when
the Popen objects are gone and /proc is all there is.

The pilots share the machine with the services, so their jobs are isolated
from them (backends/isolation.py): the mode is decided for every local entry
when the backend is made (a factory that cannot isolate them does not start,
unless the entry allows it) and given to each pilot as `--set GLIDEIN_Job_*`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from glidewms.config.factory import EntryConfig
from glidewms.factory.backends.base import (
    Backend,
    BackendContext,
    BackendError,
    PilotLogs,
    PilotState,
    PilotSubmission,
)
from glidewms.factory.backends.isolation import (
    Choice,
    IsolationUnavailable,
    decide,
    pilot_settings,
)
from glidewms.factory.backends.shell import read_tail

log = logging.getLogger(__name__)


class Observation(Enum):
    """What can be seen of a local pilot process."""

    alive = "alive"
    exited_ok = "exited_ok"  # exit code 0
    exited_error = "exited_error"  # exit code > 0
    killed = "killed"  # ended by a signal we did not send
    killed_by_us = "killed_by_us"  # ended by our SIGTERM/SIGKILL
    zombie = "zombie"  # exited, not yet reaped by its (former) parent
    gone = "gone"  # no such process (or a recycled pid): exit status unknown


STATE_MAP: dict[Observation, PilotState] = {
    Observation.alive: PilotState.running,
    Observation.exited_ok: PilotState.finished,
    Observation.exited_error: PilotState.failed,
    Observation.killed: PilotState.failed,
    Observation.killed_by_us: PilotState.removed,
    Observation.zombie: PilotState.finished,
    Observation.gone: PilotState.finished,
}


@dataclass(frozen=True, kw_only=True)
class LocalId:
    """A local pilot's backend id: its entry, glidein, and the process (pid and start
    time, so a reused pid is not taken for it)."""

    entry: str
    glidein_id: str
    pid: int
    starttime: int

    def __str__(self) -> str:
        return f"{self.entry}/{self.glidein_id}/{self.pid}/{self.starttime}"

    @classmethod
    def parse(cls, text: str) -> LocalId:
        try:
            entry, glidein_id, pid, starttime = text.split("/")
            return cls(entry=entry, glidein_id=glidein_id, pid=int(pid), starttime=int(starttime))
        except ValueError:
            raise ValueError(f"not a local backend id: {text!r}") from None


def read_proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks) of a process, or None if absent."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) may contain spaces and parentheses: split after it.
    fields = text.rsplit(")", 1)[1].split()
    return fields[0], int(fields[19])


class LocalBackend(Backend):
    """Pilots as child processes; status from Popen, or /proc after a restart."""

    kind = "local"

    def __init__(self, context: BackendContext) -> None:
        super().__init__(context)
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        self._final: dict[str, PilotState] = {}
        self._removing: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._isolation: dict[tuple[str, str], Choice] = {}
        for entry in context.entries.values():
            if entry.backend == self.kind:
                self.isolation(entry)  # IsolationUnavailable: the factory does not start

    def isolation(self, entry: EntryConfig) -> Choice:
        """How `entry`'s pilots isolate their jobs (decided once per configuration)."""
        key = (entry.name, entry.isolation.model_dump_json())
        if key not in self._isolation:
            choice = decide(entry)
            level = logging.WARNING if choice.mode == "none" else logging.INFO
            log.log(level, "entry %s: %s", entry.name, choice.reason)
            self._isolation[key] = choice
        return self._isolation[key]

    # -- paths --------------------------------------------------------------------

    def log_paths(self, entry: str, glidein_id: str) -> tuple[Path, Path]:
        directory = self.context.state_dir / "logs" / entry
        return directory / f"{glidein_id}.out", directory / f"{glidein_id}.err"

    # -- submit -------------------------------------------------------------------

    async def submit(self, entry: EntryConfig, pilots: Sequence[PilotSubmission]) -> list[str]:
        bootstrap = self.context.bootstrap
        if not bootstrap.is_file():
            raise BackendError(f"bootstrap script not found: {bootstrap}")
        try:
            settings = pilot_settings(self.isolation(entry), entry, self.context.state_dir)
        except IsolationUnavailable as exc:
            raise BackendError(str(exc)) from None
        work = self.context.state_dir / "work" / entry.name
        work.mkdir(parents=True, exist_ok=True)
        started: list[str] = []
        for pilot in pilots:
            try:
                started.append(str(self._start(entry, pilot, work, settings)))
            except OSError as exc:
                raise BackendError(
                    f"cannot start pilot {pilot.glidein_id}: {exc}", started
                ) from exc
        return started

    def _start(
        self, entry: EntryConfig, pilot: PilotSubmission, work: Path, settings: list[str]
    ) -> LocalId:
        out_path, err_path = self.log_paths(entry.name, pilot.glidein_id)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        # the entry's environment, as the batch backends give it (never the token path)
        env = {**os.environ, **entry.environment, "GLIDEIN_TOKEN_FILE": str(pilot.token_file)}
        with out_path.open("ab") as out, err_path.open("ab") as err:
            proc = subprocess.Popen(
                ["bash", str(self.context.bootstrap), *pilot.arguments, *settings],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                cwd=work,
                env=env,
                start_new_session=True,
                close_fds=True,
            )
        # The child is ours and unreaped, so its /proc entry is there to read.
        stat = read_proc_stat(proc.pid)
        local_id = LocalId(
            entry=entry.name,
            glidein_id=pilot.glidein_id,
            pid=proc.pid,
            starttime=stat[1] if stat else 0,
        )
        self._children[str(local_id)] = proc
        log.info("started pilot %s as pid %d", pilot.glidein_id, proc.pid)
        return local_id

    # -- status -------------------------------------------------------------------

    def observe(self, backend_id: str) -> Observation:
        proc = self._children.get(backend_id)
        if proc is not None:
            code = proc.poll()  # reaps the child once it has exited
            if code is None:
                return Observation.alive
            if code == 0:
                return Observation.exited_ok
            if code < 0:
                ours = backend_id in self._removing
                return Observation.killed_by_us if ours else Observation.killed
            return Observation.exited_error
        local_id = LocalId.parse(backend_id)
        stat = read_proc_stat(local_id.pid)
        if stat is None or stat[1] != local_id.starttime:
            return Observation.gone
        if stat[0] in ("Z", "X"):
            return Observation.zombie
        return Observation.alive

    def _state(self, backend_id: str) -> PilotState:
        if backend_id in self._final:
            return self._final[backend_id]
        state = STATE_MAP[self.observe(backend_id)]
        if state is not PilotState.running:
            # Remember the answer and drop the (reaped) child.
            self._final[backend_id] = state
            self._children.pop(backend_id, None)
        return state

    async def status(self, backend_ids: Sequence[str]) -> dict[str, PilotState]:
        out: dict[str, PilotState] = {}
        for backend_id in backend_ids:
            try:
                out[backend_id] = self._state(backend_id)
            except ValueError:
                log.warning("local backend cannot parse id %r", backend_id)
                out[backend_id] = PilotState.unknown
        return out

    # -- remove -------------------------------------------------------------------

    def _signal(self, backend_id: str, signum: int) -> bool:
        """Signal the pilot's process group if its leader is still ours to signal."""
        if self.observe(backend_id) is not Observation.alive:
            return False
        pid = LocalId.parse(backend_id).pid
        try:
            os.killpg(pid, signum)
        except ProcessLookupError:
            return False
        except PermissionError:
            log.warning("not allowed to signal pilot process group %d", pid)
            return False
        return True

    async def remove(self, backend_ids: Sequence[str]) -> None:
        for backend_id in backend_ids:
            self._removing.add(backend_id)
            if self._signal(backend_id, signal.SIGTERM):
                task = asyncio.create_task(self._escalate(backend_id))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _escalate(self, backend_id: str) -> None:
        """SIGKILL the group if the pilot outlives the grace period after SIGTERM."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.context.kill_grace
        while loop.time() < deadline:
            if self.observe(backend_id) is not Observation.alive:
                return
            await asyncio.sleep(min(0.5, max(0.01, deadline - loop.time())))
        if self._signal(backend_id, signal.SIGKILL):
            log.info("pilot %s ignored SIGTERM; killed", backend_id)
            proc = self._children.get(backend_id)
            if proc is not None:
                await asyncio.to_thread(proc.wait)

    # -- logs ---------------------------------------------------------------------

    async def logs(self, backend_id: str) -> PilotLogs:
        local_id = LocalId.parse(backend_id)
        out_path, err_path = self.log_paths(local_id.entry, local_id.glidein_id)
        return PilotLogs(stdout=read_tail(out_path), stderr=read_tail(err_path))

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for proc in self._children.values():
            proc.poll()
