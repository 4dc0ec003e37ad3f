"""The pilot's partitionable slot: its resources and the claims running in them.

Each claim's job runs in a kept worker thread (workers.py). When it ends, its
resources come back, its result joins the results on their way to the pool
(it rides the pilot's next turn, exchange.py) or, when there is none (killed,
sandbox refused, outputs not uploaded), its wall time counts as badput; then
the pilot decides what follows (``ended``: a black hole, an idle pilot).

GPUs are counted and also named: each claim holds the devices it asked for
(``RequestGPUs``) until its job ends, and its job sees only those (claims.py);
two 1-GPU jobs on a 2-GPU pilot never share a device.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Dict, List, Sequence

from .claims import ClaimRunner, Outcome
from .completions import CompletionQueue
from .resources import Gpu, Resources
from .trail import Trail
from .workers import Workers

log = logging.getLogger(__name__)

RESOURCE_KEYS = ("cpus", "memory", "disk", "gpus")


class Slot:
    """Resources and running claims, shared by the pilot's threads.

    ``lock`` is the pilot's Condition: all of this is read and changed under
    it, ``results`` (the exchange's queue) too, and ``ended`` is called under
    it; it is notified whenever a job ends.
    """

    def __init__(
        self,
        total: Resources,
        *,
        lock: threading.Condition,
        results: CompletionQueue,
        trail: Trail,
        ended: Callable[[Outcome], None],
        gpus: Sequence[Gpu] = (),
        hold: Callable[[Outcome], float] = lambda _outcome: 0.0,
    ) -> None:
        self.total = total
        self.free = Resources(total.cpus, total.memory, total.disk, total.gpus)
        self.gpus: List[Gpu] = []  # the pilot's devices, in the node's order
        self.free_gpus: List[Gpu] = []
        self._set_gpus(gpus)
        self.runners: Dict[str, ClaimRunner] = {}
        self.jobs_run = 0
        self.jobs_failed = 0  # setup failed or non-zero exit; unusable claims too
        self.badput = 0.0  # wall seconds of jobs that left no result
        self.badput_cores = 0.0  # the same in core-seconds
        self._hold = hold  # seconds a result is held back (policy.hold_back)
        self._lock = lock
        self._results = results
        self._trail = trail
        self._ended = ended
        self._active = 0  # jobs handed to a worker and not yet fully accounted for
        self._workers = Workers("job")

    def resize(self, total: Resources, gpus: Sequence[Gpu] = ()) -> None:
        """Offer ``total`` instead (validation found the node's); before any job."""
        self.total = total
        self.free = Resources(total.cpus, total.memory, total.disk, total.gpus)
        self._set_gpus(gpus)

    def _set_gpus(self, gpus: Sequence[Gpu]) -> None:
        """The devices behind ``total.gpus``: those given (validation named them),
        else the node's first ones by index."""
        named = list(gpus)[: self.total.gpus]
        if len(named) < self.total.gpus:
            named = [Gpu(str(i)) for i in range(self.total.gpus)]
        self.gpus = named
        self.free_gpus = list(named)

    def _take_gpus(self, runner: ClaimRunner) -> None:
        """Under the lock: hand the claim its own devices. A job on a GPU pilot
        is told its GPUs even when it asked for none (then: none)."""
        if not self.gpus:
            return  # no GPU here: the job's environment is left as published
        want = max(0, runner.spec.request.get("gpus", 0))
        runner.gpus = tuple(self.free_gpus[:want])
        del self.free_gpus[:want]

    def _give_back_gpus(self, runner: ClaimRunner) -> None:
        back = set(runner.gpus or ()) | set(self.free_gpus)
        self.free_gpus = [g for g in self.gpus if g in back]

    def reserve(self, runner: ClaimRunner) -> None:
        """Under the lock: take the claim's resources; ``run`` then starts its job."""
        for key in RESOURCE_KEYS:
            left = getattr(self.free, key) - runner.spec.request.get(key, 0)
            if left < 0:
                log.warning("claim %s asks more %s than is free", runner.claim_id, key)
            setattr(self.free, key, max(0, left))
        self._take_gpus(runner)
        self.runners[runner.claim_id] = runner
        self._active += 1

    def run(self, runner: ClaimRunner) -> None:
        """Run a reserved claim's job in a worker thread (not under the lock)."""
        self._workers.submit(self._run, runner)

    def vacate(self, grace: float) -> None:
        """Kill every running job (never completed) and wait, at most ``grace``
        + 5 seconds, for their threads to account for them."""
        with self._lock:
            runners = list(self.runners.values())
        for runner in runners:
            runner.kill(grace)
        deadline = time.monotonic() + grace + 5
        with self._lock:
            while self._active and time.monotonic() < deadline:
                self._lock.wait(deadline - time.monotonic())

    def _run(self, runner: ClaimRunner) -> None:
        try:
            self._run_and_account(runner)
        finally:
            with self._lock:
                self._active -= 1
                self._lock.notify_all()

    def _run_and_account(self, runner: ClaimRunner) -> None:
        outcome = runner.run()
        with self._lock:
            del self.runners[runner.claim_id]
            for key in RESOURCE_KEYS:
                back = getattr(self.free, key) + runner.spec.request.get(key, 0)
                setattr(self.free, key, min(getattr(self.total, key), back))
            self._give_back_gpus(runner)
            self.jobs_run += int(outcome.started)
            self.jobs_failed += int(outcome.failed)
            cores = int(runner.spec.request.get("cpus", 1) or 1)
            if outcome.result is not None:  # goes with the next turn (exchange.py)
                self._results.add(outcome.result, time.monotonic(), cores, self._hold(outcome))
            else:
                self.badput += outcome.wall
                self.badput_cores += outcome.wall * cores
            self._ended(outcome)
            self._lock.notify_all()
        # one trail record per job; flushed on a timer (agent.py), not per job
        self._trail.add(
            "INFO" if not outcome.failed else "WARNING",
            "job",
            f"job {runner.job_id}: started={outcome.started} "
            f"exit={outcome.exit_code} completed={outcome.result is not None} "
            f"killed={outcome.killed} wall={outcome.wall:.3f}s "
            f"{outcome.detail}".strip(),
        )
