"""The pilot's job threads are kept and reused (agent/workers.py)."""

from __future__ import annotations

import threading

from glidewms.glidein.agent.workers import Workers

WAIT = 10.0


def test_a_finished_jobs_thread_runs_the_next_job() -> None:
    workers = Workers("job")
    names: list[str] = []
    for _ in range(5):
        done = threading.Event()

        def task(done: threading.Event = done) -> None:
            names.append(threading.current_thread().name)
            done.set()

        workers.submit(task)
        assert done.wait(WAIT)
        assert workers.wait_idle(1, WAIT)
    assert workers.started == 1
    assert set(names) == {"job-1"}


def test_concurrent_jobs_get_threads_of_their_own_and_errors_do_not_kill_them() -> None:
    workers = Workers("job")
    release = threading.Event()
    running = threading.Barrier(3, timeout=WAIT)

    def blocked() -> None:
        running.wait()
        release.wait(WAIT)

    workers.submit(blocked)
    workers.submit(blocked)
    running.wait()  # both run at once: two threads
    assert workers.started == 2
    release.set()
    assert workers.wait_idle(2, WAIT)

    def broken() -> None:
        raise RuntimeError("a bug in a job's task")

    workers.submit(broken)
    assert workers.wait_idle(2, WAIT)  # the thread that ran it is back
    ran = threading.Event()
    workers.submit(ran.set)
    assert ran.wait(WAIT)
    assert workers.started == 2
