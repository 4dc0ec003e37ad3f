"""Validation: find a container runtime that works and advertise it.

``GLIDEIN_Container_Runtimes``: ``auto`` (default: apptainer, singularity,
then bubblewrap) or a comma list of them, in order. Each candidate gets a test run of ``/bin/sh -c
'echo ok'`` in ``GLIDEIN_Container_Default_Image`` (default ``host``) with the
very command line jobs get (``agent/container.py``); the first that works is
published: ``GLIDEIN_Container_Runtime``/``_Path`` for the agent and the slot
attributes ``GLIDEIN_Container_Runtime`` and those of
``agent/container.capabilities``: which image kinds jobs may bring
(``HasContainer``, ``HasSIF``, ``HasSandboxImage``, ``HasDockerURL``,
``HasSingularity`` and GlideinWMS's ``HAS_CONTAINER``/``HAS_SINGULARITY``).
An entry may narrow them (its ``HasSIF = false`` stays false, so frontends
and pools agree the entry takes no SIF jobs), never widen them: a pilot must
not match jobs its runtime cannot run. No working runtime is a WN_Resource
failure only when ``GLIDEIN_Container_Use`` is ``REQUIRED``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(1, os.path.dirname(HERE))  # the work dir holds the agent package

from agent import container  # noqa: E402
from gconfig import Failure, Script, main  # noqa: E402


def test_run(setup: container.ContainerSetup, work: str) -> str:
    """'' if the runtime runs a shell in the default image, else why not."""
    sandbox = tempfile.mkdtemp(prefix="container_test_", dir=work)
    try:
        argv, env = container.wrap(
            setup,
            setup.default_image,
            sandbox,
            ["/bin/sh", "-c", "echo ok > probe; echo ok"],
            {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": sandbox},
        )
        out = subprocess.run(
            argv, env=env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
        )
        if out.returncode != 0 or out.stdout.strip() != "ok":
            return f"exit {out.returncode}: {out.stderr.strip()[-300:]}"
        if not os.path.exists(os.path.join(sandbox, "probe")):
            return "the sandbox is not writable from inside"
        return ""
    except (OSError, subprocess.TimeoutExpired, container.ContainerError) as exc:
        return str(exc)
    finally:
        shutil.rmtree(sandbox, ignore_errors=True)


def publish(script: Script, runtime: str, jobs_may_ask: bool = True) -> None:
    """The runtime and what it runs, as slot attributes (an entry's false stays).
    ``jobs_may_ask`` false (``GLIDEIN_Container_Use`` NEVER): the runtime is
    there, but jobs asking for a container are refused, so none may match."""
    script.add("GLIDEIN_Container_Runtime", runtime, slot=True)
    offered = container.capabilities(runtime if jobs_may_ask else "none")
    for name, value in offered.items():
        narrowed = script.get(name).strip().lower() == "false"
        script.add(name, bool(value) and not narrowed, slot=True)


def check(script: Script) -> str:
    work = script.get("GLIDEIN_Work_Dir", os.path.dirname(os.path.abspath(script.config_path)))
    try:
        base = container.ContainerSetup.from_values(script.values)
        candidates = container.find_runtime(script.get("GLIDEIN_Container_Runtimes", "auto"))
    except ValueError as exc:
        raise Failure("Config", str(exc)) from None
    problems = []
    for runtime, path in candidates:
        setup = container.ContainerSetup(
            runtime, path, base.default_image, base.use, base.binds, base.gpu_devices
        )
        problem = test_run(setup, work)
        if not problem:
            script.add("GLIDEIN_Container_Path", path)
            publish(script, runtime, base.use != "NEVER")
            return f"{runtime} ({path}) runs image {base.default_image}"
        problems.append(f"{runtime}: {problem}")
    publish(script, "none")
    detail = "; ".join(problems) or "no apptainer, singularity or bwrap on PATH"
    if base.use == "REQUIRED":
        raise Failure("WN_Resource", f"no working container runtime: {detail}")
    return f"no container runtime: {detail}"


if __name__ == "__main__":
    main(check)
