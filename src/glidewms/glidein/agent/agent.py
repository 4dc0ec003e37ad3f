"""The pilot's control loop: validate, register, claim while resources are free, exit.

Threads: the main thread validates the node (checks.py), then waits for the
exit decision (so SIGTERM/SIGINT are handled at once, even while a claim
long-poll is in flight); the exchange's claim and completion threads
(exchange.py) take turns with the pool whenever resources are free and the
pilot takes work; a heartbeat thread renews leases and applies the pool's
kill/drain instructions; a periodic-validation thread reruns the scripts
marked periodic; jobs run in the slot's kept worker threads (slot.py).
Shared state lives under one Condition; the first exit reason wins.

Every exit path ends the same way: running jobs are vacated (killed, never
completed, so the pool requeues them at once when the pilot deregisters), the
pilot deregisters, the trail is flushed and the final report sent; a black
hole then keeps the node for ``black_hole_hold`` seconds so the batch system
does not hand it straight to another pilot.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import signal
import threading
import time
from typing import Any

from . import cvmfs, validation
from .checks import Checks, ValidationFailed
from .claims import ClaimRunner, Outcome
from .config import GlideinConfig, config_line
from .container import ContainerSetup
from .exchange import Exchange, Offer
from .http import Api, HttpStatusError, IncompatiblePeer, TransportError, select_token
from .isolation import Isolation
from .jobs import JobSetupError, JobSpec
from .policy import (
    Action,
    ExitReason,
    State,
    Step,
    black_hole,
    core_seconds,
    heartbeat_interval,
    hold_back,
    job_fits,
    next_step,
    retire_and_die,
    token_expiry,
    token_retire,
)
from .resources import Resources, detect_resources, pilot_gpus, slot_ad
from .slot import Slot
from .trail import Trail, TrailHandler
from .transfer import plugins_for

log = logging.getLogger(__name__)

SIGNAL_POLL = 0.1  # how soon the main thread acts on a recorded signal
TRAIL_FLUSH = 5.0  # seconds between trail flushes while jobs run (not one per job)


class Agent:
    """One pilot: a partitionable slot offering ``total`` resources to the pool.

    It decides (validation, signals, exit reasons, what a turn may ask for)
    and its parts act: ``checks`` runs the validation scripts, ``exchange``
    talks with the pool (for it the agent is the ``exchange.Pilot``), ``slot``
    runs the claims and ``trail`` sends records and the report to the factory.
    """

    def __init__(
        self,
        cfg: GlideinConfig,
        *,
        total: Resources | None = None,
        backoff: float = 1.0,
        kill_grace: float = 10.0,
    ) -> None:
        self.cfg = cfg
        self._fixed_total = total is not None
        self.kill_grace = kill_grace
        self.finished = threading.Event()
        self.hold_over = threading.Event()
        self._signalled = 0  # set by the signal handler only (see on_signal)
        ca = cfg.ca_file or None
        self.pool = Api(
            cfg.pool_url,
            cfg.token_file,
            backoff=backoff,
            abort=self.finished,
            check_version=True,
            ca_file=ca,
        )
        self.factory = (
            Api(cfg.factory_url, cfg.token_file, backoff=backoff, ca_file=ca)
            if cfg.factory_url
            else None
        )
        self.trail = Trail(self.factory, cfg.glidein_id)
        self.checks = Checks(self.trail)
        self._cond = threading.Condition()
        self.exchange = Exchange(self.pool, self, lock=self._cond, finished=self.finished)
        self.slot = Slot(
            total or detect_resources(cfg),
            lock=self._cond,
            results=self.exchange.completions,
            trail=self.trail,
            ended=self._job_ended,
            hold=self._hold_back,
        )
        self.reason: ExitReason | None = None
        self.detail = ""
        self.exit_code = 0
        self.draining = False
        self.stop_reason: ExitReason | None = None
        self.stop_detail = ""
        self.failure_times: list[float] = []
        self.published_env: dict[str, str] = {}
        self.container = ContainerSetup(use="NEVER")
        # how jobs are kept from the pilot: from the config the bootstrap wrote, before
        # any validation script could append to it (isolation.py)
        self._isolation_problem = ""
        try:
            self.isolation = Isolation.from_values(cfg.values, cfg.work_dir, cfg.token_file)
        except ValueError as exc:
            self.isolation, self._isolation_problem = Isolation(), str(exc)
        self.job_root = cfg.work_dir  # where execute/<job> sandboxes go (isolate())
        self._own_job_root = False
        self.started = time.monotonic()
        retire, die = retire_and_die(
            cfg.lifetime, cfg.die_margin, cfg.retire_before, cfg.retire_spread, random.random()
        )
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
                    self._token_expires = token_expiry(select_token(handle.read()))
            except OSError:
                pass  # the next request says what is wrong with it
        return token_retire(self.deadline, self._token_expires, time.time(), now)

    # -- decisions ------------------------------------------------------------

    def finish(self, reason: ExitReason, detail: str, code: int | None = None) -> None:
        """Decide to exit (only the first decision counts) and wake everyone."""
        with self._cond:
            if self.reason is None:
                self.reason, self.detail = reason, detail
                self.exit_code = reason.exit_code if code is None else code
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
        self.finish(ExitReason.SIGNAL, f"got {signal.Signals(signum).name}", 128 + signum)
        return True

    def stop_taking_work(self, reason: ExitReason, detail: str) -> None:
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
            State(
                now=time.monotonic(),
                idle_since=self.idle_since,
                idle_timeout=self.cfg.idle_timeout,
                deadline=self.retire_at(),
                draining=self.draining,
                running=len(self.slot.runners),
                free_cpus=self.slot.free.cpus,
                free_memory=self.slot.free.memory,
                die_at=self.die_at,
                tail_timeout=self.cfg.tail_timeout,
                jobs_run=self.slot.jobs_run,
                stop_reason=self.stop_reason,
                stop_detail=self.stop_detail,
            ),
            self.cfg.lifetime,
        )
        if step.action is Action.EXIT and step.reason is not None:
            self.finish(step.reason, step.detail)
        return step

    def offer(self) -> Offer | None:
        """Under the lock: what the exchange's next turn may ask for; None once
        the pilot is ending (the exchange's interface, exchange.Pilot)."""
        if self.reason is not None:
            return None
        step = self._decide()
        if step.action is Action.EXIT:
            return None
        return Offer(
            step,
            running=len(self.slot.runners),
            free=self.slot.free.as_free(),
            cpus=self.slot.total.cpus,
            max_runtime=max(0, int(self.die_at - time.monotonic())),
        )

    # -- validation -----------------------------------------------------------

    def isolate(self) -> bool:
        """Check that jobs can be isolated as the factory asked, and say how they are;
        a pilot that cannot is a validation failure (never runs jobs unisolated)."""
        problem = self._isolation_problem or self.isolation.check(self.cfg.work_dir)
        if not problem:
            try:
                self.job_root = self.isolation.job_root(self.cfg.work_dir)
                self._own_job_root = self.job_root != self.cfg.work_dir
                if self._own_job_root and self.cfg.config_path:  # for validation (cvmfs)
                    with open(self.cfg.config_path, "a", encoding="utf-8") as handle:
                        handle.write(config_line("GLIDEIN_Job_Root", self.job_root))
            except OSError as exc:
                problem = str(exc)
        if problem:
            self.finish(ExitReason.VALIDATION_FAILED, f"job isolation: {problem}")
            return False
        asked = "GLIDEIN_Job_Isolation" in self.cfg.values
        level = logging.WARNING if asked and self.isolation.mode == "none" else logging.INFO
        log.log(level, "%s", self.isolation.describe())
        return True

    def validate(self) -> bool:
        """Run the validation scripts; on success take in what they published."""
        if not self.cfg.config_path:
            return True
        try:
            done = self.checks.at_startup(self.cfg)
        except ValidationFailed as exc:
            self.finish(ExitReason.VALIDATION_FAILED, str(exc))
            return False
        self.cfg, self.container, self.published_env = done.cfg, done.container, done.job_env
        if not self._fixed_total:
            total = detect_resources(self.cfg)
            self.slot.resize(total, pilot_gpus(self.cfg.values, total.gpus))
        return True

    def _periodic_loop(self) -> None:
        """Rerun periodic scripts; a failure stops new jobs (the pilot then retires)."""
        failed = self.checks.rerun_periodic(self.cfg, self.finished)
        if failed:
            self.stop_taking_work(ExitReason.VALIDATION_FAILED, failed)

    # -- jobs -----------------------------------------------------------------

    def start_claim(self, claim: dict[str, Any], pool: Api | None = None, tag: str = "") -> None:
        """Start a claim the pool handed out, unless it cannot run here (then its
        lease runs out and the pool requeues the job). ``pool``: the one it came
        from, when the pilot serves several (pools.py); ``tag`` then prefixes its
        sandbox's name, as two pools may each send a job 1.0."""
        try:
            spec = JobSpec.from_claim(claim.get("job"))
            runner = ClaimRunner(
                claim,
                spec,
                pool or self.pool,
                work_dir=self.job_root,
                job_env=self._job_env(),
                container=self.container,
                vacating=self.finished,
                isolation=self.isolation,
                plugins=plugins_for(self.cfg.values),
            )
            if tag:
                base, name = os.path.split(runner.sandbox)
                runner.sandbox = os.path.join(base, f"{tag}-{name}")
        except (JobSetupError, KeyError) as exc:
            log.error("unusable claim %s, left to its lease: %s", claim.get("claim_id"), exc)
            with self._cond:
                self.slot.jobs_failed += 1
            return
        if not job_fits(spec.max_runtime, time.monotonic(), self.die_at):
            log.warning(
                "claim %s: the job needs %.0fs, more than this pilot has left; not "
                "started, left to its lease",
                runner.claim_id,
                spec.max_runtime or 0,
            )
            return
        with self._cond:
            if self.reason is not None:
                log.warning("claim %s arrived while exiting; not started", runner.claim_id)
                return
            self.slot.reserve(runner)
        log.debug("claimed job %s (claim %s)", runner.job_id, runner.claim_id)
        self.slot.run(runner)

    def _hold_back(self, outcome: Outcome) -> float:
        """Under the lock: seconds this job's result waits before the pool sees it
        (a quick failure that may yet prove this node a black hole)."""
        return hold_back(
            outcome.failed, outcome.wall, self.cfg.black_hole_jobs, self.cfg.black_hole_window
        )

    def _job_ended(self, outcome: Outcome) -> None:
        """Under the lock, after a job ended (slot.py): too many failures make a
        black hole; an empty slot starts the idle clock (or the pilot exits)."""
        if outcome.failed:
            self.failure_times.append(time.monotonic())
            if black_hole(
                self.failure_times,
                time.monotonic(),
                self.cfg.black_hole_jobs,
                self.cfg.black_hole_window,
            ):
                if not self.stop_reason:  # its victims go back to the pool (exchange.py)
                    self._freeze_results()
                self.stop_taking_work(
                    ExitReason.BLACK_HOLE,
                    f"{self.cfg.black_hole_jobs} jobs failed within {self.cfg.black_hole_window}s",
                )
        if not self.slot.runners:
            self.idle_since = time.monotonic()
            if self.reason is None:
                self._decide()  # a draining or retired pilot exits now

    def _freeze_results(self) -> None:
        """Under the lock: a black hole; held results never come due (completions.py)."""
        self.exchange.completions.freeze()

    def _job_env(self) -> dict[str, str]:
        return {
            **self.published_env,
            "GLIDEIN_Site": self.cfg.site,
            "GLIDEIN_Entry_Name": self.cfg.entry,
            "GLIDEIN_Id": self.cfg.glidein_id,
        }

    def running_claims(self) -> list[str]:
        """Under the lock: the claims whose jobs run (heartbeats renew them)."""
        return list(self.slot.runners)

    def follow(self, kill: list[str], drain: bool) -> None:
        """A heartbeat's instructions: kill those claims' jobs (never completed); drain,
        or no longer (an operator lifted the drain while jobs still ran here)."""
        with self._cond:
            victims = [self.slot.runners[c] for c in kill if c in self.slot.runners]
            if drain and not self.draining:
                log.info("the pool asks this pilot to drain: no new claims")
                self.draining = True
                if self.reason is None:
                    self._decide()  # an idle pilot exits now, not after its long-poll
                self._cond.notify_all()
            elif not drain and self.draining and self.reason is None:
                log.info("the pool lifted this pilot's drain: it takes jobs again")
                self.draining = False
                self._cond.notify_all()
        for runner in victims:
            runner.kill(self.kill_grace)

    # -- lifecycle ------------------------------------------------------------

    def register(self) -> float:
        """Register the slot; return the heartbeat interval to use."""
        now = time.time()
        ad = slot_ad(self.cfg, self.slot.total, now + (self.die_at - time.monotonic()))
        ad["GLIDEIN_ToRetire"] = int(now + (self.deadline - time.monotonic()))
        answer = self.exchange.register(ad, self.cfg.glidein_id, patience=self.cfg.outage_tolerance)
        self.idle_since = time.monotonic()  # the idle clock starts when the slot is offered
        interval = heartbeat_interval(
            float(answer.get("heartbeat_seconds") or 0),
            float(answer.get("lease_seconds") or 0),
            float(self.cfg.heartbeat or 0),
        )
        log.info(
            "registered as pilot %s: %s; heartbeat every %.0fs",
            self.exchange.pilot_id,
            self.slot.total.as_free(),
            interval,
        )
        # The factory counts this as "validated and runs" (its entry health, probes).
        self.trail.add("INFO", "registered", f"pilot {self.exchange.pilot_id}")
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
        self.trail.add(
            "INFO",
            "startup",
            f"pilot {self.cfg.glidein_id} at {self.cfg.site}/"
            f"{self.cfg.entry}, lifetime {self.cfg.lifetime}s",
        )
        if self.isolate() and self.validate() and not self._take_signal() and self.reason is None:
            self.trail.flush()
            try:
                interval = self.register()
            except IncompatiblePeer as exc:
                self.finish(ExitReason.ERROR, str(exc))
            except (HttpStatusError, TransportError, KeyError, TypeError) as exc:
                self.finish(ExitReason.ERROR, f"registration failed: {type(exc).__name__}: {exc}")
            else:
                for target, args in self._loops(interval):
                    threading.Thread(
                        target=self._guarded,
                        args=(target, *args),
                        daemon=True,
                        name=target.__name__.strip("_"),
                    ).start()
                self.trail.flush()
        while not self.finished.wait(SIGNAL_POLL):
            self._take_signal()
        self._shutdown()
        self.trail.report(self.report_body())
        if self.reason is ExitReason.BLACK_HOLE and self.cfg.black_hole_hold:
            log.warning("black hole: keeping this node for %ds", self.cfg.black_hole_hold)
            end = time.monotonic() + self.cfg.black_hole_hold
            while not self.hold_over.wait(min(SIGNAL_POLL, max(0.0, end - time.monotonic()))):
                if self._signalled or time.monotonic() >= end:
                    break

    def _loops(self, interval: float) -> list[tuple[Any, tuple[Any, ...]]]:
        """The threads a registered pilot runs: (function, arguments)."""
        loops: list[tuple[Any, tuple[Any, ...]]] = [
            (self.exchange.heartbeat_loop, (interval,)),
            (self.exchange.claim_loop, ()),
            (self.exchange.completion_loop, ()),
            (self.trail.flush_loop, (self.finished, TRAIL_FLUSH)),
        ]
        if self.checks.periodic:
            loops.append((self._periodic_loop, ()))
        return loops

    def _guarded(self, target: Any, *args: Any) -> None:
        """Run a loop thread; if it crashes, end the pilot with reason error.

        Otherwise a bug in a loop would leave a pilot that neither claims nor exits.
        A pool of another protocol version ends it the same way, said plainly.
        """
        try:
            target(*args)
        except IncompatiblePeer as exc:
            self.finish(ExitReason.ERROR, str(exc))
        except Exception as exc:
            log.exception("%s crashed", target.__name__)
            self.finish(ExitReason.ERROR, f"internal error in {target.__name__}: {exc!r}")

    def _shutdown(self) -> None:
        """Vacate what still runs (never completed), then deregister (requeues them)."""
        self.slot.vacate(self.kill_grace)
        if self.reason is not ExitReason.LOST and self.reason is not None:
            if self.reason is ExitReason.BLACK_HOLE:
                self.exchange.report_black_hole(self.detail)
            self.exchange.flush()
            self.exchange.deregister(self.reason)
        self._release_mounts()
        if self._own_job_root:  # outside the work dir the bootstrap removes
            shutil.rmtree(self.job_root, ignore_errors=True)

    def _release_mounts(self) -> None:
        """Unmount what validation mounted (CVMFS repositories), jobs being gone."""
        try:
            values = (
                validation.read_values(self.cfg.config_path)
                if self.cfg.config_path
                else self.cfg.values
            )
        except OSError:
            values = self.cfg.values
        for point in filter(None, values.get("GLIDEIN_CVMFS_Mounts", "").split(",")):
            problem = cvmfs.unmount(point)
            if problem:
                log.warning("could not unmount %s: %s", point, problem)
            else:
                log.info("unmounted %s", point)

    def report_body(self) -> dict[str, Any]:
        """The final report: exit reason, validation results, jobs, goodput/badput.

        Goodput and badput are in wall seconds (as older pilots sent them) and in
        core-seconds (wall x the cores each job held). A black hole about to keep
        its node says for how long (``hold_seconds``, sent before the hold: a
        signal may cut it short): the factory counts that time, on all the
        pilot's cores, as badput.
        """
        hold = self.cfg.black_hole_hold if self.reason is ExitReason.BLACK_HOLE else 0
        cpus = self.slot.total.cpus
        return {
            "exit_reason": self.reason,
            "exit_code": self.exit_code,
            "jobs_run": self.slot.jobs_run,
            "jobs_failed": self.slot.jobs_failed,
            "detail": self.detail,
            "cpus": cpus,
            "memory": self.slot.total.memory,
            "gpus": self.slot.total.gpus,
            "wall_seconds": round(time.monotonic() - self.started, 3),
            "goodput_seconds": round(self.exchange.goodput, 3),
            "badput_seconds": round(self.slot.badput + self.exchange.badput, 3),
            "goodput_core_seconds": round(self.exchange.goodput_cores, 3),
            "badput_core_seconds": round(self.slot.badput_cores + self.exchange.badput_cores, 3),
            "pilot_core_seconds": round(core_seconds(time.monotonic() - self.started, cpus), 3),
            "hold_seconds": hold,
            "black_hole_requeued": self.exchange.black_hole_requeued,
            "validation": [r.as_report() for r in self.checks.results],
        }
