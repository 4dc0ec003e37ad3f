"""The pilot's exchange with the pool for work: the claim loop and the results.

A mixin of `Agent` (agent.py keeps the life cycle, jobs and heartbeats). One
call per turn, ``POST /pilots/{id}/cycle``, carries the results of the jobs
that ended and asks for as many jobs as cores are free (HTCondor's claim
reuse); a result the claim loop has not taken within ``COMPLETION_DELAY``
(it is long-polling, or the pilot no longer claims) is sent alone by the
completion thread. A pool without the cycle call (404 "Not Found") gets the
older separate claim and complete calls. See completions.py.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from .completions import CompletionQueue, is_missing_route, send_alone
from .http import Api, HttpStatusError, TransportError, segment
from .policy import gather_wait

if TYPE_CHECKING:
    from .policy import Step
    from .resources import Resources

log = logging.getLogger(__name__)

CLAIM_MARGIN = 30.0  # client timeout beyond the wait we asked for
MAX_CLAIMS_PER_CALL = 16  # claims asked for in one call when several cores are free
MAX_COMPLETIONS_PER_CALL = 64  # the pool takes up to 4 x its 64 claims per call
COMPLETION_DELAY = 0.05  # a result the claim loop has not taken by then is sent alone
GATHER = 0.005  # seconds a busy pilot waits for more free cores before a turn (policy.py)


class ExchangeMixin:
    pool: Api
    pilot_id: str
    free: Resources
    total: Resources
    die_at: float
    reason: str | None
    finished: threading.Event
    completions: CompletionQueue
    goodput: float
    badput: float
    _cond: threading.Condition
    _cycle: bool
    _runners: dict[str, Any]

    if TYPE_CHECKING:  # provided by Agent
        def _decide(self) -> Step: ...
        def finish(self, reason: str, detail: str, code: int | None = None) -> None: ...
        def _start_claim(self, claim: dict[str, Any]) -> None: ...

    def _claim_loop(self) -> None:
        """Ask for work while resources are free, carrying the ended jobs' results."""
        failures = 0
        free_since: float | None = None  # when this turn's first core became free
        while not self.finished.is_set():
            with self._cond:
                if self.reason is not None:
                    return
                step = self._decide()
                if step.action == "exit":
                    return
                if step.action == "wait":
                    self._cond.wait(step.seconds)
                    continue
                now = time.monotonic()
                free_since = now if free_since is None else free_since
                pause = gather_wait(len(self._runners), self.free.cpus,
                                    min(MAX_CLAIMS_PER_CALL, self.total.cpus),
                                    now - free_since, GATHER)
                if pause > 0:
                    self._cond.wait(pause)
                    continue
                free_since = None
                slots = max(1, min(MAX_CLAIMS_PER_CALL, self.free.cpus))
                body: dict[str, Any] = {
                    "free": self.free.as_free(), "wait": round(step.seconds, 3),
                    "max_runtime": max(0, int(self.die_at - time.monotonic()))}
                cycle = self._cycle
                batch = self.completions.take(MAX_COMPLETIONS_PER_CALL) if cycle else []
                if cycle:
                    body.update(completions=batch, max_jobs=slots)
                elif slots > 1:  # several free cores: up to that many claims in one call
                    body["max_jobs"] = slots
            path = f"pilots/{segment(self.pilot_id)}/{'cycle' if cycle else 'claim'}"
            try:
                status, answer = self.pool.call("POST", path, body,
                                                timeout=step.seconds + CLAIM_MARGIN, tries=1)
                failures = 0
            except HttpStatusError as exc:
                self._settle(batch, None)
                if cycle and is_missing_route(exc):
                    log.info("the pool has no cycle call; claims and completions go apart")
                    with self._cond:
                        self._cycle = False
                elif exc.status in (404, 410):
                    self.finish("lost", f"the pool no longer knows this pilot: {exc}")
                elif exc.status in (401, 403):
                    self.finish("error", f"the pool refused the pilot token: {exc}")
                else:
                    failures = self._pause_after_failure(failures, exc)
                continue
            except TransportError as exc:
                self._settle(batch, None)
                failures = self._pause_after_failure(failures, exc)
                continue
            if not isinstance(answer, dict):
                answer = {}
            if cycle:
                done = answer.get("completed")
                self._settle(batch, done if isinstance(done, dict) else {})
            if status == 200:
                # {"claims": [...]} answers cycle and max_jobs; a pool that ignores
                # max_jobs (or a single-claim call) answers with the claim object itself
                many = answer.get("claims")
                for one in many if isinstance(many, list) else [answer] if not cycle else []:
                    if isinstance(one, dict):
                        self._start_claim(one)

    def _settle(self, batch: list[dict[str, Any]], done: dict[str, Any] | None) -> None:
        """The pool answered for ``batch`` ({claim: accepted}), or not (None: retry)."""
        if not batch:
            return
        with self._cond:
            self.completions.settle(batch, done is not None, time.monotonic())
            if done is None:
                self._cond.notify_all()
                return
            for item in batch:
                accepted = done.get(item["claim_id"]) is True
                if accepted and not item["exit_code"]:
                    self.goodput += item["wall_seconds"]
                else:
                    self.badput += item["wall_seconds"]
                if not accepted:
                    log.warning("claim %s: the pool no longer holds it; result dropped",
                                item["claim_id"])

    def _completion_loop(self) -> None:
        """Send results the claim loop did not take within COMPLETION_DELAY
        (it is long-polling, or not claiming at all)."""
        while True:
            with self._cond:
                while True:
                    if self.finished.is_set():
                        return
                    age = self.completions.age(time.monotonic())
                    if age is not None and age >= COMPLETION_DELAY:
                        batch = self.completions.take(MAX_COMPLETIONS_PER_CALL)
                        cycle = self._cycle
                        break
                    self._cond.wait(None if age is None else COMPLETION_DELAY - age)
            self._send_alone(batch, cycle)

    def _send_alone(self, batch: list[dict[str, Any]], cycle: bool) -> None:
        try:
            done: dict[str, Any] | None = send_alone(self.pool, self.pilot_id, batch, cycle)
        except HttpStatusError as exc:
            if cycle and is_missing_route(exc):
                with self._cond:
                    self._cycle = False
            else:
                log.warning("completions not delivered: %s", exc)
            done = None
            if exc.status in (404, 410) and not is_missing_route(exc):
                done = {}  # the pool dropped this pilot: they will never be accepted
        except TransportError as exc:
            log.warning("completions not delivered: %s", exc)
            done = None
            self.finished.wait(self.pool.backoff)
        self._settle(batch, done)

    def _flush_completions(self) -> None:
        """At exit: every result still waiting, before the pilot deregisters."""
        with self._cond:
            batch = self.completions.take(len(self.completions))
            cycle = self._cycle
        if batch and self.pilot_id:
            try:
                self._settle(batch, send_alone(self.pool, self.pilot_id, batch, cycle))
            except (HttpStatusError, TransportError) as exc:
                log.warning("%d completion(s) not delivered at exit: %s", len(batch), exc)
                self._settle(batch, {})

    def _pause_after_failure(self, failures: int, exc: Exception) -> int:
        delay = min(60.0, self.pool.backoff * 2**failures)
        log.warning("claim failed: %s; next try in %.0fs", exc, delay)
        self.finished.wait(delay)
        return failures + 1
