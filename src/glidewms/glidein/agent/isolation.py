"""Keep a job away from its pilot and from the services on the same machine.

A job is someone else's code. On a worker node it runs under the pilot's
account, which holds the pilot token; where the pilot runs next to the
services (the factory's local backend, ``glidewms up``), that account is the
services' own, and a job once read ``keys/issuer.key`` and minted an admin
token. The factory tells its local pilots how to isolate their jobs
(``GLIDEIN_Job_Isolation``, set with ``--set``; docs/glidein.md):

- ``account``: the pilot runs as root; every job runs as an unprivileged
  account (``GLIDEIN_Job_Account``, default ``nobody``), switched to by
  ``setpriv`` (util-linux) in front of the job's command: ``Popen(user=...)``
  would fork the whole agent instead of vfork, several times slower per job
  (bench/RESULTS.md); without setpriv, it is Popen's switch. Its sandbox is
  chowned to it, the pilot's work dir is made traversable (0711) and nothing
  else of the pilot's is readable by it: the token file, the state dir and
  the keys are 0600/0700 root's, and another account cannot read
  ``/proc/<pilot>/environ`` or its memory.
- ``sandbox``: each job runs under bubblewrap (``bwrap``, no privilege
  needed): the host's root read-only, a private ``/tmp``, ``/proc`` and
  ``/dev``, a new PID namespace (the pilot and the services are not there to
  read), the pilot's work dir, the token's directory and every
  ``GLIDEIN_Job_Hidden`` path (the factory's state dir, the home directory,
  ``glidewms up``'s whole installation) covered by an empty tmpfs, and only
  the job's own sandbox bound back, read-write, at its own path. Run as
  root, capabilities are dropped too, but root still owns what it can see:
  as root, ``account`` is the one to use.
- ``none`` (or the key absent): jobs run as the pilot's account, as on a
  site's worker node. The pilot says so at start.

The pilot checks its isolation before it registers (``check``); a mode it
cannot have is a validation failure, never a silent fallback.
Standard library only, like the rest of the agent.
"""

from __future__ import annotations

import errno
import logging
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

log = logging.getLogger(__name__)

MODES = ("none", "account", "sandbox")
DEFAULT_ACCOUNT = "nobody"
PROBE_TIMEOUT = 30.0


@dataclass(frozen=True)
class Isolation:
    """How this pilot's jobs are kept from it (see the module doc)."""

    mode: str = "none"
    account: str = DEFAULT_ACCOUNT
    uid: Optional[int] = None
    gid: Optional[int] = None
    bwrap: str = ""
    setpriv: str = ""  # account mode: the uid switch in front of the job, if found
    hidden: Tuple[str, ...] = field(default_factory=tuple)
    shared: Tuple[str, ...] = field(default_factory=tuple)  # bound back read-only

    @classmethod
    def from_values(cls, values: Dict[str, str], work_dir: str, token_file: str) -> Isolation:
        """From glidein_config as the bootstrap wrote it; ValueError names a bad key."""
        mode = (values.get("GLIDEIN_Job_Isolation") or "none").strip().lower()
        if mode not in MODES:
            raise ValueError(f"GLIDEIN_Job_Isolation: expected one of {MODES}, got {mode!r}")
        if mode == "account":
            account = values.get("GLIDEIN_Job_Account") or DEFAULT_ACCOUNT
            try:
                entry = pwd.getpwnam(account)
            except KeyError:
                raise ValueError(f"GLIDEIN_Job_Account: no account {account!r} here") from None
            setpriv = shutil.which("setpriv") or ""
            return cls(mode, account, entry.pw_uid, entry.pw_gid, setpriv=setpriv)
        if mode == "sandbox":
            hidden = [p.strip() for p in (values.get("GLIDEIN_Job_Hidden") or "").split(",")]
            for path in hidden:
                if path and not path.startswith("/"):
                    raise ValueError(f"GLIDEIN_Job_Hidden: {path!r} is not an absolute path")
            # the pilot's own files: its work dir (jobs get their sandbox back) and the
            # directory of its token (other groups' tokens live there too)
            hidden += [work_dir, os.path.dirname(os.path.abspath(token_file))]
            bwrap = values.get("GLIDEIN_Job_Bwrap") or shutil.which("bwrap") or ""
            # the CVMFS repositories the pilot mounts itself live in its work dir
            shared = (os.path.join(os.path.realpath(work_dir), "cvmfs"),)
            return cls(mode, bwrap=bwrap, hidden=_covering(hidden), shared=shared)
        return cls()

    @property
    def owner(self) -> Optional[Tuple[int, int]]:
        """(uid, gid) the job's files are given to, in account mode."""
        if self.mode == "account" and self.uid is not None and self.gid is not None:
            return self.uid, self.gid
        return None

    def describe(self) -> str:
        """The log line at pilot start: what a job can and cannot reach."""
        if self.mode == "account":
            return (
                f"jobs run as account {self.account} (uid {self.uid}): the pilot's token, "
                "its process and the services' private files are out of their reach"
            )
        if self.mode == "sandbox":
            return (
                f"jobs run in a bubblewrap sandbox ({self.bwrap}): own pid namespace, "
                f"host read-only, hidden: {', '.join(self.hidden)}"
            )
        return (
            "jobs are NOT isolated from this pilot: they run as its account and can read "
            "whatever it can (its token file included)"
        )

    def check(self, work_dir: str) -> Optional[str]:
        """Why this pilot cannot isolate its jobs as asked, or None. Run once, before
        registering (account mode: also makes the work dir traversable, 0711)."""
        if self.mode == "account":
            return self._check_account(work_dir)
        if self.mode == "sandbox":
            return self._check_sandbox(work_dir)
        return None

    def _check_account(self, work_dir: str) -> Optional[str]:
        if os.geteuid() != 0:
            return f"account isolation needs a pilot running as root (euid {os.geteuid()})"
        if not self.uid:
            return f"the job account {self.account!r} must not be root"
        os.chmod(work_dir, 0o711)  # jobs pass through to their sandbox, list nothing
        return None

    def reaches(self, path: str) -> bool:
        """Whether the job account may pass through every directory down to ``path``."""
        path = os.path.abspath(path)
        while True:
            if not _traversable(os.stat(path), self.uid, self.gid):
                return False
            if path == "/":
                return True
            path = os.path.dirname(path)

    def job_root(self, work_dir: str) -> str:
        """Where the jobs' sandboxes go (``<root>/execute/<job>``): the work dir,
        unless the job account cannot reach it (a work dir under a private
        directory): then a directory of its own (0711) under the first of $TMPDIR,
        /tmp, /var/tmp that it can reach, which the pilot removes at its end.
        OSError if there is none."""
        if self.owner is None or self.reaches(work_dir):
            return work_dir
        for base in (os.environ.get("TMPDIR"), "/tmp", "/var/tmp"):
            if base and os.path.isdir(base) and self.reaches(base):
                root = tempfile.mkdtemp(prefix="glidein_jobs_", dir=base)
                os.chmod(root, 0o711)
                log.info("the job account cannot reach %s: job sandboxes go to %s", work_dir, root)
                return root
        raise OSError(f"the job account {self.account} can reach neither {work_dir} nor /tmp")

    def _check_sandbox(self, work_dir: str) -> Optional[str]:
        if not self.bwrap:
            return "sandbox isolation needs bubblewrap (bwrap), not found on PATH"
        probe = self.wrap(["/bin/sh", "-c", "exit 0"], work_dir)
        try:
            done = subprocess.run(
                probe,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=PROBE_TIMEOUT,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"bubblewrap does not run here: {exc}"
        if done.returncode != 0:
            why = done.stderr.decode(errors="replace").strip()[-300:]
            return f"bubblewrap does not run here (exit {done.returncode}): {why}"
        return None

    def popen_options(self) -> Dict[str, Any]:
        """Extra ``subprocess.Popen`` options for a job: its account, no extra groups,
        when there is no setpriv to switch (``as_account``)."""
        if self.owner is None or self.setpriv:
            return {}
        uid, gid = self.owner
        return {"user": uid, "group": gid, "extra_groups": []}

    def prepare(self, sandbox: str) -> None:
        """Give the job its sandbox (account mode: chowned to it, 0700; its parent
        traversable). Called once its inputs are in, before it starts."""
        if self.owner is None:
            return
        uid, gid = self.owner
        os.chmod(os.path.dirname(sandbox), 0o711)
        os.chown(sandbox, uid, gid)
        os.chmod(sandbox, 0o700)
        # inputs: files and directories (transfer_input_files dirs) the pilot just wrote
        for here, dirs, files in os.walk(sandbox, followlinks=False):
            for name in dirs + files:
                os.chown(os.path.join(here, name), uid, gid, follow_symlinks=False)

    def as_account(self, argv: List[str]) -> List[str]:
        """The command line run as the job account (account mode, with setpriv): real,
        effective and saved ids all the account's, no supplementary group, so no
        capability is left and nothing switches back."""
        if self.owner is None or not self.setpriv:
            return list(argv)
        uid, gid = self.owner
        switch = [self.setpriv, f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--"]
        return [*switch, *argv]

    def wrap(self, argv: List[str], sandbox: str, devices: Sequence[str] = ()) -> List[str]:
        """The job's command line (sandbox mode: under bubblewrap; otherwise as it is).

        bubblewrap's ``/dev`` is a fresh one: ``devices`` (the claim's GPU device
        files, claims.py) are bound in it as ``/dev/<name>``, or the job would
        see no GPU at all."""
        if self.mode != "sandbox":
            return list(argv)
        cmd = [self.bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
        for device in devices:
            cmd += ["--dev-bind-try", device, "/dev/" + os.path.basename(device)]
        cmd += ["--tmpfs", "/tmp"]  # the host's /tmp (other pilots' work dirs) is not there
        for path in self.hidden:
            if path.startswith("/tmp/"):
                continue
            if os.path.isdir(path):
                cmd += ["--tmpfs", path]
            elif os.path.exists(path):
                cmd += ["--ro-bind", "/dev/null", path]
        for path in self.shared:
            cmd += ["--ro-bind-try", path, path]
        cmd += ["--bind", sandbox, sandbox, "--chdir", sandbox]
        cmd += ["--unshare-pid", "--unshare-ipc", "--unshare-uts", "--share-net"]
        cmd += ["--die-with-parent"]
        if os.geteuid() == 0:
            cmd += ["--cap-drop", "ALL"]
        return [*cmd, "--", *argv]

    @property
    def supervised(self) -> bool:
        """The job's process is bubblewrap's, not the job's (see ``JobProcess.kill``)."""
        return self.mode == "sandbox"


def open_output(sandbox: str, name: str) -> int:
    """A read descriptor of output ``name``, opened without following any symlink.

    ``_regular_file_inside`` checked the path; a process the job left behind may
    swap a file or a directory for a symlink after that (to the pilot's token,
    or, for a pilot running jobs as another account, any root file). So every
    component is opened relative to the previous one with ``O_NOFOLLOW`` and the
    file must still be a regular one; the pilot then reads that descriptor
    (``/proc/self/fd/N``), never the path again. OSError otherwise.
    """
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
    parts = name.split("/")
    fd = os.open(sandbox, flags | os.O_DIRECTORY)
    try:
        for part in parts[:-1]:
            if part in ("", ".", ".."):
                raise OSError(errno.EINVAL, f"unsafe output path {name!r}")
            inner = os.open(part, flags | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = inner
        out = os.open(parts[-1], flags | os.O_NONBLOCK, dir_fd=fd)
    finally:
        os.close(fd)
    if not stat.S_ISREG(os.fstat(out).st_mode):
        os.close(out)
        raise OSError(errno.EINVAL, f"output {name!r} is not a regular file")
    return out


def _traversable(info: os.stat_result, uid: Optional[int], gid: Optional[int]) -> bool:
    """Whether an account (uid, primary gid only: jobs get no extra groups) may pass."""
    mode = info.st_mode
    if info.st_uid == uid:
        return bool(mode & stat.S_IXUSR)
    if info.st_gid == gid:
        return bool(mode & stat.S_IXGRP)
    return bool(mode & stat.S_IXOTH)


def _covering(paths: List[str]) -> Tuple[str, ...]:
    """Absolute real paths, without duplicates or paths under another one, shortest
    first (a tmpfs over a directory hides what is under it); never ``/``."""
    real = sorted({os.path.realpath(p) for p in paths if p}, key=lambda p: (p.count("/"), p))
    kept: List[str] = []
    for path in real:
        if path != "/" and not any(path.startswith(k.rstrip("/") + "/") for k in kept):
            kept.append(path)
    return tuple(kept)
