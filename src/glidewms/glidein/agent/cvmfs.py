"""CVMFS repositories for jobs: the node's /cvmfs, or our own FUSE mounts of them.

A job that needs ``/cvmfs/<repo>`` should not land on a node without it. When
the node has no /cvmfs, the pilot can often mount the repositories itself, as
cvmfsexec does (its ``mountrepo`` mode): FUSE in user space, no root needed
beyond the setuid ``fusermount`` every FUSE installation ships. Here the FUSE
file system is ``squashfuse`` serving one squashfs image per repository (a
faithful stand-in for the cvmfs2 client: a read-only FUSE tree that appears at
a mount point), fetched from ``GLIDEIN_CVMFS_Images`` (a directory or an
http(s) URL holding ``<repo>.sqfs``; downloads honour ``http_proxy``).

Mounts live under ``<work dir>/cvmfs/<repo>``: jobs without a container find
them through ``CVMFS_MOUNT_DIR``; containers get each one bound as
``/cvmfs/<repo>``. They are unmounted when the pilot ends (by the agent, and
by the bootstrap's cleanup as a safety net for an agent that died).

Pure helpers (names, the plan, the mount table) are separate from the few
functions that run commands, so the decisions are table-tested.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import urllib.request
from typing import Callable, Dict, List, Optional, Tuple

NATIVE_ROOT = "/cvmfs"
MODES = ("auto", "native", "mount", "never", "namespace")
_REPO = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
COMMAND_TIMEOUT = 60.0


class CvmfsError(Exception):
    """A repository cannot be provided: the message says which and why."""


def parse_repos(text: str) -> List[str]:
    """``GLIDEIN_CVMFS_Repos``: comma or space separated repository names."""
    repos = []
    for name in re.split(r"[,\s]+", text or ""):
        if not name:
            continue
        if not _REPO.fullmatch(name) or ".." in name:
            raise ValueError(
                f"GLIDEIN_CVMFS_Repos: {name!r} is not a repository name (such as cms.cern.ch)"
            )
        if name not in repos:
            repos.append(name)
    return repos


def attribute_name(repo: str) -> str:
    """The slot attribute saying a repository is there: ``HAS_CVMFS_cms_cern_ch``."""
    return "HAS_CVMFS_" + re.sub(r"[^A-Za-z0-9_]", "_", repo)


def plan(
    repos: List[str], mode: str, native: Dict[str, bool], images: bool, fuse_problem: str
) -> Tuple[Dict[str, str], str]:
    """How each repository will be provided: ``{repo: "native"|"mount"}``, or why not.

    ``native`` says which repositories the node's /cvmfs serves; ``images`` whether
    a place to get repository images from is configured; ``fuse_problem`` is ''
    when this node lets the pilot mount FUSE file systems. ``auto`` prefers the
    node's /cvmfs and mounts what it lacks; ``native`` never mounts; ``mount``
    always mounts (a site whose /cvmfs is known to be stale); ``never`` skips the
    check (nothing is provided or published).
    """
    if mode not in MODES:
        return {}, f"GLIDEIN_CVMFS_Mount: expected one of {', '.join(MODES)}, got {mode!r}"
    if mode == "never":
        return {}, ""
    if mode == "namespace":  # cvmfsexec.py mounted them at /cvmfs before the agent started
        return {}, namespace_problem(repos, native)
    how: Dict[str, str] = {}
    missing = []
    for repo in repos:
        if mode != "mount" and native.get(repo):
            how[repo] = "native"
        elif mode == "native":
            missing.append(repo)
        else:
            how[repo] = "mount"
    if missing:
        return how, f"not on this node's {NATIVE_ROOT}: {', '.join(missing)}"
    to_mount = [r for r, way in how.items() if way == "mount"]
    if to_mount and not images:
        return how, (
            f"{', '.join(to_mount)} not on this node's {NATIVE_ROOT} and no "
            "GLIDEIN_CVMFS_Images to mount them from"
        )
    if to_mount and fuse_problem:
        return how, f"{', '.join(to_mount)} not on this node and cannot mount: {fuse_problem}"
    return how, ""


def namespace_problem(repos: List[str], native: Dict[str, bool]) -> str:
    """'' when the pilot's namespace (cvmfsexec mode) serves every repository."""
    missing = [r for r in repos if not native.get(r)]
    return f"not in the pilot's namespace /cvmfs: {', '.join(missing)}" if missing else ""


def native_repos(repos: List[str], root: str = NATIVE_ROOT) -> Dict[str, bool]:
    """Which repositories the node serves (listing a directory triggers autofs)."""
    found = {}
    for repo in repos:
        try:
            found[repo] = bool(os.listdir(os.path.join(root, repo)))
        except OSError:
            found[repo] = False
    return found


def fuse_problem(
    which: Callable[[str], Optional[str]] = shutil.which,
    device: str = "/dev/fuse",
    euid: Optional[int] = None,
) -> str:
    """'' if this process can mount squashfs images with FUSE, else what is missing."""
    if not which("squashfuse"):
        return "no squashfuse on PATH"
    if not os.path.exists(device):
        return f"no {device}"
    if not os.access(device, os.R_OK | os.W_OK):
        return f"{device} is not readable and writable by this user"
    if (os.geteuid() if euid is None else euid) != 0 and not (
        which("fusermount3") or which("fusermount")
    ):
        return "no fusermount3/fusermount for an unprivileged mount"
    return ""


def user_namespaces(path: str = "/proc/sys/user/max_user_namespaces") -> bool:
    """Whether unprivileged user namespaces are enabled (published for containers)."""
    try:
        with open(path, encoding="ascii") as handle:
            return int(handle.read().strip() or 0) > 0
    except (OSError, ValueError):
        return False


def fetch_image(source: str, repo: str, dest_dir: str) -> str:
    """The local path of ``<repo>.sqfs`` from a directory or an http(s) URL."""
    name = f"{repo}.sqfs"
    if not source.startswith(("http://", "https://")):
        path = os.path.join(source, name)
        if not os.path.isfile(path):
            raise CvmfsError(f"{repo}: no image {path}")
        return path
    os.makedirs(dest_dir, exist_ok=True)
    dest = os.path.join(dest_dir, name)
    url = source.rstrip("/") + "/" + name
    # an opener of our own, made now: it reads http_proxy/https_proxy/no_proxy as
    # they are now (urllib's shared default opener keeps those of its first use)
    opener = urllib.request.build_opener()
    try:
        with (
            opener.open(url, timeout=COMMAND_TIMEOUT) as response,
            open(dest, "wb") as out,
        ):
            shutil.copyfileobj(response, out, 1 << 20)
    except OSError as exc:
        raise CvmfsError(f"{repo}: cannot download {url}: {exc}") from None
    return dest


def mount(image: str, mountpoint: str) -> None:
    """Mount one image read-only at ``mountpoint`` and check that it lists.

    A root pilot runs its jobs as another account (agent/isolation.py): FUSE lets
    only the mounting user in unless ``allow_other`` (which root may always give).
    """
    os.makedirs(mountpoint, exist_ok=True)
    options = ["-o", "allow_other"] if os.geteuid() == 0 else []
    try:
        out = subprocess.run(
            ["squashfuse", *options, image, mountpoint],
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CvmfsError(f"squashfuse {image}: {exc}") from None
    if out.returncode != 0:
        raise CvmfsError(f"squashfuse {image} exited {out.returncode}: {out.stderr.strip()[-300:]}")
    if not os.path.ismount(mountpoint):
        raise CvmfsError(f"{mountpoint} is not a mount point after squashfuse")


def unmount(mountpoint: str) -> str:
    """Unmount one FUSE mount; '' on success, else the last error."""
    problem = "no unmount command"
    for cmd in (["fusermount3", "-u"], ["fusermount", "-u"], ["umount"], ["umount", "-l"]):
        if not shutil.which(cmd[0]):
            continue
        try:
            out = subprocess.run(
                [*cmd, mountpoint],
                capture_output=True,
                text=True,
                timeout=COMMAND_TIMEOUT,
                stdin=subprocess.DEVNULL,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            problem = str(exc)
            continue
        if out.returncode == 0 or not os.path.ismount(mountpoint):
            return ""
        problem = out.stderr.strip()[-200:]
    return problem


def _unescape(field: str) -> str:
    """Mount table fields escape space, tab, newline and backslash as octal."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mounts_under(root: str, table: str) -> List[str]:
    """Mount points strictly under ``root`` in a /proc/self/mounts text, deepest first."""
    root = root.rstrip("/") + "/"
    points = []
    for line in table.splitlines():
        fields = line.split()
        if len(fields) > 1:
            point = _unescape(fields[1])
            if point.startswith(root):
                points.append(point)
    return sorted(points, key=lambda p: p.count("/"), reverse=True)


def unmount_all(root: str, table_path: str = "/proc/self/mounts") -> List[str]:
    """Unmount every mount under ``root``; return the problems (empty if all went)."""
    try:
        with open(table_path, encoding="utf-8", errors="replace") as handle:
            table = handle.read()
    except OSError:
        return []
    problems = []
    for point in mounts_under(root, table):
        problem = unmount(point)
        if problem:
            problems.append(f"{point}: {problem}")
    return problems
