"""The pilot's control loop: validate, register, claim while resources are free, exit.

Threads: the main thread validates the node, then waits for the exit decision
(so SIGTERM/SIGINT are handled at once, even while a claim long-poll is in
flight); a claim thread long-polls the pool whenever resources are free and
the pilot takes work; a heartbeat thread renews leases and applies the pool's
kill/drain instructions; a periodic-validation thread reruns the scripts
marked periodic; jobs run in kept worker threads (workers.py). Shared
state lives under one Condition; the first exit reason wins.

Every exit path ends the same way: running jobs are vacated (killed, never
completed, so the pool requeues them at once when the pilot deregisters), the
pilot deregisters, the trail is flushed and the final report sent; a black
hole then keeps the node for ``black_hole_hold`` seconds so the batch system
does not hand it straight to another pilot.
"""

from __future__ import annotations

import logging
import random
import signal
import threading
import time
from typing import Any

from . import cvmfs, validation
from .claims import ClaimRunner, Outcome
from .completions import CompletionQueue
from .config import ConfigError, GlideinConfig, build_config
from .container import ContainerSetup
from .exchange import ExchangeMixin
from .http import Api, HttpStatusError, TransportError, segment
from .jobs import JobSetupError, JobSpec
from .policy import (
    State,
    Step,
    black_hole,
    exit_code,
    heartbeat_interval,
    job_fits,
    next_step,
    retire_and_die,
    token_expiry,
    token_retire,
)
from .resources import Resources, detect_resources, slot_ad
from .trail import Trail, TrailHandler
from .workers import Workers

log = logging.getLogger(__name__)

SIGNAL_POLL = 0.1  # how soon the main thread acts on a recorded signal
RESOURCE_KEYS = ("cpus", "memory", "disk", "gpus")
TRAIL_FLUSH = 5.0  # seconds between trail flushes while jobs run (not one per job)


class Agent(ExchangeMixin):
    """One pilot: a partitionable slot offering ``total`` resources to the pool."""

    def __init__(
        self,
        cfg: GlideinConfig,
        total: Resources | None = None,
        backoff: float = 1.0,
        kill_grace: float = 10.0,
    ) -> None:
        self.cfg = cfg
        self._fixed_total = total is not None
        self.total = total or detect_resources(cfg)
        self.free = Resources(self.total.cpus, self.total.memory, self.total.disk, self.total.gpus)
        self.kill_grace = kill_grace
        self.finished = threading.Event()
        self.hold_over = threading.Event()
        self._signalled = 0  # set by the signal handler only (see on_signal)
        self.pool = Api(cfg.pool_url, cfg.token_file, backoff, abort=self.finished)
        self.factory = Api(cfg.factory_url, cfg.token_file, backoff) if cfg.factory_url else None
        self.trail = Trail(self.factory, cfg.glidein_id)
        self._cond = threading.Condition()
        self._runners: dict[str, ClaimRunner] = {}
        self.completions = CompletionQueue()
        self._cycle = True  # the pool has POST /pilots/{id}/cycle (else: older calls)
        self._workers = Workers("job")
        self._active = 0  # jobs handed to a worker and not yet fully accounted for
        self.reason: str | None = None
        self.detail = ""
        self.exit_code = 0
        self.draining = False
        self.stop_reason = ""
        self.stop_detail = ""
        self.jobs_run = 0
        self.jobs_failed = 0
        self.goodput = 0.0
        self.badput = 0.0
        self.failure_times: list[float] = []
        self.validation: list[validation.Result] = []
        self.published_env: dict[str, str] = {}
        self.container = ContainerSetup(use="NEVER")
        self._periodic: list[validation.Script] = []
        self.pilot_id = ""
        self.started = time.monotonic()
        retire, die = retire_and_die(cfg.lifetime, cfg.die_margin, cfg.retire_before,
                                     cfg.retire_spread, random.random())
        self.deadline = self.started + retire
        self.die_at = self.started + die
        self.idle_since = self.started
        self._token_checked = -1.0e9
        self._token_expires: float | None = None

    def retire_at(self) -> float:
        """The retire time, capped before the token's expiry (re-read at most every 5 s)."""
        now = time.monotonic()
        if now - self._token_checked >= 5.0:
            self._token_checked = now
            try:
                with open(self.cfg.token_file, encoding="utf-8") as handle:
                    self._token_expires = token_expiry(handle.read())
            except OSError:
                pass  # the next request says what is wrong with it
        return token_retire(self.deadline, self._token_expires, time.time(), now)

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
        """SIGTERM/SIGINT: stop claiming, vacate jobs, deregister, report.

        The handler only records the signal: it runs in the main thread between
        two bytecodes, possibly while that thread holds the very lock ``finish``
        would take (an Event's), which would deadlock the pilot. A batch system
        sends SIGTERM to the whole job, and the bootstrap forwards its own, so
        two signals in a row are the normal case. The main thread acts on it
        within ``SIGNAL_POLL`` seconds (``_take_signal``).
        """
        if not self._signalled:
            self._signalled = signum

    def _take_signal(self) -> bool:
        """In the main thread: act on a recorded signal; True if there was one."""
        signum = self._signalled
        if not signum:
            return False
        self.hold_over.set()
        self.finish("signal", f"got {signal.Signals(signum).name}", 128 + signum)
        return True

    def stop_taking_work(self, reason: str, detail: str) -> None:
        """No new jobs; exit with ``reason`` once the running ones end."""
        with self._cond:
            if not self.stop_reason:
                log.warning("no new jobs: %s (%s)", reason, detail)
                self.stop_reason, self.stop_detail = reason, detail
            if self.reason is None:
                self._decide()
            self._cond.notify_all()

    @property
    def retiring(self) -> bool:
        """The pilot takes no new work (contract: heartbeat ``retiring``)."""
        return bool(self.draining or self.stop_reason or time.monotonic() >= self.retire_at())

    def _decide(self) -> Step:
        """Under the lock: the next step (see ``policy.next_step``); act on an exit."""
        step = next_step(
            State(now=time.monotonic(), idle_since=self.idle_since,
                  idle_timeout=self.cfg.idle_timeout, deadline=self.retire_at(),
                  draining=self.draining, running=len(self._runners),
                  free_cpus=self.free.cpus, free_memory=self.free.memory,
                  die_at=self.die_at, tail_timeout=self.cfg.tail_timeout,
                  jobs_run=self.jobs_run, stop_reason=self.stop_reason,
                  stop_detail=self.stop_detail),
            self.cfg.lifetime,
        )
        if step.action == "exit":
            self.finish(step.reason, step.detail)
        return step

    # -- validation -----------------------------------------------------------

    def validate(self) -> bool:
        """Run the validation scripts; on success take in what they published."""
        if not self.cfg.config_path:
            return True
        try:
            scripts = validation.discover(self.cfg.work_dir, self.cfg.values)
        except ConfigError as exc:
            self.finish("validation_failed", f"Config: {exc}")
            return False
        if scripts:
            # forked children for Python scripts unless the entry says no (forkrun.py)
            fork = self.cfg.values.get("GLIDEIN_Validation_Fork", "auto").lower() != "no"
            self.validation = validation.run_all(scripts, self.cfg.config_path,
                                                 self.cfg.validation_timeout, fork)
            for result in self.validation:
                self.trail.add("INFO" if result.ok else "ERROR", "validation",
                               f"{result.stage}/{result.name}: {result.status} "
                               f"{result.category} {result.detail}".strip(),
                               {"output": result.output.encode()} if result.output else None)
            failed = validation.failure_summary(self.validation)
            if failed:
                self.finish("validation_failed", failed)
                return False
        try:
            values = validation.read_values(self.cfg.config_path)
            cfg = build_config(values, self.cfg.work_dir)
            self.container = ContainerSetup.from_values(values)
        except (OSError, ConfigError, ValueError) as exc:
            self.finish("validation_failed", f"Config: after validation: {exc}")
            return False
        attrs, self.published_env = validation.published(values, self.validation)
        cfg.attrs.update(attrs)
        cfg.config_path = self.cfg.config_path
        self.cfg = cfg
        if not self._fixed_total:
            self.total = detect_resources(cfg)
            self.free = Resources(self.total.cpus, self.total.memory, self.total.disk,
                                  self.total.gpus)
        self._periodic = [s for s in scripts if s.period > 0]
        return True

    def _periodic_loop(self) -> None:
        """Rerun periodic scripts; a failure stops new jobs (the pilot then retires)."""
        due = {s: time.monotonic() + s.period for s in self._periodic}
        while due:
            script = min(due, key=lambda s: due[s])
            if self.finished.wait(max(0.0, due[script] - time.monotonic())):
                return
            result = validation.run_script(script, self.cfg.config_path,
                                           self.cfg.validation_timeout)
            self.validation.append(result)
            due[script] = time.monotonic() + script.period
            if not result.ok:
                self.trail.add("ERROR", "validation", f"periodic {script.name}: "
                               f"{result.category}: {result.detail}")
                self.stop_taking_work("validation_failed", validation.failure_summary(
                    [result]) or script.name)
                return

    # -- threads --------------------------------------------------------------

    def _start_claim(self, claim: dict[str, Any]) -> None:
        try:
            spec = JobSpec.from_claim(claim.get("job"))
            runner = ClaimRunner(claim, spec, self.pool, self.cfg.work_dir, self._job_env(),
                                 self.container, vacating=self.finished, deferred=True)
        except (JobSetupError, KeyError) as exc:
            log.error("unusable claim %s, left to its lease: %s", claim.get("claim_id"), exc)
            with self._cond:
                self.jobs_failed += 1
            return
        if not job_fits(spec.max_runtime, time.monotonic(), self.die_at):
            log.warning("claim %s: the job needs %.0fs, more than this pilot has left; not "
                        "started, left to its lease", runner.claim_id, spec.max_runtime or 0)
            return
        with self._cond:
            if self.reason is not None:
                log.warning("claim %s arrived while exiting; not started", runner.claim_id)
                return
            for key in RESOURCE_KEYS:
                left = getattr(self.free, key) - spec.request.get(key, 0)
                if left < 0:
                    log.warning("claim %s asks more %s than is free", runner.claim_id, key)
                setattr(self.free, key, max(0, left))
            self._runners[runner.claim_id] = runner
            self._active += 1
        log.debug("claimed job %s (claim %s)", runner.job_id, runner.claim_id)
        self._workers.submit(self._run_claim, runner)

    def _run_claim(self, runner: ClaimRunner) -> None:
        try:
            self._run_claim_and_account(runner)
        finally:
            with self._cond:
                self._active -= 1
                self._cond.notify_all()

    def _run_claim_and_account(self, runner: ClaimRunner) -> None:
        outcome: Outcome = runner.run()
        with self._cond:
            del self._runners[runner.claim_id]
            for key in RESOURCE_KEYS:
                back = getattr(self.free, key) + runner.spec.request.get(key, 0)
                setattr(self.free, key, min(getattr(self.total, key), back))
            self.jobs_run += int(outcome.started)
            self.jobs_failed += int(outcome.failed)
            if outcome.result is not None:  # goes with the next claim call (completions.py)
                self.completions.add(outcome.result, time.monotonic())
            elif outcome.completed and not outcome.failed:
                self.goodput += outcome.wall
            else:
                self.badput += outcome.wall
            if outcome.failed:
                self.failure_times.append(time.monotonic())
                if black_hole(self.failure_times, time.monotonic(), self.cfg.black_hole_jobs,
                              self.cfg.black_hole_window):
                    self.stop_taking_work("black_hole", f"{self.cfg.black_hole_jobs} jobs failed "
                                          f"within {self.cfg.black_hole_window}s")
            if not self._runners:
                self.idle_since = time.monotonic()
                if self.reason is None:
                    self._decide()  # a draining or retired pilot exits now
            self._cond.notify_all()
        # one trail record per job; flushed on a timer (_trail_loop), not per job
        self.trail.add("INFO" if not outcome.failed else "WARNING", "job",
                       f"job {runner.job_id}: started={outcome.started} exit={outcome.exit_code} "
                       f"completed={outcome.result is not None or outcome.completed} "
                       f"killed={outcome.killed} wall={outcome.wall:.3f}s "
                       f"{outcome.detail}".strip())

    def _trail_loop(self) -> None:
        while not self.finished.wait(TRAIL_FLUSH):
            if self.trail.pending():
                self.trail.flush()

    def _job_env(self) -> dict[str, str]:
        env = dict(self.published_env)
        env.update({
            "GLIDEIN_Site": self.cfg.site,
            "GLIDEIN_Entry_Name": self.cfg.entry,
            "GLIDEIN_Id": self.cfg.glidein_id,
        })
        return env

    def _heartbeat_loop(self, interval: float) -> None:
        while not self.finished.wait(interval):
            with self._cond:
                body: dict[str, Any] = {
                    "claims": list(self._runners) + self.completions.claim_ids()}
            if self.retiring:
                body["retiring"] = True
            try:
                _, answer = self.pool.call(
                    "POST", f"pilots/{segment(self.pilot_id)}/heartbeat", body
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
        now = time.time()
        ad = slot_ad(self.cfg, self.total, now + (self.die_at - time.monotonic()))
        ad["GLIDEIN_ToRetire"] = int(now + (self.deadline - time.monotonic()))
        body = {"slot": ad, "glidein_id": self.cfg.glidein_id}
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
        handler = TrailHandler(self.trail)
        logging.getLogger("glidein").addHandler(handler)
        logging.getLogger(__package__).addHandler(handler)
        try:
            self._run()
        finally:
            logging.getLogger("glidein").removeHandler(handler)
            logging.getLogger(__package__).removeHandler(handler)
        return self.exit_code

    def _run(self) -> None:
        self.trail.add("INFO", "startup", f"pilot {self.cfg.glidein_id} at {self.cfg.site}/"
                       f"{self.cfg.entry}, lifetime {self.cfg.lifetime}s")
        if self.validate() and not self._take_signal() and self.reason is None:
            self.trail.flush()
            try:
                interval = self.register()
            except (HttpStatusError, TransportError, KeyError, TypeError) as exc:
                self.finish("error", f"registration failed: {type(exc).__name__}: {exc}")
            else:
                loops = [(self._heartbeat_loop, (interval,)), (self._claim_loop, ()),
                         (self._completion_loop, ()), (self._trail_loop, ())]
                if self._periodic:
                    loops.append((self._periodic_loop, ()))
                for target, args in loops:
                    threading.Thread(target=self._guarded, args=(target, *args), daemon=True,
                                     name=target.__name__.strip("_")).start()
                self.trail.flush()
        while not self.finished.wait(SIGNAL_POLL):
            self._take_signal()
        self._shutdown()
        self.report()
        if self.reason == "black_hole" and self.cfg.black_hole_hold:
            log.warning("black hole: keeping this node for %ds", self.cfg.black_hole_hold)
            end = time.monotonic() + self.cfg.black_hole_hold
            while not self.hold_over.wait(min(SIGNAL_POLL, max(0.0, end - time.monotonic()))):
                if self._signalled or time.monotonic() >= end:
                    break

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
        """Vacate what still runs (never completed), then deregister (requeues them)."""
        with self._cond:
            runners = list(self._runners.values())
        for runner in runners:
            runner.kill(self.kill_grace)
        deadline = time.monotonic() + self.kill_grace + 5
        with self._cond:
            while self._active and time.monotonic() < deadline:
                self._cond.wait(deadline - time.monotonic())
        if self.reason != "lost":
            self._flush_completions()
        if self.pilot_id and self.reason != "lost":
            try:
                self.pool.call("POST", f"pilots/{segment(self.pilot_id)}/deregister",
                               {"reason": self.reason}, timeout=10, tries=1)
            except (HttpStatusError, TransportError) as exc:
                log.warning("deregister failed: %s", exc)
        self._release_mounts()

    def _release_mounts(self) -> None:
        """Unmount what validation mounted (CVMFS repositories), jobs being gone."""
        try:
            values = validation.read_values(self.cfg.config_path) if self.cfg.config_path \
                else self.cfg.values
        except OSError:
            values = self.cfg.values
        for point in filter(None, values.get("GLIDEIN_CVMFS_Mounts", "").split(",")):
            problem = cvmfs.unmount(point)
            if problem:
                log.warning("could not unmount %s: %s", point, problem)
            else:
                log.info("unmounted %s", point)

    def report_body(self) -> dict[str, Any]:
        """The final report: exit reason, validation results, jobs, goodput/badput."""
        return {
            "exit_reason": self.reason, "exit_code": self.exit_code,
            "jobs_run": self.jobs_run, "jobs_failed": self.jobs_failed,
            "detail": self.detail, "cpus": self.total.cpus, "memory": self.total.memory,
            "gpus": self.total.gpus,
            "wall_seconds": round(time.monotonic() - self.started, 3),
            "goodput_seconds": round(self.goodput, 3), "badput_seconds": round(self.badput, 3),
            "validation": [r.as_report() for r in self.validation],
        }

    def report(self) -> None:
        """Final trail flush and report to the factory: best effort, errors logged."""
        if self.factory is None:
            log.warning("no factory URL; final report not sent")
            return
        body = self.report_body()
        self.trail.add("INFO" if self.exit_code == 0 else "ERROR", "exit",
                       f"{self.reason}: {self.detail}")
        self.trail.flush(final=True)
        try:
            self.factory.call("POST", f"glideins/{segment(self.cfg.glidein_id)}/report",
                              body, timeout=10, tries=2)
            log.info("final report sent: %s", self.reason)
        except (HttpStatusError, TransportError) as exc:
            log.warning("final report not delivered: %s", exc)
