"""The pilot's control loop: register, claim while resources are free, heartbeat, exit.

Threads: the main thread waits for the exit decision (so SIGTERM/SIGINT are
handled at once, even while a claim long-poll is in flight); a claim thread
long-polls the pool whenever resources are free; a heartbeat thread renews
leases and applies the pool's kill/drain instructions; one thread per job.
Shared state lives under one Condition; the first exit reason wins.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from typing import Any

from .claims import ClaimRunner, Outcome
from .config import GlideinConfig
from .http import Api, HttpStatusError, TransportError, segment
from .jobs import JobSetupError, JobSpec
from .policy import State, Step, exit_code, heartbeat_interval, next_step
from .resources import Resources, detect_resources, slot_ad

log = logging.getLogger(__name__)

CLAIM_MARGIN = 30.0  # client timeout beyond the wait we asked for


class Agent:
    """One pilot: a partitionable slot offering ``total`` resources to the pool."""

    def __init__(
        self,
        cfg: GlideinConfig,
        total: Resources | None = None,
        backoff: float = 1.0,
        kill_grace: float = 10.0,
    ) -> None:
        self.cfg = cfg
        self.total = total or detect_resources(cfg)
        self.free = Resources(self.total.cpus, self.total.memory, self.total.disk)
        self.kill_grace = kill_grace
        self.finished = threading.Event()
        self.pool = Api(cfg.pool_url, cfg.token_file, backoff, abort=self.finished)
        self.factory = Api(cfg.factory_url, cfg.token_file, backoff) if cfg.factory_url else None
        self._cond = threading.Condition()
        self._runners: dict[str, ClaimRunner] = {}
        self._threads: list[threading.Thread] = []
        self.reason: str | None = None
        self.detail = ""
        self.exit_code = 0
        self.draining = False
        self.jobs_run = 0
        self.jobs_failed = 0
        self.pilot_id = ""
        self.started = time.monotonic()
        self.deadline = self.started + cfg.lifetime
        self.idle_since = self.started

    # -- decisions ------------------------------------------------------------

    def finish(self, reason: str, detail: str, code: int | None = None) -> None:
        """Decide to exit (only the first decision counts) and wake everyone."""
        with self._cond:
            if self.reason is None:
                self.reason, self.detail = reason, detail
                self.exit_code = exit_code(reason) if code is None else code
                level = logging.INFO if self.exit_code == 0 else logging.WARNING
                log.log(level, "exiting: %s (%s)", reason, detail)
            self.finished.set()
            self._cond.notify_all()

    def on_signal(self, signum: int, _frame: Any = None) -> None:
        """SIGTERM/SIGINT: stop claiming, kill jobs, deregister, report."""
        self.finish("signal", f"got {signal.Signals(signum).name}", 128 + signum)

    def _decide(self) -> Step:
        """Under the lock: the next step (see ``policy.next_step``); act on an exit."""
        step = next_step(
            State(now=time.monotonic(), idle_since=self.idle_since,
                  idle_timeout=self.cfg.idle_timeout, deadline=self.deadline,
                  draining=self.draining, running=len(self._runners),
                  free_cpus=self.free.cpus, free_memory=self.free.memory),
            self.cfg.lifetime,
        )
        if step.action == "exit":
            self.finish(step.reason, step.detail)
        return step

    # -- threads --------------------------------------------------------------

    def _claim_loop(self) -> None:
        failures = 0
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
                body = {"free": self.free.as_free(), "wait": round(step.seconds, 3)}
            try:
                status, claim = self.pool.call(
                    "POST", f"pilots/{segment(self.pilot_id)}/claim", body,
                    timeout=step.seconds + CLAIM_MARGIN, tries=1,
                )
                failures = 0
            except HttpStatusError as exc:
                if exc.status in (404, 410):
                    self.finish("lost", f"the pool no longer knows this pilot: {exc}")
                elif exc.status in (401, 403):
                    self.finish("error", f"the pool refused the pilot token: {exc}")
                else:
                    failures = self._pause_after_failure(failures, exc)
                continue
            except TransportError as exc:
                failures = self._pause_after_failure(failures, exc)
                continue
            if status == 200 and isinstance(claim, dict):
                self._start_claim(claim)

    def _pause_after_failure(self, failures: int, exc: Exception) -> int:
        delay = min(60.0, self.pool.backoff * 2**failures)
        log.warning("claim failed: %s; next try in %.0fs", exc, delay)
        self.finished.wait(delay)
        return failures + 1

    def _start_claim(self, claim: dict[str, Any]) -> None:
        try:
            spec = JobSpec.from_claim(claim.get("job"))
            runner = ClaimRunner(claim, spec, self.pool, self.cfg.work_dir, self._job_env())
        except (JobSetupError, KeyError) as exc:
            log.error("unusable claim %s, left to its lease: %s", claim.get("claim_id"), exc)
            with self._cond:
                self.jobs_failed += 1
            return
        with self._cond:
            if self.reason is not None:
                log.warning("claim %s arrived while exiting; not started", runner.claim_id)
                return
            for key in ("cpus", "memory", "disk"):
                left = getattr(self.free, key) - spec.request.get(key, 0)
                if left < 0:
                    log.warning("claim %s asks more %s than is free", runner.claim_id, key)
                setattr(self.free, key, max(0, left))
            self._runners[runner.claim_id] = runner
            thread = threading.Thread(target=self._run_claim, args=(runner,), daemon=True,
                                      name=f"job-{runner.job_id}")
            self._threads.append(thread)
        log.info("claimed job %s (claim %s)", runner.job_id, runner.claim_id)
        thread.start()

    def _run_claim(self, runner: ClaimRunner) -> None:
        outcome: Outcome = runner.run()
        with self._cond:
            del self._runners[runner.claim_id]
            for key in ("cpus", "memory", "disk"):
                back = getattr(self.free, key) + runner.spec.request.get(key, 0)
                setattr(self.free, key, min(getattr(self.total, key), back))
            self.jobs_run += int(outcome.started)
            self.jobs_failed += int(outcome.failed)
            if not self._runners:
                self.idle_since = time.monotonic()
                if self.reason is None:
                    self._decide()  # a draining or retired pilot exits now
            self._cond.notify_all()

    def _job_env(self) -> dict[str, str]:
        return {
            "GLIDEIN_Site": self.cfg.site,
            "GLIDEIN_Entry_Name": self.cfg.entry,
            "GLIDEIN_Id": self.cfg.glidein_id,
        }

    def _heartbeat_loop(self, interval: float) -> None:
        while not self.finished.wait(interval):
            with self._cond:
                claims = list(self._runners)
            try:
                _, answer = self.pool.call(
                    "POST", f"pilots/{segment(self.pilot_id)}/heartbeat", {"claims": claims}
                )
            except HttpStatusError as exc:
                if exc.status in (404, 410):
                    self.finish("lost", f"the pool no longer knows this pilot: {exc}")
                    return
                log.warning("heartbeat refused: %s", exc)
                continue
            except TransportError as exc:
                log.warning("heartbeat not delivered: %s", exc)
                continue
            self._apply_instructions(answer if isinstance(answer, dict) else {})

    def _apply_instructions(self, answer: dict[str, Any]) -> None:
        with self._cond:
            kill = [str(c) for c in answer.get("kill") or []]
            victims = [self._runners[c] for c in kill if c in self._runners]
            if answer.get("drain") and not self.draining:
                log.info("the pool asks this pilot to drain: no new claims")
                self.draining = True
                if self.reason is None:
                    self._decide()  # an idle pilot exits now, not after its long-poll
                self._cond.notify_all()
        for runner in victims:
            runner.kill(self.kill_grace)

    # -- lifecycle ------------------------------------------------------------

    def register(self) -> float:
        """Register the slot; return the heartbeat interval to use."""
        to_die = time.time() + self.cfg.lifetime
        body = {"slot": slot_ad(self.cfg, self.total, to_die), "glidein_id": self.cfg.glidein_id}
        _, answer = self.pool.call("POST", "pilots", body)
        self.pilot_id = str(answer["pilot_id"])
        self.idle_since = time.monotonic()  # the idle clock starts when the slot is offered
        interval = heartbeat_interval(float(answer.get("heartbeat_seconds") or 0),
                                      float(answer.get("lease_seconds") or 0),
                                      float(self.cfg.heartbeat or 0))
        log.info("registered as pilot %s: %s; heartbeat every %.0fs",
                 self.pilot_id, self.total.as_free(), interval)
        return interval

    def run(self, install_signals: bool = True) -> int:
        """Run the pilot to its end; return the process exit code."""
        if install_signals:
            signal.signal(signal.SIGTERM, self.on_signal)
            signal.signal(signal.SIGINT, self.on_signal)
        try:
            interval = self.register()
        except (HttpStatusError, TransportError, KeyError, TypeError) as exc:
            self.finish("error", f"registration failed: {type(exc).__name__}: {exc}")
        else:
            for target, args in ((self._heartbeat_loop, (interval,)), (self._claim_loop, ())):
                threading.Thread(target=self._guarded, args=(target, *args), daemon=True,
                                 name=target.__name__.strip("_")).start()
        self.finished.wait()
        self._shutdown()
        self.report()
        return self.exit_code

    def _guarded(self, target: Any, *args: Any) -> None:
        """Run a loop thread; if it crashes, end the pilot with reason error.

        Otherwise a bug in a loop would leave a pilot that neither claims nor exits.
        """
        try:
            target(*args)
        except Exception as exc:
            log.exception("%s crashed", target.__name__)
            self.finish("error", f"internal error in {target.__name__}: {exc!r}")

    def _shutdown(self) -> None:
        """Kill what still runs (only on signal/lost/error), then deregister."""
        with self._cond:
            runners = list(self._runners.values())
            threads = list(self._threads)
        for runner in runners:
            runner.kill(self.kill_grace)
        deadline = time.monotonic() + self.kill_grace + 5
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        if self.pilot_id and self.reason != "lost":
            try:
                self.pool.call("POST", f"pilots/{segment(self.pilot_id)}/deregister",
                               {"reason": self.reason}, timeout=10, tries=1)
            except (HttpStatusError, TransportError) as exc:
                log.warning("deregister failed: %s", exc)

    def report(self) -> None:
        """Final report to the factory: best effort, errors logged."""
        if self.factory is None:
            log.warning("no factory URL; final report not sent")
            return
        body = {
            "exit_reason": self.reason, "exit_code": self.exit_code,
            "jobs_run": self.jobs_run, "jobs_failed": self.jobs_failed,
            "detail": self.detail, "cpus": self.total.cpus, "memory": self.total.memory,
            "wall_seconds": round(time.monotonic() - self.started, 3),
        }
        try:
            self.factory.call("POST", f"glideins/{segment(self.cfg.glidein_id)}/report",
                              body, timeout=10, tries=2)
            log.info("final report sent: %s", self.reason)
        except (HttpStatusError, TransportError) as exc:
            log.warning("final report not delivered: %s", exc)
