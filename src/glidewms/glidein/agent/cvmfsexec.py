"""cvmfsexec mode: run the whole pilot in a user + mount namespace with /cvmfs in it.

``python3 -m agent.cvmfsexec --config glidein_config [--uid U --gid G] -- CMD...``
is started by the bootstrap under ``unshare --user --map-root-user --mount
--propagation private`` when ``GLIDEIN_CVMFS_Mount`` is ``namespace``: the way
cvmfsexec serves nodes that have neither /cvmfs nor a setuid fusermount, but
let unprivileged users create user namespaces. In that namespace this process
is root (only there), so it can:

1. give the namespace a ``/cvmfs`` directory: a tmpfs over the node's one, or,
   when the node has none (a directory cannot be added to the node's ``/``), a
   new root: a tmpfs holding a recursive bind of every top-level directory of
   the node's root plus an empty ``cvmfs/``, switched to with ``pivot_root``
   (not ``chroot``: a chrooted process may not create the user namespace of
   step 3, and bubblewrap needs one for the jobs' containers);
2. mount each repository of ``GLIDEIN_CVMFS_Repos`` at ``/cvmfs/<repo>`` with
   the squashfuse stand-in for the cvmfs2 client (see cvmfs.py);
3. run CMD (the agent) as the pilot's own uid again (a nested user namespace
   mapping it back, ``--uid``/``--gid``), so that jobs do not run as a root
   they are not; signals are passed on to it;
4. unmount the repositories when it ends.

Steps 1-4 run in the init process of a new pid namespace that dies with this
process (pidns.py): a helper killed with SIGKILL, which runs no cleanup,
still takes squashfuse, the agent and its jobs with it, and the mount
namespace with the last of them. The init process mounts its own /proc.

Whatever goes wrong is written to glidein_config (``GLIDEIN_CVMFS_Namespace``
``yes``/``failed``, ``GLIDEIN_CVMFS_Namespace_Problem``) and CMD runs anyway:
the cvmfs validation script then fails the pilot as WN_Resource, with a report
and a trail, instead of the pilot dying silently here.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from typing import List, Optional, Tuple

from . import cvmfs, pidns
from .config import config_line, control_character, parse_lines

COMMAND_TIMEOUT = 60.0


class NamespaceError(Exception):
    """The namespace could not be given its /cvmfs: the message says what failed."""


def _run(*argv: str) -> None:
    try:
        out = subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NamespaceError(f"{' '.join(argv[:3])}: {exc}") from None
    if out.returncode != 0:
        raise NamespaceError(
            f"{' '.join(argv)} exited {out.returncode}: {out.stderr.strip()[-300:]}"
        )


def root_entries(root: str = "/") -> List[Tuple[str, str]]:
    """(name, kind) of each top-level entry to carry into a new root: ``dir``
    (bound recursively), ``link`` (copied as a symlink); other kinds are left out."""
    entries = []
    for name in sorted(os.listdir(root)):
        path = os.path.join(root, name)
        if os.path.islink(path):
            entries.append((name, "link"))
        elif os.path.isdir(path):
            entries.append((name, "dir"))
    return entries


def new_root_with_cvmfs(work: str) -> None:
    """Switch this mount namespace to a copy of the node's root that has /cvmfs."""
    new = os.path.join(work, ".nsroot")
    os.makedirs(new, exist_ok=True)
    _run("mount", "-t", "tmpfs", "-o", "mode=755", "glidein-nsroot", new)
    for name, kind in root_entries():
        target = os.path.join(new, name)
        if kind == "link":
            os.symlink(os.readlink(os.path.join("/", name)), target)
        else:
            os.mkdir(target)
            _run("mount", "--rbind", os.path.join("/", name), target)
    os.mkdir(os.path.join(new, "cvmfs"))
    os.mkdir(os.path.join(new, ".oldroot"))
    cwd = os.getcwd()
    os.chdir(new)
    _run("pivot_root", ".", ".oldroot")  # moves every process of this namespace: us too
    _run("umount", "-l", "/.oldroot")
    os.rmdir("/.oldroot")
    os.chdir(cwd)


def provide(values: dict, work: str) -> List[str]:
    """Give this namespace /cvmfs/<repo> for every required repository; the mounts."""
    try:
        repos = cvmfs.parse_repos(
            values.get("GLIDEIN_CVMFS_Repos") or values.get("GLIDEIN_CVMFS_REPOS", "")
        )
    except ValueError as exc:
        raise NamespaceError(str(exc)) from None
    images = values.get("GLIDEIN_CVMFS_Images", "")
    if repos and not images:
        raise NamespaceError("no GLIDEIN_CVMFS_Images to mount the repositories from")
    problem = cvmfs.fuse_problem(euid=0)
    if repos and problem:
        raise NamespaceError(f"cannot mount: {problem}")
    if os.path.isdir(cvmfs.NATIVE_ROOT):
        _run("mount", "-t", "tmpfs", "-o", "mode=755", "glidein-cvmfs", cvmfs.NATIVE_ROOT)
    else:
        new_root_with_cvmfs(work)
    mounted: List[str] = []
    try:
        for repo in repos:
            image = cvmfs.fetch_image(images, repo, os.path.join(work, ".cvmfs_images"))
            point = os.path.join(cvmfs.NATIVE_ROOT, repo)
            cvmfs.mount(image, point)
            mounted.append(point)
    except (cvmfs.CvmfsError, OSError) as exc:
        for point in mounted:
            cvmfs.unmount(point)
        raise NamespaceError(str(exc)) from None
    return mounted


def as_user(cmd: List[str], uid: Optional[int], gid: Optional[int]) -> List[str]:
    """CMD run as the pilot's own uid/gid again (a nested user namespace), unless root."""
    if not uid:
        return list(cmd)
    return [
        "unshare",
        "--user",
        f"--map-user={uid}",
        f"--map-group={gid if gid else uid}",
        "--",
        *cmd,
    ]


def note(config: str, lines: List[Tuple[str, str]]) -> None:
    """Append what happened (a tool's messages among them: blanks and control
    characters become single spaces, so each stays one glidein_config line)."""
    with open(config, "a", encoding="utf-8") as handle:
        for key, value in lines:
            text = "".join(" " if control_character(ch) else ch for ch in value)
            handle.write(config_line(key, " ".join(text.split())))


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="agent.cvmfsexec")
    parser.add_argument("--config", required=True)
    parser.add_argument("--uid", type=int)
    parser.add_argument("--gid", type=int)
    parser.add_argument("cmd", nargs="+")
    options = parser.parse_args(argv)
    with open(options.config, encoding="utf-8", newline="") as handle:
        values = parse_lines(handle.read())
    work = values.get("GLIDEIN_Work_Dir") or os.path.dirname(os.path.abspath(options.config))
    # Mount and run inside a pid namespace that dies with this process (pidns.py),
    # so that a SIGKILL here leaves no squashfuse and no orphaned agent behind.
    return pidns.run_as_init(lambda: serve(options, values, work))


def serve(options: argparse.Namespace, values: dict, work: str) -> int:
    """Mount the repositories, run the command, unmount: the pid namespace's init."""
    mounted: List[str] = []
    try:
        mounted = provide(values, work)
    except (NamespaceError, OSError) as exc:
        note(
            options.config,
            [("GLIDEIN_CVMFS_Namespace", "failed"), ("GLIDEIN_CVMFS_Namespace_Problem", str(exc))],
        )
        cmd = list(options.cmd)
    else:
        note(options.config, [("GLIDEIN_CVMFS_Namespace", "yes")])
        cmd = as_user(options.cmd, options.uid, options.gid)
    if os.getpid() == 1:
        problem = pidns.mount_proc()
        if problem:
            print(f"cvmfsexec: no /proc of the pilot's own: {problem}", file=sys.stderr)
    child = pidns.spawn(cmd)
    pidns.forward_signals(child)
    code = pidns.reap_until(child)
    for point in reversed(mounted):
        problem = cvmfs.unmount(point)
        if problem:
            print(f"cvmfsexec: could not unmount {point}: {problem}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
