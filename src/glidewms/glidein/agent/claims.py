"""The life of one claim: sandbox in, job run, outputs out, result handed back.

The result does not go to the pool from here: it rides the pilot's next turn
(exchange.py). A claim that yields no result is simply dropped: the agent
stops listing it in heartbeats, its lease runs out and the pool puts the job
back to idle.
A self-checkpointing job that exits with its checkpoint code uploads its
checkpoint instead of its outputs, and its result says so: the pool keeps
the files and requeues the job, whose next run (here or on any pilot)
starts with them in its sandbox. A streaming job's stdout/stderr go to the
pool while it runs (streams.py); the rest is sent before the result.

That is the right answer whenever the result cannot be trusted or delivered
(bad sandbox, output upload failed, job killed), because the pool never
completes a job twice and a rerun elsewhere loses nothing.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import signal
import stat
import threading
import time
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

from .container import (
    ContainerError,
    ContainerSetup,
    check_image,
    choose_image,
    claim_container,
    wrap,
)
from .http import Api, HttpStatusError, IntegrityError, TransportError, segment, sha256_file
from .isolation import Isolation, open_output
from .jobs import (
    FORK_LOCK,
    InputError,
    JobProcess,
    JobSetupError,
    JobSpec,
    Snapshot,
    checkpoint_names,
    job_environment,
    plan_outputs,
    sandbox_name,
    snapshot,
)
from .resources import Gpu, gpu_environment
from .streams import Streamer, open_stream
from .transfer import BUILTIN, Plugins

log = logging.getLogger(__name__)

# A job that dies of one of these may have been signalled by the batch system
# together with its pilot: wait this long for the pilot's own signal handler to
# say so before the exit code is taken for the job's result.
SITE_SIGNAL_EXITS = frozenset(128 + s for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP))
SITE_SIGNAL_SETTLE = 2.0
# what a result may say about transfers, within the pool's bounds on a completion
MAX_MISSING = 100
MAX_REPORTED = 1024


@dataclass
class Outcome:
    """What happened to a claim, for the pilot's counters and final report."""

    started: bool = False
    exit_code: int | None = None
    setup_failed: bool = False
    killed: bool = False
    checkpointed: bool = False  # exited with its checkpoint code: it goes on
    wall: float = 0.0
    detail: str = ""
    # the result to report with the pilot's next turn, once outputs are uploaded
    result: Optional[Dict[str, Any]] = None

    @property
    def failed(self) -> bool:
        """A job that could not be set up or exited non-zero (not one we killed)."""
        return self.setup_failed or (
            not self.killed and not self.checkpointed and bool(self.exit_code)
        )


def _remove(sandbox: str) -> None:
    """Remove a job's sandbox: one rmdir when the job left nothing behind."""
    try:
        os.rmdir(sandbox)
    except OSError:
        shutil.rmtree(sandbox, ignore_errors=True)


class ClaimRunner:
    """Runs one claim in its own thread; ``kill`` may be called from any thread."""

    def __init__(
        self,
        claim: dict[str, Any],
        spec: JobSpec,
        pool: Api,
        *,
        work_dir: str,
        job_env: dict[str, str],
        container: ContainerSetup | None = None,
        vacating: threading.Event | None = None,
        isolation: Isolation | None = None,
        plugins: Plugins | None = None,
    ) -> None:
        self.claim_id = str(claim["claim_id"])
        self.job_id = str(claim.get("job_id", self.claim_id))
        self.spec = spec
        self.pool = pool
        self.sandbox = os.path.join(work_dir, "execute", sandbox_name(self.job_id))
        self.job_env = job_env
        self.container = container or ContainerSetup(use="NEVER")
        self.isolation = isolation or Isolation()
        self.plugins = plugins or Plugins(BUILTIN)
        # Set when the pilot is ending: a job that ends from then on is vacated, not
        # completed. A batch system signals every process of the pilot's job at once,
        # so the job may die of that SIGTERM before the pilot kills it: its exit code
        # is the site's doing, not the job's result.
        self.vacating = vacating or threading.Event()
        self._lock = threading.Lock()
        self._killed = False
        self._process: JobProcess | None = None
        # the devices the slot reserved for this claim (slot.py); None: no GPU here
        self.gpus: Optional[Tuple[Gpu, ...]] = None

    def kill(self, grace: float) -> None:
        """Stop the job (or keep it from starting); it will not be completed."""
        with self._lock:
            self._killed = True
            process = self._process
        if process is not None:
            log.info("job %s (claim %s): killing its process group", self.job_id, self.claim_id)
            process.kill(grace)

    def run(self) -> Outcome:
        """Do the whole claim; never raises (a thread has nobody to raise to)."""
        outcome = Outcome()
        try:
            self._run(outcome)
        except Exception:  # a bug here must not take the pilot down
            log.exception("job %s (claim %s): unexpected error", self.job_id, self.claim_id)
        finally:
            _remove(self.sandbox)
        return outcome

    def _run(self, outcome: Outcome) -> None:
        tag = f"job {self.job_id} (claim {self.claim_id})"
        try:
            os.mkdir(self.sandbox)
        except FileExistsError:  # left by an earlier run of this job on this pilot
            shutil.rmtree(self.sandbox, ignore_errors=True)
            os.makedirs(self.sandbox)
        except FileNotFoundError:  # the first job: execute/ itself is new
            os.makedirs(self.sandbox)
        streams: dict[str, int] = {}
        try:
            image = choose_image(self.container, self.spec.container, self.sandbox)
            self._fetch_inputs()
            if image is not None:  # it may have come with the inputs
                check_image(self.container, image, not self.spec.cmd, self.sandbox)
            # stdout/stderr a checkpoint brought: the job appends to them
            restored = {f.name for f in self.spec.sandbox}
            append = frozenset(n for n in (self.spec.out, self.spec.err) if n in restored)
            streams = self._open_streams(append)
            self.isolation.prepare(self.sandbox)
        except InputError as exc:
            # the job's own inputs cannot be had (a bad URL, clashing names): HTCondor
            # holds such a job; a rerun elsewhere would fail the same, no fault of the node
            log.error("%s: input transfer failed, the pool will hold the job: %s", tag, exc)
            outcome.detail = str(exc)
            outcome.result = {
                "claim_id": self.claim_id,
                "exit_code": 0,
                "outputs": [],
                "wall_seconds": 0.0,
                "input_error": {"reason": str(exc)[:MAX_REPORTED], "subcode": exc.subcode},
            }
            for fd in streams.values():
                os.close(fd)
            return
        except (
            IntegrityError,
            JobSetupError,
            HttpStatusError,
            TransportError,
            OSError,
            ContainerError,
        ) as exc:
            log.error("%s: sandbox refused, the job is left to the pool's lease: %s", tag, exc)
            outcome.setup_failed = True
            outcome.detail = str(exc)
            for fd in streams.values():
                os.close(fd)
            return
        launcher = None
        if image is not None:
            setup, sandbox = self.container, self.sandbox
            if self.gpus is not None:  # only this claim's /dev/nvidiaN (and the shared ones)
                setup = claim_container(setup, [g.device for g in self.gpus])

            def launcher(argv: list[str], env: dict[str, str]) -> tuple[list[str], dict[str, str]]:
                return wrap(setup, image, sandbox, argv, env)

            log.info("%s: runs in a %s container, image %s", tag, setup.runtime, image)
        # what the job finds, to tell its outputs later: nothing but its inputs
        baseline = snapshot(self.sandbox) if self.spec.sandbox or self.spec.input_urls else {}
        gpu_env = gpu_environment(self.gpus) if self.gpus is not None else None
        env = job_environment(self.spec, self.sandbox, self.job_env, gpu_env)
        with self._lock:
            if self._killed:
                outcome.killed = True
                return
            self._process = JobProcess(
                self.spec, self.sandbox, env, launcher, self.isolation, append, self._devices()
            )
        log.debug("%s: starting %s", tag, self.spec.cmd)
        streamer = Streamer(self.pool, self.claim_id, streams) if streams else None
        started = time.monotonic()
        outcome.started = True
        try:
            if streamer is not None:
                streamer.start()
            outcome.exit_code = self._process.run()
        finally:
            if streamer is not None:
                streamer.stop()  # the rest, before the result can complete the job
        wall = outcome.wall = time.monotonic() - started
        if outcome.exit_code in SITE_SIGNAL_EXITS and not self._killed:
            self.vacating.wait(SITE_SIGNAL_SETTLE)
        with self._lock:
            outcome.killed = self._killed or self.vacating.is_set()
        if outcome.killed:
            log.info("%s: killed after %.1fs; not completed", tag, wall)
            if self.vacating.is_set() and self.spec.when == "ON_EXIT_OR_EVICT":
                self._evicted(tag, outcome, baseline)
            return
        log.debug("%s: exited %d after %.3fs", tag, outcome.exit_code, wall)
        if self.spec.checkpoint_exit_code == outcome.exit_code:
            self._checkpoint(tag, outcome, baseline)
            return
        plan = plan_outputs(self.spec, self.sandbox, baseline, outcome.exit_code == 0)
        outputs = self._upload_outputs(tag, plan.files)
        if outputs is None:
            return
        outcome.result = {
            "claim_id": self.claim_id,
            "exit_code": outcome.exit_code,
            "outputs": outputs,
            "wall_seconds": round(wall, 3),
        }
        if plan.missing:  # the pool holds the job (HTCondor's TransferOutputError)
            log.warning("%s: listed outputs not produced: %s", tag, ", ".join(plan.missing))
            outcome.result["missing_outputs"] = [
                name[:MAX_REPORTED] for name in plan.missing[:MAX_MISSING]
            ]

    def _devices(self) -> Tuple[str, ...]:
        """The GPU device files this claim's job may use (its own /dev/nvidiaN and
        the driver's shared ones), for job isolation's fresh /dev."""
        if self.gpus is None:
            return ()
        return claim_container(self.container, [g.device for g in self.gpus]).gpu_devices

    def _open_streams(self, append: frozenset[str]) -> dict[str, int]:
        """Descriptors of the streamed stdout/stderr files, opened before the job
        runs (streams.py); one stream when both go to one file."""
        spec, fds = self.spec, {}
        if spec.stream_out and spec.out is not None:
            fds["out"] = open_stream(self.sandbox, spec.out, spec.out in append)
        if spec.stream_err and spec.err is not None and not (spec.err == spec.out and fds):
            fds["err"] = open_stream(self.sandbox, spec.err, spec.err in append)
        return fds

    def _evicted(self, tag: str, outcome: Outcome, baseline: Snapshot) -> None:
        """``when_to_transfer_output = ON_EXIT_OR_EVICT``: the pilot is ending the
        run, so the files output transfer would send go back now, and the pool
        keeps them as the job's checkpoint: the next run, elsewhere, starts with
        them (HTCondor spools them and brings them back). Top-level files only,
        as a checkpoint holds; nothing is reported if an upload failed."""
        plan = plan_outputs(self.spec, self.sandbox, baseline)
        files = self._upload_files(tag, [p for _, p in plan.files if "/" not in p])
        if files is None:
            return
        log.info("%s: evicted; %d file(s) kept for its next run", tag, len(files))
        outcome.result = {
            "claim_id": self.claim_id,
            "exit_code": outcome.exit_code or 0,
            "outputs": [],
            "checkpoint": files,
            "evicted": True,
            "wall_seconds": round(outcome.wall, 3),
        }

    def _checkpoint(self, tag: str, outcome: Outcome, baseline: Snapshot) -> None:
        """The job took a checkpoint: upload its files and report them (the pool
        requeues the job with them); nothing is reported if an upload failed,
        so the job's lease runs out and it goes on from its previous one."""
        outcome.checkpointed = True
        files = self._upload_files(tag, checkpoint_names(self.spec, self.sandbox, baseline))
        if files is None:
            return
        log.info("%s: checkpoint of %d file(s) taken", tag, len(files))
        outcome.result = {
            "claim_id": self.claim_id,
            "exit_code": outcome.exit_code,
            "outputs": [],
            "checkpoint": files,
            "wall_seconds": round(outcome.wall, 3),
        }

    def _upload_files(self, tag: str, names: list[str]) -> list[dict[str, str]] | None:
        """Upload checkpoint files by name; None if any upload failed."""
        return self._upload_outputs(tag, [(name, name) for name in names], "checkpoint file")

    def _fetch_inputs(self) -> None:
        """The sandbox files (subdirectories made as their names say), then the URL
        inputs through the transfer plugins; the proxy readable by its owner only."""
        for item in self.spec.sandbox:
            dest = self._input_path(item.name)
            path = f"files/{segment(item.sha256)}"
            if item.executable:  # no job starts while it is open for writing (jobs.py)
                with FORK_LOCK:
                    self.pool.download(path, dest, item.sha256)
            else:  # only an exec'd file can be busy: others download side by side
                self.pool.download(path, dest, item.sha256)
            if item.executable:
                os.chmod(dest, 0o755)
        for url in self.spec.input_urls:
            self.plugins.fetch(url, self.sandbox)
        if self.spec.stdin is not None and not os.path.isfile(
            os.path.join(self.sandbox, self.spec.stdin)
        ):
            raise JobSetupError(f"stdin {self.spec.stdin!r} is not in the sandbox")
        if self.spec.x509_proxy is not None:
            proxy = os.path.join(self.sandbox, self.spec.x509_proxy)
            if not os.path.isfile(proxy) or os.path.islink(proxy):
                raise JobSetupError(f"x509 proxy {self.spec.x509_proxy!r} is not in the sandbox")
            os.chmod(proxy, 0o600)

    def _input_path(self, name: str) -> str:
        """Where an input goes: its directories made in the fresh sandbox, each one
        checked to be a directory this pilot made (never a symlink, never a file
        another input put there: two inputs `a` and `a/b` are refused)."""
        parts = name.split("/")
        here = self.sandbox
        for part in parts[:-1]:
            here = os.path.join(here, part)
            with contextlib.suppress(FileExistsError):
                os.mkdir(here, 0o755)
            info = os.lstat(here)
            if not stat.S_ISDIR(info.st_mode):
                raise InputError(
                    f"input {name!r}: {part!r} is already a file in the sandbox", errno.ENOTDIR
                )
        dest = os.path.join(self.sandbox, name)
        if os.path.lexists(dest) and not os.path.isfile(dest):
            raise InputError(f"input {name!r}: already a directory in the sandbox", errno.EISDIR)
        return dest

    def _upload_outputs(
        self, tag: str, files: list[tuple[str, str]], what: str = "output"
    ) -> list[dict[str, str]] | None:
        """Upload every (name, path in the sandbox); None if any upload failed
        (a partial result is not sent). A file that cannot be opened safely
        any more is skipped. Each is reported under the name it lands as
        (jobs.OutputPlan)."""
        outputs: list[dict[str, str]] = []
        for name, inside in files:
            try:
                fd = open_output(self.sandbox, inside)
            except OSError as exc:  # swapped for a symlink or a device since the check
                log.warning("%s: %s %s skipped: %s", tag, what, inside, exc)
                continue
            try:
                # the descriptor, never the path again: it cannot be swapped any more
                path = f"/proc/self/fd/{fd}"
                digest = sha256_file(path)
                self.pool.upload(f"files/{digest}", path)
            except (HttpStatusError, TransportError) as exc:
                log.error("%s: %s %s not uploaded, result dropped: %s", tag, what, name, exc)
                return None
            finally:
                os.close(fd)
            outputs.append({"name": name, "sha256": digest})
        return outputs
