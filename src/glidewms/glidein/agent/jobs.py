"""One job on the node: its spec, its sandbox directory and its process.

Nothing here talks to the pool (see ``claims``), so the sandbox and process
rules (names, environment, exit codes, outputs) are testable with plain files.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import signal
import stat
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

from .isolation import Isolation, open_output

log = logging.getLogger(__name__)

# A job's executable may still be open for writing in a process forked by
# another thread (its download was in flight at that fork): exec then fails
# with ETXTBSY until that child execs and drops the inherited descriptor.
# Popen's retry catches that only when the job is exec'd directly; behind an
# isolation wrapper (setpriv, bwrap) the wrapper's own exec fails and the job
# ends with 126. So no fork happens while an executable is open for writing:
# downloads of executables and job starts take FORK_LOCK.
BUSY_RETRIES = 50
BUSY_BACKOFF = 0.02
FORK_LOCK = threading.Lock()

# Pilot variables passed on to jobs: proxies are how nodes reach the outside.
MAX_INPUT_URLS = 1000
MAX_OUTPUT_FILES = 1000  # files one job sends back (the pool keeps at most this many too)
MAX_OUTPUT_SCAN = 10000  # directory entries looked at for them

_PASSED_ENV = ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY")


class JobSetupError(Exception):
    """The claim cannot be turned into a runnable job (bad spec or sandbox)."""


class InputError(JobSetupError):
    """The job's own inputs cannot be laid out as it asks (a URL that cannot be
    fetched, an input file where another input needs a directory): no fault of
    the node, and a rerun elsewhere would fail the same, so the pool holds the
    job (HTCondor's TransferInputError) instead of letting it go round.
    ``subcode`` is an errno when one applies."""

    def __init__(self, message: str, subcode: int = 0) -> None:
        super().__init__(message)
        self.subcode = subcode


def stream_name(value: Any) -> str | None:
    """Where the job's stdout/stderr goes in the sandbox; None for ``/dev/null``.

    The pool may pass the submit-side path (``/home/alice/run/out.0``): as in
    HTCondor the stream is captured in the sandbox under that path's base name
    and sent back, and the submit side decides where it lands. A stream the
    user did not name goes to ``/dev/null``, as HTCondor's ``output`` and
    ``error`` default to: the sandbox is removed after the job, so a file
    nobody asked for would only cost its creation and removal.
    """
    if not value or value == "/dev/null":
        return None
    return check_name(os.path.basename(str(value)))


def check_name(name: Any) -> str:
    """A sandbox file name must stay in the sandbox: one path component, no ``..``."""
    if not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\0" in name:
        raise JobSetupError(f"unsafe sandbox file name {name!r}")
    return name


MAX_PATH_DEPTH = 32  # directories a sandbox path may go down (inputs and outputs)
MAX_PATH_BYTES = 4096


def check_path(name: Any) -> str:
    """A sandbox path (an input that came from a directory: ``dir/sub/file``):
    relative, every component a safe name, bounded depth and length. The pool
    checks the same at submit; the pilot does not rely on it."""
    if not isinstance(name, str) or len(name.encode("utf-8", "surrogatepass")) > MAX_PATH_BYTES:
        raise JobSetupError(f"unsafe sandbox path {str(name)[:80]!r}")
    parts = name.split("/")
    if len(parts) > MAX_PATH_DEPTH:
        raise JobSetupError(f"sandbox path {name[:80]!r} is deeper than {MAX_PATH_DEPTH}")
    try:
        for part in parts:
            check_name(part)
    except JobSetupError:
        raise JobSetupError(f"unsafe sandbox path {name!r}") from None
    return name


@dataclass
class SandboxFile:
    """One input file: fetched by its sha256 from the pool's file store.

    ``name`` may be a relative path (``dir/sub/file``): inputs that came from
    a directory in ``transfer_input_files`` keep their subdirectories.
    """

    name: str
    sha256: str
    executable: bool = False


@dataclass
class JobSpec:
    """The ``job`` part of a claim (see docs/protocol.md)."""

    cmd: str
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    sandbox: list[SandboxFile] = field(default_factory=list)
    out: str | None = None  # None: /dev/null
    err: str | None = None
    transfer_output: list[str] | None = None
    request: dict[str, int] = field(default_factory=dict)
    # {"image": str, "kind": str, "in_sandbox": bool}: run in a container (container.py)
    container: dict[str, Any] | None = None
    max_runtime: float | None = None  # seconds the job says it needs, if it says
    input_urls: list[str] = field(default_factory=list)  # fetched by a transfer plugin
    transfer_out: bool = True  # False: stdout stays on the node (TransferOut = false)
    transfer_err: bool = True
    when: str = "ON_EXIT"  # WhenToTransferOutput; ON_SUCCESS: outputs only after exit 0
    x509_proxy: str | None = None  # the proxy's sandbox name: X509_USER_PROXY points at it
    preserve_paths: bool = False  # preserve_relative_paths: outputs land under their path
    stdin: str | None = None  # the sandbox file that is the job's stdin (`input`); else /dev/null
    # self-checkpointing: an exit with this code is a checkpoint taken (see claims.py)
    checkpoint_exit_code: int | None = None
    checkpoint_files: list[str] | None = None  # None: what output transfer would send
    stream_out: bool = False  # send stdout to the pool while the job runs
    stream_err: bool = False

    @classmethod
    def from_claim(cls, job: Any) -> JobSpec:
        """Validate a claim's job object; JobSetupError names what is wrong."""
        try:
            files = [
                SandboxFile(
                    check_path(f["name"]), str(f["sha256"]).lower(), bool(f.get("executable"))
                )
                for f in job.get("sandbox") or []
            ]
            urls = [str(u) for u in job.get("input_urls") or []]
            if len(urls) > MAX_INPUT_URLS:
                raise JobSetupError(f"{len(urls)} input URLs; at most {MAX_INPUT_URLS}")
            proxy = job.get("x509_proxy")
            outputs = job.get("transfer_output")
            request = job.get("request") or {}
            spec = cls(
                cmd=str(job["cmd"]),
                args=[str(a) for a in job.get("args") or []],
                env={str(k): str(v) for k, v in (job.get("env") or {}).items()},
                sandbox=files,
                out=stream_name(job.get("out")),
                err=stream_name(job.get("err")),
                transfer_output=None if outputs is None else [str(n) for n in outputs],
                request={
                    "cpus": int(request.get("cpus") or 1),
                    "memory": int(request.get("memory") or 0),
                    "disk": int(request.get("disk") or 0),
                    "gpus": int(request.get("gpus") or 0),
                },
                container=_container(job.get("container")),
                max_runtime=float(job["max_runtime"]) if job.get("max_runtime") else None,
                input_urls=urls,
                transfer_out=job.get("transfer_out", True) is not False,
                transfer_err=job.get("transfer_err", True) is not False,
                when=str(job.get("when_to_transfer_output") or "ON_EXIT").upper(),
                preserve_paths=job.get("preserve_relative_paths") is True,
                x509_proxy=None if not proxy else check_name(os.path.basename(str(proxy))),
                stdin=None if not job.get("in") else check_name(os.path.basename(str(job["in"]))),
                checkpoint_exit_code=_int_or_none(job.get("checkpoint_exit_code")),
                checkpoint_files=None
                if job.get("checkpoint_files") is None
                else [str(n) for n in job["checkpoint_files"]],
                stream_out=job.get("stream_out") is True,
                stream_err=job.get("stream_err") is True,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise JobSetupError(f"malformed job in claim: {exc!r}") from None
        for sandbox_file in files:
            if not re.fullmatch(r"[0-9a-f]{64}", sandbox_file.sha256):
                raise JobSetupError(f"{sandbox_file.name}: bad sha256 {sandbox_file.sha256!r}")
        # what exec cannot take: refused here, with its name, not as a crash in Popen
        for name in spec.env:
            if not name or "=" in name or "\0" in name:
                raise JobSetupError(f"env: {name!r} is not an environment variable name")
        for text in [spec.cmd, *spec.args, *spec.env.values()]:
            if "\0" in text:
                raise JobSetupError(f"a NUL character in the job's command line or env: {text!r}")
        if not spec.cmd and spec.container is None:  # in a container: the image's entry point
            raise JobSetupError("the job has no cmd")
        return spec

    def executable_path(self, sandbox: str) -> str:
        """A transferred executable lives in the sandbox; otherwise cmd is a node path."""
        if any(f.name == self.cmd for f in self.sandbox):
            return os.path.join(sandbox, self.cmd)
        return self.cmd


_IMAGE_KINDS = ("", "sandbox", "sif", "docker")


def _int_or_none(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"checkpoint_exit_code: expected an integer, got {value!r}")
    return value


def _container(value: Any) -> dict[str, Any] | None:
    """The claim's optional ``container`` object: ``{"image": str}`` (image may be
    empty: the default), with ``kind`` (``sandbox``, ``sif``, ``docker``) and
    ``in_sandbox`` (the image travelled with the job) when the pool knows them."""
    if value is None or value is False:
        return None
    if value is True:
        return {"image": ""}
    expected = "{'image': str, 'kind': sandbox|sif|docker, 'in_sandbox': bool}"
    if (
        not isinstance(value, dict)
        or not isinstance(value.get("image", ""), str)
        or value.get("kind", "") not in _IMAGE_KINDS
        or not isinstance(value.get("in_sandbox", False), bool)
        or "\0" in value.get("image", "")
    ):
        raise JobSetupError(f"container: expected {expected}, got {value!r:.300}")
    found = {"image": value.get("image", "")}
    if value.get("kind"):
        found["kind"] = value["kind"]
    if value.get("in_sandbox"):
        found["in_sandbox"] = True
    return found


def sandbox_name(job_id: str) -> str:
    """Directory name for a job id: ``/`` and ``.`` (as in ``12.0``) become ``_``."""
    return re.sub(r"[/.\s]", "_", str(job_id)) or "job"


Snapshot = dict[str, tuple[int, int]]


def snapshot(sandbox: str) -> Snapshot:
    """(mtime_ns, size) of every top-level regular file, to spot changes later."""
    files: Snapshot = {}
    with os.scandir(sandbox) as entries:
        for entry in entries:
            info = entry.stat(follow_symlinks=False)
            if stat.S_ISREG(info.st_mode):
                files[entry.name] = (info.st_mtime_ns, info.st_size)
    return files


def _regular_file_inside(sandbox: str, name: str) -> bool:
    """``name`` is a regular file of the sandbox, reached without leaving it.

    Symlinks are never followed (a job could point one at a node file), and
    ``..`` or a symlinked directory cannot lead outside the sandbox.
    """
    if not name or os.path.isabs(name) or ".." in name.split("/"):
        return False
    path = os.path.join(sandbox, name)
    root = os.path.realpath(sandbox) + os.sep
    if not (os.path.realpath(os.path.dirname(path)) + os.sep).startswith(root):
        return False
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


@dataclass
class OutputPlan:
    """What goes back to the pool after the job, and what it failed to make.

    ``files`` pairs the name the output is reported under (where it lands
    relative to the job's ``Iwd``, as HTCondor places it: a listed file under
    its base name, a listed directory with its subdirectories, ``dir/`` its
    contents; stdout/stderr under their base names) with its path in the
    sandbox (with ``preserve_relative_paths``, a listed path keeps its
    directories instead of its base name). ``missing`` holds the
    ``transfer_output_files`` entries the job did not produce: HTCondor holds
    such a job, and so does the pool.
    """

    files: list[tuple[str, str]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    def add(self, name: str, path: str) -> None:
        if len(self.files) >= MAX_OUTPUT_FILES:
            log.warning("more than %d outputs; %s and later ones not sent", MAX_OUTPUT_FILES, path)
            return
        if all(name != known for known, _ in self.files):
            self.files.append((name, path))


def plan_outputs(
    spec: JobSpec, sandbox: str, baseline: Snapshot, succeeded: bool = True
) -> OutputPlan:
    """The outputs to send back (see ``OutputPlan``).

    Streams first, unless ``TransferOut``/``TransferErr`` keep them on the
    node. ``when = ON_SUCCESS`` sends no other file after a failed run (and
    so holds nothing for a missing one). Without ``transfer_output``, every
    new or changed top-level regular file (HTCondor does not look into
    subdirectories then). Symlinks are never followed nor sent, and nothing
    outside the sandbox is reached: such a listed entry counts as missing.
    """
    plan = OutputPlan()
    streams = [(spec.out, spec.transfer_out), (spec.err, spec.transfer_err)]
    for name, kept in streams:
        if name is not None and kept and _regular_file_inside(sandbox, name):
            plan.add(name, name)
    if spec.when == "ON_SUCCESS" and not succeeded:
        return plan
    skipped = {name for name, kept in streams if name is not None and not kept}
    if spec.transfer_output is None:
        after = snapshot(sandbox)
        for name in sorted(after):
            if baseline.get(name) != after[name] and name not in skipped:
                plan.add(name, name)
        return plan
    for entry in spec.transfer_output:
        contents = entry.endswith("/") and entry.strip("/") != ""
        path = entry.rstrip("/") if contents else entry
        landed = os.path.normpath(path) if spec.preserve_paths else os.path.basename(path)
        if _regular_file_inside(sandbox, path) and not contents:
            plan.add(landed, path)
        elif _directory_inside(sandbox, path):
            prefix = "" if contents else landed + "/"
            for inner in _files_under(sandbox, path):
                plan.add(prefix + inner, f"{path}/{inner}")
        else:
            plan.missing.append(entry)
    return plan


def outputs_to_upload(spec: JobSpec, sandbox: str, baseline: Snapshot) -> list[str]:
    """The sandbox paths ``plan_outputs`` would send back (for callers that only list)."""
    return [path for _, path in plan_outputs(spec, sandbox, baseline).files]


def _directory_inside(sandbox: str, name: str) -> bool:
    """``name`` is a directory of the sandbox (not a symlink), reached without leaving it."""
    if not name or os.path.isabs(name) or ".." in name.split("/"):
        return False
    path = os.path.join(sandbox, name)
    root = os.path.realpath(sandbox) + os.sep
    if not (os.path.realpath(path) + os.sep).startswith(root):
        return False
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def _files_under(sandbox: str, name: str) -> list[str]:
    """Regular files below a sandbox directory, relative to it, sorted; symlinks
    (to files or directories) are not followed; bounded in entries and depth."""
    top = os.path.join(sandbox, name)
    found: list[str] = []
    seen = 0
    for here, dirs, files in os.walk(top, followlinks=False):
        rel = os.path.relpath(here, top)
        depth = 0 if rel == "." else rel.count("/") + 1
        if depth + name.count("/") + 1 >= MAX_PATH_DEPTH:
            dirs[:] = []
        dirs.sort()
        for f in sorted(files):
            seen += 1
            if seen > MAX_OUTPUT_SCAN:
                log.warning("%s: more than %d entries; the rest not sent", name, MAX_OUTPUT_SCAN)
                return found
            inner = f if rel == "." else f"{rel}/{f}"
            try:
                if stat.S_ISREG(os.lstat(os.path.join(here, f)).st_mode):
                    found.append(inner)
            except OSError:
                continue
    return found


def checkpoint_names(spec: JobSpec, sandbox: str, baseline: Snapshot) -> list[str]:
    """The files of a checkpoint, as HTCondor takes them: those named by
    ``transfer_checkpoint_files``, or without it what output transfer would
    send (``outputs_to_upload``). The job's stdout/stderr files go with it,
    so the next run appends to them and the final ones hold every run's.
    Only plain names in the sandbox: the pool keeps a checkpoint as files."""
    if spec.checkpoint_files is None:
        wanted = outputs_to_upload(spec, sandbox, baseline)
    else:
        wanted = [n for n in (spec.out, spec.err, *spec.checkpoint_files) if n is not None]
    names: list[str] = []
    for name in wanted:
        if name in names:
            continue
        if "/" in name or not _regular_file_inside(sandbox, name):
            log.warning("checkpoint file %r is missing, not a plain file name or not regular", name)
            continue
        names.append(name)
    return names


def job_environment(
    spec: JobSpec, sandbox: str, extra: dict[str, str], gpus: Optional[Dict[str, str]] = None
) -> dict[str, str]:
    """A clean environment: never the pilot's own (it names the pilot token file).

    Order matters: defaults < the job's env < what the pilot must set
    (``_CONDOR_SCRATCH_DIR``, ``GLIDEIN_Site``... in ``extra``) < the claim's
    own GPUs (``gpus``, resources.gpu_environment; None on a pilot without
    GPUs), which replace the pilot's whole list that validation published:
    a job is told only its own devices and cannot name others.
    """
    env = {
        "PATH": os.environ.get("PATH") or "/usr/local/bin:/usr/bin:/bin",
        "HOME": sandbox,
        "TMPDIR": sandbox,
        "LANG": os.environ.get("LANG") or "C",
        "OMP_NUM_THREADS": str(max(1, spec.request.get("cpus", 1))),
    }
    env.update({k: os.environ[k] for k in _PASSED_ENV if k in os.environ})
    env.update(spec.env)
    env.update(extra)
    env["_CONDOR_SCRATCH_DIR"] = sandbox
    if gpus is not None:
        env.update(gpus)
    if spec.x509_proxy is not None:  # HTCondor sets it to the proxy in the sandbox
        env["X509_USER_PROXY"] = os.path.join(sandbox, spec.x509_proxy)
    return env


def exit_code_of(returncode: int) -> int:
    """Shell convention: a job killed by signal N exits 128+N."""
    return 128 - returncode if returncode < 0 else returncode


Launcher = Callable[[List[str], Dict[str, str]], Tuple[List[str], Dict[str, str]]]


class JobProcess:
    """The job's process, in its own session so the whole group can be killed.

    ``launcher`` turns the job's command line and environment into the ones
    actually run (a container runtime's, see ``container.wrap``); without one,
    ``isolation`` may (bubblewrap's, see ``isolation.Isolation``), and it says
    which account the job runs as.
    """

    def __init__(
        self,
        spec: JobSpec,
        sandbox: str,
        env: dict[str, str],
        launcher: Launcher | None = None,
        isolation: Optional[Isolation] = None,
        append: frozenset[str] = frozenset(),
        devices: Tuple[str, ...] = (),
    ) -> None:
        self.spec = spec
        # the claim's GPU device files, for a bubblewrap-isolated job's fresh /dev
        self.devices = devices
        # stdout/stderr files a checkpoint brought: the job goes on writing them
        self.append = append
        self.sandbox = sandbox
        self.env = env
        self.launcher = launcher
        self.isolation = isolation or Isolation()
        # bubblewrap's process is the one started: a SIGTERM to it would end it, and
        # with it (--die-with-parent) the job, at once; the job itself gets it instead
        self._supervised = launcher is None and self.isolation.supervised
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()  # a kill racing the start is applied once started
        self._pending_kill: float | None = None
        self._not_started = 0  # the shell's exit code when the command could not run
        self.started = threading.Event()
        self.done = threading.Event()

    def run(self) -> int:
        """Start the job, wait for it, and return its exit code.

        A command that cannot be executed gets the shell's 127 (not found) or
        126 (not executable), with the reason written to the job's stderr (if
        the job named one) and to the pilot's log.
        """
        argv = [self.spec.executable_path(self.sandbox), *self.spec.args]
        env = self.env
        if self.launcher is not None:
            argv, env = self.launcher(argv, env)
        elif self._supervised:
            argv = self.isolation.wrap(argv, self.sandbox, self.devices)
        argv = self.isolation.as_account(argv)
        try:
            proc = self._start(argv, env)
            if proc is None:
                return self._not_started
            with self._lock:
                self._proc = proc
                pending, self._pending_kill = self._pending_kill, None
            self.started.set()
            if pending is not None:  # killed while it was being started
                self.kill(pending)
            returncode = proc.wait()
            self._signal_group(signal.SIGKILL)  # strays the job left in the background
            return exit_code_of(returncode)
        finally:
            self.done.set()

    def _start(self, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes] | None:
        """The job's process, or None (with ``_not_started`` set) if it cannot run.

        Plain descriptors, not file objects, and /dev/null opened once: a
        trivial job's cost is mostly system calls, and each one hands the GIL
        to another job's thread.
        """
        null = _devnull()
        opened: dict[str | None, int] = {None: null}
        owner = self.isolation.owner
        stdin = null
        try:
            if self.spec.stdin is not None:  # an input the pilot wrote: never a symlink
                stdin = open_output(self.sandbox, self.spec.stdin)
            for name in (self.spec.out, self.spec.err):
                if name not in opened:  # out == err: one file
                    keep = os.O_APPEND if name in self.append else os.O_TRUNC
                    opened[name] = os.open(
                        os.path.join(self.sandbox, str(name)),
                        os.O_WRONLY | os.O_CREAT | keep | os.O_CLOEXEC | os.O_NOFOLLOW,
                        0o666,
                    )
                    if owner is not None:
                        os.fchown(opened[name], *owner)
            try:
                return _popen_unless_busy(
                    argv,
                    cwd=self.sandbox,
                    env=env,
                    stdin=stdin,
                    stdout=opened[self.spec.out],
                    stderr=opened[self.spec.err],
                    start_new_session=True,
                    close_fds=True,
                    **self.isolation.popen_options(),
                )
            except OSError as exc:
                reason = f"cannot execute {argv[0]}: {exc.strerror}"
                log.warning("job in %s: %s", self.sandbox, reason)
                if self.spec.err is not None:
                    os.write(opened[self.spec.err], f"glidein: {reason}\n".encode())
                self._not_started = 127 if isinstance(exc, FileNotFoundError) else 126
                return None
        finally:
            for fd in [*opened.values(), stdin]:
                if fd != null:
                    os.close(fd)

    def kill(self, grace: float) -> None:
        """SIGTERM the job's process group, then SIGKILL it after ``grace`` seconds.

        Before the process exists, the kill is kept and applied as soon as it does.
        """
        with self._lock:
            if self.done.is_set():
                return
            if self._proc is None:
                self._pending_kill = grace
                return
        if self._supervised:
            self._signal_inside(signal.SIGTERM)
        else:
            self._signal_group(signal.SIGTERM)
        timer = threading.Timer(grace, self._kill_if_running)
        timer.daemon = True
        timer.start()

    def _kill_if_running(self) -> None:
        if not self.done.is_set():
            self._signal_group(signal.SIGKILL)

    def _signal_group(self, signum: int) -> None:
        if self._proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, signum)

    def _signal_inside(self, signum: int) -> None:
        """Signal the job's process group but its leader (bubblewrap): the job and
        what it started get the signal, bubblewrap stays to wait for them. Its
        init in the pid namespace ignores signals it has no handler for."""
        if self._proc is None:
            return
        group = self._proc.pid
        for name in os.listdir("/proc"):
            if not name.isdigit() or int(name) == group:
                continue
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if os.getpgid(int(name)) == group:
                    os.kill(int(name), signum)


_NULL_FD: list[int] = []  # /dev/null, opened once per pilot (close-on-exec)
_NULL_LOCK = threading.Lock()


def _devnull() -> int:
    """A descriptor of /dev/null for every job's stdin and unnamed streams."""
    if not _NULL_FD:
        with _NULL_LOCK:
            if not _NULL_FD:
                _NULL_FD.append(os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC))
    return _NULL_FD[0]


def _popen_unless_busy(argv: List[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    """``Popen``, retried while the executable is busy (ETXTBSY).

    Sibling job threads download and fork concurrently, so a fork can carry a
    write descriptor of this job's executable for the instant before its exec;
    the busy state is transient and the job must not fail with 126 for it.
    """
    for attempt in range(BUSY_RETRIES):
        try:
            with FORK_LOCK:
                return subprocess.Popen(argv, **kwargs)
        except OSError as exc:
            if exc.errno != errno.ETXTBSY or attempt == BUSY_RETRIES - 1:
                raise
            log.info("%s: text file busy, retrying", argv[0])
            time.sleep(BUSY_BACKOFF * min(attempt + 1, 5))
    raise AssertionError("unreachable")
