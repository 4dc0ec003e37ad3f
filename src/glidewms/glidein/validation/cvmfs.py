"""Validation: the CVMFS repositories the entry or group requires (see agent/cvmfs.py).

``GLIDEIN_CVMFS_Repos`` (or ``GLIDEIN_CVMFS_REPOS``): the required repositories;
none means nothing to check. ``GLIDEIN_CVMFS_Mount``: ``auto`` (default),
``native``, ``mount``, ``never`` or ``namespace`` (the bootstrap started the
pilot in a user + mount namespace whose /cvmfs has them: agent/cvmfsexec.py;
what went wrong there is in ``GLIDEIN_CVMFS_Namespace_Problem``).
``GLIDEIN_CVMFS_Images``: where to get ``<repo>.sqfs`` when the pilot mounts a
repository itself.

A repository that can be neither found nor mounted is a WN_Resource failure.
Publishes ``HAS_CVMFS`` and ``HAS_CVMFS_<repo>`` (slot), ``GLIDEIN_CVMFS_Source``
(slot: native, mount or mixed), ``CVMFS_MOUNT_DIR`` (job environment, when the
pilot mounted), ``GLIDEIN_CVMFS_Mounts`` (what to unmount) and, for containers,
one ``/cvmfs/<repo>`` bind per mounted repository in ``GLIDEIN_Container_Binds``.
It runs before the container check, whose test run then sees those binds.
"""

from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(1, os.path.dirname(HERE))  # the work dir holds the agent package

from agent import cvmfs  # noqa: E402
from gconfig import Failure, Script, main  # noqa: E402


def check(script: Script) -> str:
    try:
        repos = cvmfs.parse_repos(
            script.get("GLIDEIN_CVMFS_Repos") or script.get("GLIDEIN_CVMFS_REPOS")
        )
    except ValueError as exc:
        raise Failure("Config", str(exc)) from None
    mode = script.get("GLIDEIN_CVMFS_Mount", "auto").lower()
    images = script.get("GLIDEIN_CVMFS_Images")
    script.add("GLIDEIN_Userns", cvmfs.user_namespaces(), slot=True)
    if not repos:
        if mode not in cvmfs.MODES:
            raise Failure(
                "Config",
                f"GLIDEIN_CVMFS_Mount: expected one of {', '.join(cvmfs.MODES)}, got {mode!r}",
            )
        script.add("HAS_CVMFS", os.path.isdir(cvmfs.NATIVE_ROOT), slot=True)
        return "no CVMFS repository required"
    if mode == "namespace":
        return in_namespace(script, repos)
    how, problem = cvmfs.plan(
        repos, mode, cvmfs.native_repos(repos), bool(images), cvmfs.fuse_problem()
    )
    if problem:
        category = "Config" if problem.startswith("GLIDEIN_CVMFS_Mount") else "WN_Resource"
        raise Failure(category, problem)
    if not how:  # mode never
        return "CVMFS check disabled (GLIDEIN_CVMFS_Mount never)"
    work = script.get("GLIDEIN_Work_Dir", os.path.dirname(os.path.abspath(script.config_path)))
    # jobs running as another account get their sandboxes (and these mounts) where that
    # account can reach them, when it cannot reach the work dir (agent/isolation.py)
    root = os.path.join(script.get("GLIDEIN_Job_Root") or work, "cvmfs")
    mounted: list[str] = []
    try:
        for repo, way in how.items():
            if way != "mount":
                continue
            image = cvmfs.fetch_image(images, repo, os.path.join(work, ".cvmfs_images"))
            point = os.path.join(root, repo)
            cvmfs.mount(image, point)
            mounted.append(point)
            if not os.listdir(point):
                raise cvmfs.CvmfsError(f"{repo}: the mounted image is empty")
    except (cvmfs.CvmfsError, OSError) as exc:
        for point in mounted:
            cvmfs.unmount(point)
        raise Failure("WN_Resource", str(exc)) from None
    for repo in how:
        script.add(cvmfs.attribute_name(repo), True, slot=True)
    script.add("HAS_CVMFS", True, slot=True)
    ways = set(how.values())
    script.add("GLIDEIN_CVMFS_Source", ways.pop() if len(ways) == 1 else "mixed", slot=True)
    if mounted:
        script.add("GLIDEIN_CVMFS_Mounts", ",".join(mounted))
        script.add("CVMFS_MOUNT_DIR", root, env=True)
        binds = [b for b in script.get("GLIDEIN_Container_Binds").split(",") if b.strip()]
        binds += [f"{p}:{cvmfs.NATIVE_ROOT}/{os.path.basename(p)}:ro" for p in mounted]
        script.add("GLIDEIN_Container_Binds", ",".join(binds))
    return ", ".join(f"{repo} ({way})" for repo, way in how.items())


def in_namespace(script: Script, repos: list[str]) -> str:
    """cvmfsexec mode: the namespace was made and serves every repository at /cvmfs."""
    if script.get("GLIDEIN_CVMFS_Namespace") != "yes":
        raise Failure(
            "WN_Resource",
            "cvmfsexec namespace: "
            + (
                script.get("GLIDEIN_CVMFS_Namespace_Problem")
                or "the bootstrap did not start the pilot in one"
            ),
        )
    _how, problem = cvmfs.plan(repos, "namespace", cvmfs.native_repos(repos), True, "")
    if problem:
        raise Failure("WN_Resource", problem)
    for repo in repos:
        script.add(cvmfs.attribute_name(repo), True, slot=True)
    script.add("HAS_CVMFS", True, slot=True)
    script.add("GLIDEIN_CVMFS_Source", "namespace", slot=True)
    script.add("CVMFS_MOUNT_DIR", cvmfs.NATIVE_ROOT, env=True)
    return ", ".join(f"{repo} (namespace)" for repo in repos)


if __name__ == "__main__":
    main(check)
