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

import logging
import os
import shutil
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any, Dict, Optional

from .container import ContainerError, ContainerSetup, check_image, choose_image, wrap
from .http import Api, HttpStatusError, IntegrityError, TransportError, segment, sha256_file
from .isolation import Isolation, open_output
from .jobs import (
    FORK_LOCK,
    JobProcess,
    JobSetupError,
    JobSpec,
    Snapshot,
    checkpoint_names,
    job_environment,
    outputs_to_upload,
    sandbox_name,
    snapshot,
)
from .streams import Streamer, open_stream

log = logging.getLogger(__name__)

# A job that dies of one of these may have been signalled by the batch system
# together with its pilot: wait this long for the pilot's own signal handler to
# say so before the exit code is taken for the job's result.
SITE_SIGNAL_EXITS = frozenset(128 + s for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP))
SITE_SIGNAL_SETTLE = 2.0


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
    ) -> None:
        self.claim_id = str(claim["claim_id"])
        self.job_id = str(claim.get("job_id", self.claim_id))
        self.spec = spec
        self.pool = pool
        self.sandbox = os.path.join(work_dir, "execute", sandbox_name(self.job_id))
        self.job_env = job_env
        self.container = container or ContainerSetup(use="NEVER")
        self.isolation = isolation or Isolation()
        # Set when the pilot is ending: a job that ends from then on is vacated, not
        # completed. A batch system signals every process of the pilot's job at once,
        # so the job may die of that SIGTERM before the pilot kills it: its exit code
        # is the site's doing, not the job's result.
        self.vacating = vacating or threading.Event()
        self._lock = threading.Lock()
        self._killed = False
        self._process: JobProcess | None = None

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

            def launcher(argv: list[str], env: dict[str, str]) -> tuple[list[str], dict[str, str]]:
                return wrap(setup, image, sandbox, argv, env)

            log.info("%s: runs in a %s container, image %s", tag, setup.runtime, image)
        # what the job finds, to tell its outputs later: nothing but its inputs
        baseline = snapshot(self.sandbox) if self.spec.sandbox else {}
        env = job_environment(self.spec, self.sandbox, self.job_env)
        with self._lock:
            if self._killed:
                outcome.killed = True
                return
            self._process = JobProcess(
                self.spec, self.sandbox, env, launcher, self.isolation, append
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
            return
        log.debug("%s: exited %d after %.3fs", tag, outcome.exit_code, wall)
        if self.spec.checkpoint_exit_code == outcome.exit_code:
            self._checkpoint(tag, outcome, baseline)
            return
        outputs = self._upload_outputs(tag, baseline)
        if outputs is None:
            return
        outcome.result = {
            "claim_id": self.claim_id,
            "exit_code": outcome.exit_code,
            "outputs": outputs,
            "wall_seconds": round(wall, 3),
        }

    def _open_streams(self, append: frozenset[str]) -> dict[str, int]:
        """Descriptors of the streamed stdout/stderr files, opened before the job
        runs (streams.py); one stream when both go to one file."""
        spec, fds = self.spec, {}
        if spec.stream_out and spec.out is not None:
            fds["out"] = open_stream(self.sandbox, spec.out, spec.out in append)
        if spec.stream_err and spec.err is not None and not (spec.err == spec.out and fds):
            fds["err"] = open_stream(self.sandbox, spec.err, spec.err in append)
        return fds

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
        """Upload sandbox files by name, read through safe descriptors; None if
        any upload failed."""
        files: list[dict[str, str]] = []
        for name in names:
            try:
                fd = open_output(self.sandbox, name)
            except OSError as exc:
                log.warning("%s: checkpoint file %s skipped: %s", tag, name, exc)
                continue
            try:
                path = f"/proc/self/fd/{fd}"
                digest = sha256_file(path)
                self.pool.upload(f"files/{digest}", path)
            except (HttpStatusError, TransportError) as exc:
                log.error("%s: checkpoint file %s not uploaded: %s", tag, name, exc)
                return None
            finally:
                os.close(fd)
            files.append({"name": name, "sha256": digest})
        return files

    def _fetch_inputs(self) -> None:
        for item in self.spec.sandbox:
            dest = os.path.join(self.sandbox, item.name)
            path = f"files/{segment(item.sha256)}"
            if item.executable:  # no job starts while it is open for writing (jobs.py)
                with FORK_LOCK:
                    self.pool.download(path, dest, item.sha256)
            else:  # only an exec'd file can be busy: others download side by side
                self.pool.download(path, dest, item.sha256)
            if item.executable:
                os.chmod(dest, 0o755)

    def _upload_outputs(self, tag: str, baseline: Snapshot) -> list[dict[str, str]] | None:
        """Upload every output; None if any failed (a partial result is not sent)."""
        outputs: list[dict[str, str]] = []
        for name in outputs_to_upload(self.spec, self.sandbox, baseline):
            try:
                fd = open_output(self.sandbox, name)
            except OSError as exc:  # swapped for a symlink or a device since the check
                log.warning("%s: output %s skipped: %s", tag, name, exc)
                continue
            try:
                # the descriptor, never the path again: it cannot be swapped any more
                path = f"/proc/self/fd/{fd}"
                digest = sha256_file(path)
                self.pool.upload(f"files/{digest}", path)
            except (HttpStatusError, TransportError) as exc:
                log.error("%s: output %s not uploaded, result dropped: %s", tag, name, exc)
                return None
            finally:
                os.close(fd)
            outputs.append({"name": name, "sha256": digest})
        return outputs
