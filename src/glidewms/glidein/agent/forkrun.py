"""Run a Python script in a forked child of the pilot instead of a new interpreter.

Why: a validation script is small, but a new ``python3`` costs 50-150 ms of
start-up on a loaded node, times ten scripts, before the pilot may register.
A forked child starts in about a millisecond with the interpreter already
warm, and keeps what matters of a separate process: its own memory (nothing
it imports or changes reaches the pilot), its own session (a timeout kills it
and everything it started), its own stdin/stdout/stderr, environment,
working directory and ``sys.argv``, and default signal handlers (the pilot's
SIGTERM handler must not run in a validation script).

Forking is only safe while the pilot has a single thread (a lock held by
another thread would stay locked forever in the child): ``fork_allowed``
says when; callers fall back to a new interpreter otherwise.
"""

from __future__ import annotations

import contextlib
import os
import runpy
import select
import signal
import sys
import threading
import time
import traceback
from typing import Dict, List, Tuple

_READ = 65536


def fork_allowed() -> bool:
    """Fork only from a single-threaded process on a system that has fork."""
    return hasattr(os, "fork") and threading.active_count() == 1


def _child(path: str, argv: List[str], env: Dict[str, str], cwd: str, out_fd: int) -> None:
    """In the child: become the script's own process, run it, never return."""
    code = 1
    try:
        os.setsid()
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGPIPE):
            signal.signal(signum, signal.SIG_DFL)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(out_fd, 1)
        os.dup2(out_fd, 2)
        sys.stdin = open(0, closefd=False)  # noqa: SIM115 (lives as long as the child)
        sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(env)
        sys.argv = [path, *argv]
        sys.path.insert(0, os.path.dirname(os.path.abspath(path)))  # as `python3 path` does
        try:
            runpy.run_path(path, run_name="__main__")
            code = 0
        except SystemExit as exc:
            if exc.code is None or isinstance(exc.code, int):
                code = exc.code or 0
            else:
                print(exc.code, file=sys.stderr)
                code = 1
        except BaseException:  # the script's own crash, reported as python would
            traceback.print_exc()
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


def run(
    path: str, argv: List[str], env: Dict[str, str], cwd: str, timeout: float
) -> Tuple[int, bytes, bool]:
    """Run ``path`` as ``__main__`` in a forked child: (exit status, output, timed out).

    The exit status follows subprocess: negative for a signal. Output is
    stdout and stderr together, as the validation runner collects them.
    """
    read_fd, write_fd = os.pipe()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, ValueError, OSError):
            stream.flush()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        _child(path, argv, env, cwd, write_fd)
    os.close(write_fd)
    deadline = time.monotonic() + timeout
    chunks: List[bytes] = []
    timed_out = False
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                break
            ready, _, _ = select.select([read_fd], [], [], left)
            if ready:
                data = os.read(read_fd, _READ)
                if not data:
                    break
                chunks.append(data)
    finally:
        os.close(read_fd)
    status = _reap(pid, deadline, timed_out)
    if status is None:
        timed_out = True
        status = -signal.SIGKILL
    return status, b"".join(chunks), timed_out


def _reap(pid: int, deadline: float, kill_now: bool) -> int | None:
    """Wait for the child until the deadline; kill its session after. None if killed."""
    pause = 0.001
    while not kill_now:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() >= deadline:
            break
        time.sleep(pause)  # its output is closed: the child is normally exiting now
        pause = min(0.05, pause * 2)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return None
