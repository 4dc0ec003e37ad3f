"""Threads that run the pilot's jobs, started as needed and then kept.

A thread per job cost the pilot a thread start (and the wait for it to be
scheduled) for every job, which is most of a trivial job's cost when a
pilot turns over hundreds of jobs a second. Here a finished job's thread
waits for the next one; new threads are started only while every thread is
busy, so a pilot never has more than its peak of concurrent jobs.

Not ``concurrent.futures.ThreadPoolExecutor``: its threads are joined when
the interpreter exits, so a job that cannot be killed would keep the pilot
alive past its end. These are daemon threads; the agent waits for its jobs
with its own deadline (agent.py, ``_shutdown``).
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any, Callable

log = logging.getLogger(__name__)


class Workers:
    """Run callables in daemon threads; ``submit`` never blocks."""

    def __init__(self, name: str = "job") -> None:
        self.name = name
        self._tasks: queue.SimpleQueue[tuple[Callable[..., Any], tuple[Any, ...]]] = (
            queue.SimpleQueue()
        )
        self._lock = threading.Condition()
        self._idle = 0  # threads waiting for a task and not yet promised one
        self.started = 0  # threads started so far (tests and logs)

    def submit(self, task: Callable[..., Any], *args: Any) -> None:
        """Run ``task(*args)`` in an idle thread, or in a new one if none is idle."""
        with self._lock:
            if self._idle:
                self._idle -= 1  # that thread's next task is this one
                start = False
            else:
                self.started += 1
                start = True
                number = self.started
        self._tasks.put((task, args))
        if start:
            threading.Thread(target=self._work, daemon=True, name=f"{self.name}-{number}").start()

    def _work(self) -> None:
        while True:
            task, args = self._tasks.get()
            try:
                task(*args)
            except Exception:  # the task is expected to handle its own errors
                log.exception("%s: unexpected error", self.name)
            with self._lock:
                self._idle += 1
                self._lock.notify_all()

    def wait_idle(self, count: int, timeout: float) -> bool:
        """Wait until ``count`` threads wait for work; False on timeout."""
        with self._lock:
            return self._lock.wait_for(lambda: self._idle >= count, timeout)
