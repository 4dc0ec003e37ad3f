"""Process lifetime for cvmfsexec mode: everything the namespace started dies with it.

``squashfuse`` daemonises: started from the cvmfsexec helper, it would outlive
a helper the site SIGKILLs (no ``finally`` runs then), keep the pilot's mount
namespace alive and serve a repository to nobody, forever. The agent would
live on too, orphaned, while the bootstrap removes its work dir. So the helper
puts the whole pilot in a new **pid namespace** whose init is a forked child
of its own:

- when the init process dies, however it dies, the kernel kills every process
  of the namespace (squashfuse, the agent, the jobs) and the mount namespace
  goes with the last of them;
- the init process gets ``PR_SET_PDEATHSIG`` = SIGKILL, so a SIGKILL of the
  helper itself (the process the bootstrap started and waits for) takes the
  init process, hence the namespace, with it.

Only ``ctypes`` and ``os``: the pilot side is standard library only. Linux
only, like the namespaces themselves.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import signal
import subprocess
import traceback
from typing import Callable, List

CLONE_NEWPID = 0x20000000
PR_SET_PDEATHSIG = 1
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def new_pid_namespace() -> str:
    """Make the next forked child the init of a new pid namespace; '' or why not."""
    if _libc().unshare(CLONE_NEWPID) != 0:
        return f"unshare(CLONE_NEWPID): {os.strerror(ctypes.get_errno())}"
    return ""


def die_with_parent(signum: int = signal.SIGKILL) -> None:
    """Have the kernel send ``signum`` to this process when its parent dies."""
    if _libc().prctl(PR_SET_PDEATHSIG, int(signum), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")


def exit_code(status: int) -> int:
    """A wait status as a shell exit code (128+N for a signal)."""
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def forward_signals(pid: int) -> None:
    """Pass SIGTERM, SIGINT and SIGHUP on to ``pid`` (the agent drains on them)."""

    def forward(signum: int, _frame: object) -> None:
        with contextlib.suppress(OSError):
            os.kill(pid, signum)

    for signum in FORWARDED:
        signal.signal(signum, forward)


def spawn(cmd: List[str]) -> int:
    """fork + exec ``cmd``; its pid (127 is its exit code when it cannot be run)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child execs or exits
        try:
            for signum in FORWARDED:
                signal.signal(signum, signal.SIG_DFL)
            os.execvp(cmd[0], cmd)
        except OSError as exc:
            os.write(2, f"cvmfsexec: cannot run {cmd[0]}: {exc}\n".encode())
        os._exit(127)
    return pid


def reap_until(pid: int) -> int:
    """Wait for ``pid``, reaping every other child meanwhile; its exit code.

    As init of a pid namespace this process inherits the namespace's orphans
    (squashfuse's daemon, a job's leftovers): reaping them keeps no zombies.
    """
    while True:
        try:
            got, status = os.wait()
        except ChildProcessError:
            return 1
        if got == pid:
            return exit_code(status)


def run_as_init(body: Callable[[], int]) -> int:
    """Run ``body`` in a forked child that is init of a new pid namespace and dies
    with this process; relay signals to it; return its exit code.

    Without a pid namespace (the kernel refuses it) ``body`` runs in this
    process, as before: the pilot works, only without the guarantee above.
    """
    problem = new_pid_namespace()
    if problem:
        os.write(2, f"cvmfsexec: no pid namespace ({problem}): running without one\n".encode())
        return body()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - covered by the integration tests, in a child
        code = 1
        try:
            os.close(write_end)
            die_with_parent()
            # The parent may have died before prctl: then the pipe reads EOF at once.
            if select.select([read_end], [], [], 0)[0]:
                os._exit(1)
            code = body()
        except BaseException:  # say why before the child exits
            traceback.print_exc()
        finally:
            os._exit(code)
    os.close(read_end)
    forward_signals(pid)
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except ChildProcessError:
            return 1
    os.close(write_end)
    return exit_code(status)


def mount_proc() -> str:
    """A /proc for the new pid namespace, so that pids read there are its own; '' or why not."""
    try:
        out = subprocess.run(
            ["mount", "-t", "proc", "proc", "/proc"],
            capture_output=True,
            text=True,
            timeout=30,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    return out.stderr.strip()[-200:] if out.returncode else ""
