"""Run a job in its own container: runtime choice, image, binds, environment.

Pure functions that turn a job's command line into a container command line,
shared by the job wrapper (``claims``) and the container validation script
(which test-runs the same command line before the pilot advertises it).

Runtimes: Apptainer/Singularity when the node has them (``exec --contain
--cleanenv``, environment passed as ``APPTAINERENV_*``), else bubblewrap (the
unprivileged user-namespace runtime). Image kinds (``KINDS``, as condor_submit
names them): a directory (``sandbox``, a rootfs) for every runtime; a SIF file
(``sif``) and a ``docker://`` URL (``docker``, pulled on the node) for
Apptainer/Singularity only. The pilot publishes what its runtime runs
(``capabilities``: HTCondor's ``HasSIF``, ``HasSandboxImage``...), the pool
matches jobs to it by those, and a job whose image kind the runtime cannot run
is refused at setup with the reason. The special image ``host`` is the node's
own ``/usr`` and ``/etc`` mounted read-only, which isolates the job without
needing an image.

A job with no executable (``Cmd = ""``) runs its image's entry point: the
runscript, under Apptainer (``apptainer run``); bubblewrap knows no entry
point of a directory, so such a job is refused there.

Inside, the job's sandbox is ``/srv`` (as in HTCondor) and its working
directory; ``/cvmfs`` and the configured binds are mounted when they exist on
the node; GPU device files are passed through when the pilot has GPUs (of
the numbered ``/dev/nvidiaN``, only those of the job's claim, under
bubblewrap); the network is shared so jobs reach services (and the pool) over loopback.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
from dataclasses import dataclass, field, replace
from typing import Callable, Dict, List, Optional, Sequence, Tuple

RUNTIMES = ("apptainer", "singularity", "bwrap")
HOST_IMAGE = "host"
SANDBOX_INSIDE = "/srv"
USES = ("NEVER", "OPTIONAL", "REQUIRED")
DEFAULT_BINDS = ("/cvmfs",)
# where the GPU device files are looked for (glidein_config GLIDEIN_GPU_Device_Dir
# may say elsewhere: a node that keeps them apart, or a test's fake files); they
# are always mounted as /dev/<name> in the container
DEVICE_DIR = "/dev"
_NUMBERED = re.compile(r"^nvidia([0-9]+)$")


KINDS: Dict[str, Tuple[str, ...]] = {
    "apptainer": ("sandbox", "sif", "docker"),
    "singularity": ("sandbox", "sif", "docker"),
    "bwrap": ("sandbox",),
}
_KIND_TEXT = {"sandbox": "a directory image", "sif": "a SIF image", "docker": "a docker:// image"}


class ContainerError(Exception):
    """The job asks for a container this pilot cannot give it."""


def capabilities(runtime: str) -> Dict[str, object]:
    """The slot attributes that say which container jobs this pilot runs.

    HTCondor's names (``HasContainer``, ``HasSingularity``, ``HasSIF``,
    ``HasSandboxImage``, ``HasDockerURL``: the clauses condor_submit writes),
    GlideinWMS's (``HAS_CONTAINER``, ``HAS_SINGULARITY``), and ``HasDocker``
    always false: no docker universe runtime here. ``runtime`` ``none``: all false.
    """
    kinds = KINDS.get(runtime, ())
    apptainer = runtime in ("apptainer", "singularity")
    return {
        "HasContainer": bool(kinds),
        "HAS_CONTAINER": bool(kinds),
        "HasSingularity": apptainer,
        "HAS_SINGULARITY": apptainer,
        "HasSIF": "sif" in kinds,
        "HasSandboxImage": "sandbox" in kinds,
        "HasDockerURL": "docker" in kinds,
        "HasDocker": False,
    }


def image_kind(image: str) -> str:
    """condor_submit's kind of an image: ``docker`` (docker:), ``sif`` (.sif), else
    ``sandbox`` (a directory)."""
    image = image.strip()
    if image.startswith("docker:"):
        return "docker"
    if image.endswith(".sif"):
        return "sif"
    return "sandbox"


@dataclass(frozen=True)
class Bind:
    """One bind mount: ``SRC[:DST][:ro]`` (read-write unless ``:ro``)."""

    source: str
    target: str
    read_only: bool = False

    @classmethod
    def parse(cls, text: str) -> Bind:
        parts = text.strip().split(":")
        read_only = parts[-1] in ("ro", "rw") and len(parts) > 1 and parts.pop() == "ro"
        if not parts[0].startswith("/") or len(parts) > 2:
            raise ValueError(f"bind {text!r}: expected /SRC[:/DST][:ro]")
        target = parts[1] if len(parts) == 2 else parts[0]
        if not target.startswith("/"):
            raise ValueError(f"bind {text!r}: the target must be an absolute path")
        return cls(parts[0], target, read_only)


@dataclass(frozen=True)
class ContainerSetup:
    """What validation found and the entry/group configured (see glidein_config keys)."""

    runtime: str = "none"  # apptainer, singularity, bwrap or none
    path: str = ""
    default_image: str = HOST_IMAGE
    use: str = "OPTIONAL"
    binds: Tuple[Bind, ...] = ()
    gpu_devices: Tuple[str, ...] = field(default_factory=tuple)

    @classmethod
    def from_values(cls, values: Dict[str, str]) -> ContainerSetup:
        """Build from glidein_config values; ValueError names a bad key."""
        use = (values.get("GLIDEIN_Container_Use") or "OPTIONAL").upper()
        if use not in USES:
            raise ValueError(f"GLIDEIN_Container_Use: expected one of {USES}, got {use!r}")
        binds = []
        for text in (values.get("GLIDEIN_Container_Binds") or "").split(","):
            if text.strip():
                binds.append(Bind.parse(text))
        gpus = values.get("GPUs", "0")
        device_dir = values.get("GLIDEIN_GPU_Device_Dir") or DEVICE_DIR
        if not device_dir.startswith("/"):
            raise ValueError(
                f"GLIDEIN_GPU_Device_Dir: expected an absolute directory, got {device_dir!r}"
            )
        devices = (
            gpu_device_files(
                glob.glob(os.path.join(glob.escape(device_dir), "nvidia*")),
                values.get("CUDA_VISIBLE_DEVICES"),
            )
            if gpus.isdigit() and int(gpus)
            else ()
        )
        return cls(
            runtime=values.get("GLIDEIN_Container_Runtime") or "none",
            path=values.get("GLIDEIN_Container_Path") or "",
            default_image=values.get("GLIDEIN_Container_Default_Image") or HOST_IMAGE,
            use=use,
            binds=tuple(binds),
            gpu_devices=devices,
        )


def gpu_device_files(found: List[str], visible: Optional[str]) -> Tuple[str, ...]:
    """The /dev/nvidia* files a job container gets: the driver's shared ones
    (nvidiactl, nvidia-uvm...) and, of the numbered ones, only this pilot's GPUs
    when ``CUDA_VISIBLE_DEVICES`` names them by index (several pilots per node);
    by UUID, or unset, every GPU's (the index is not known)."""
    wanted = [d.strip() for d in (visible or "").split(",") if d.strip()]
    keep = []
    for path in sorted(found):
        match = _NUMBERED.match(os.path.basename(path))
        if (
            match
            and visible is not None
            and all(w.isdigit() for w in wanted)
            and match.group(1) not in wanted
        ):
            continue
        keep.append(path)
    return tuple(keep)


def claim_container(setup: ContainerSetup, devices: Sequence[str]) -> ContainerSetup:
    """The pilot's container setup for one claim: of the numbered GPU device
    files, only those of the claim's GPUs (``devices``, as its
    ``CUDA_VISIBLE_DEVICES`` names them); the driver's shared ones stay. A
    claim without GPUs gets none of the numbered ones."""
    if not setup.gpu_devices:
        return setup
    return replace(setup, gpu_devices=gpu_device_files(list(setup.gpu_devices), ",".join(devices)))


def find_runtime(
    preference: str, which: Callable[[str], Optional[str]] = shutil.which
) -> List[Tuple[str, str]]:
    """Candidate (runtime, path) pairs in order of preference.

    ``preference`` is ``GLIDEIN_Container_Runtimes``: ``auto`` (apptainer,
    singularity, then bwrap) or a comma list of those names, in order.
    """
    names = [n.strip() for n in preference.split(",") if n.strip() and n.strip() != "auto"]
    for name in names:
        if name not in RUNTIMES:
            raise ValueError(
                f"GLIDEIN_Container_Runtimes: expected auto or names among "
                f"{', '.join(RUNTIMES)}, got {preference!r}"
            )
    found = []
    for name in names or RUNTIMES:
        path = which(name)
        if path:
            found.append((name, path))
    return found


def choose_image(setup: ContainerSetup, job_container: object, sandbox: str = "") -> Optional[str]:
    """The image a job runs in, or None to run it without a container.

    The job asks with a claim field ``container: {"image": ..., "kind": ...,
    "in_sandbox": ...}`` (an empty image means the group's default; ``kind``
    as ``image_kind`` when absent; ``in_sandbox``: the image travelled with
    the job and is in ``sandbox`` under its base name); ``REQUIRED`` puts
    every job in the default image; ``NEVER`` refuses jobs that ask. An image
    kind this runtime cannot run is refused here, before anything is fetched.
    """
    asked = isinstance(job_container, dict)
    wish: Dict[str, object] = job_container if isinstance(job_container, dict) else {}
    image = str(wish.get("image") or "")
    if setup.use == "NEVER":
        if asked:
            raise ContainerError("the job asks for a container; containers are disabled here")
        return None
    if not asked and setup.use != "REQUIRED":
        return None
    if setup.runtime not in RUNTIMES or not setup.path:
        raise ContainerError("the job needs a container but this node has no working runtime")
    if not image or image == HOST_IMAGE:
        return image or setup.default_image
    kind = str(wish.get("kind") or image_kind(image))
    if kind not in KINDS[setup.runtime]:
        runs = " and ".join(_KIND_TEXT[k] + "s" for k in KINDS[setup.runtime])
        raise ContainerError(
            f"the job's image {image!r} is {_KIND_TEXT.get(kind, kind)}; this pilot's "
            f"runtime ({setup.runtime}) runs {runs} only"
        )
    if wish.get("in_sandbox"):
        name = os.path.basename(image.rstrip("/"))
        if name in ("", ".", "..") or "/" in image.rstrip("/"):
            raise ContainerError(f"image {image!r}: a transferred image is named by its base name")
        return os.path.join(sandbox, name)
    if kind == "docker" and not image.startswith("docker://"):  # docker_image = name:tag
        image = "docker://" + (image[len("docker:") :] if image.startswith("docker:") else image)
    return image


def check_image(
    setup: ContainerSetup, image: str, entry_point: bool = False, sandbox: str = ""
) -> None:
    """Once the sandbox is there: the image exists in the form the runtime needs
    (ContainerError names it), so a missing one is a setup error, not a crash.
    ``entry_point``: the job has no executable and runs the image's own.

    A directory image that holds the job's ``sandbox`` (``/``, or any parent
    of the pilot's work dir) is refused: it would show the job the pilot's
    own files, its token among them, which no isolation hides there."""
    if entry_point and setup.runtime not in ("apptainer", "singularity"):
        raise ContainerError(
            f"the job names no executable, so it would run the entry point of image "
            f"{image!r}; {setup.runtime} knows no entry point of an image: give the job "
            "an executable"
        )
    if image == HOST_IMAGE or image.startswith("docker://"):
        return
    if sandbox and os.path.isabs(image):
        real, inner = os.path.realpath(image), os.path.realpath(sandbox)
        if real != inner and os.path.commonpath([real, inner]) == real:
            raise ContainerError(
                f"image {image!r} holds the pilot's own directory: it cannot be a job's image"
            )
    if setup.runtime == "bwrap" and not os.path.isdir(image):
        raise ContainerError(
            f"image {image!r} is not a directory (bubblewrap runs rootfs directories)"
        )
    if not os.path.exists(image):
        raise ContainerError(f"image {image!r} does not exist on this node")


def _inside(path: str, sandbox: str) -> str:
    """A host path under the sandbox, as the job sees it inside the container."""
    sandbox = sandbox.rstrip("/")
    if path == sandbox:
        return SANDBOX_INSIDE
    if path.startswith(sandbox + "/"):
        return SANDBOX_INSIDE + path[len(sandbox) :]
    return path


def bwrap_argv(
    bwrap: str,
    image: str,
    sandbox: str,
    binds: Tuple[Bind, ...],
    devices: Tuple[str, ...],
    argv: List[str],
) -> List[str]:
    """A bubblewrap command line; the environment is the process's own (already clean)."""
    if image == HOST_IMAGE:
        cmd = [bwrap, "--ro-bind", "/usr", "/usr", "--ro-bind", "/etc", "/etc"]
        for name in ("bin", "lib", "lib64", "sbin"):
            cmd += ["--symlink", f"usr/{name}", f"/{name}"]
    else:
        if not os.path.isdir(image):
            raise ContainerError(
                f"image {image!r} is not a directory (bubblewrap runs rootfs directories)"
            )
        cmd = [bwrap, "--ro-bind", image, "/"]
    cmd += [
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--tmpfs",
        "/tmp",
        "--bind",
        sandbox,
        SANDBOX_INSIDE,
        "--chdir",
        SANDBOX_INSIDE,
        "--unshare-all",
        "--share-net",
        "--die-with-parent",
        "--new-session",
        "--hostname",
        "glidein-job",
    ]
    for source in DEFAULT_BINDS:
        cmd += ["--ro-bind-try", source, source]
    for bind in binds:
        cmd += ["--ro-bind-try" if bind.read_only else "--bind-try", bind.source, bind.target]
    for device in devices:  # found under DEVICE_DIR (or another): always /dev/<name> inside
        cmd += ["--dev-bind-try", device, "/dev/" + os.path.basename(device)]
    return [*cmd, "--", _inside(argv[0], sandbox), *argv[1:]]


def apptainer_argv(
    exe: str, image: str, sandbox: str, binds: Tuple[Bind, ...], gpus: bool, argv: List[str]
) -> List[str]:
    """An ``apptainer exec`` (or singularity) command line."""
    cmd = [
        exe,
        "exec",
        "--contain",
        "--cleanenv",
        "--ipc",
        "--pid",
        "--no-home",
        "--bind",
        f"{sandbox}:{SANDBOX_INSIDE}",
        "--pwd",
        SANDBOX_INSIDE,
    ]
    for source in DEFAULT_BINDS:
        if os.path.isdir(source):
            cmd += ["--bind", f"{source}:{source}:ro"]
    for bind in binds:
        if os.path.exists(bind.source):
            cmd += ["--bind", f"{bind.source}:{bind.target}" + (":ro" if bind.read_only else "")]
    if gpus:
        cmd.append("--nv")
    host_root = "/" if image == HOST_IMAGE else image
    if not argv[0]:  # no executable: the image's runscript, with the job's arguments
        return [exe, "run", *cmd[2:], host_root, *argv[1:]]
    return [*cmd, host_root, _inside(argv[0], sandbox), *argv[1:]]


def container_env(runtime: str, env: Dict[str, str], sandbox: str) -> Dict[str, str]:
    """The environment for the container command.

    bubblewrap passes its own environment on: the job's, with sandbox paths
    mapped inside. Apptainer's ``--cleanenv`` passes only ``APPTAINERENV_X``
    (``SINGULARITYENV_X``) as ``X``; the runtime itself keeps PATH and the
    node's own runtime settings (``APPTAINER_*``/``SINGULARITY_*``, such as a
    site's cache dir or bind path), never the rest of the pilot's environment.
    """
    inner = {key: _inside(value, sandbox) for key, value in env.items()}
    if runtime == "bwrap":
        return inner
    prefix = "SINGULARITYENV_" if runtime == "singularity" else "APPTAINERENV_"
    outer = {
        key: value
        for key, value in os.environ.items()
        if key.startswith(("APPTAINER_", "SINGULARITY_"))
    }
    outer.update({prefix + key: value for key, value in inner.items() if key != "PATH"})
    outer["PATH"] = os.environ.get("PATH") or "/usr/local/bin:/usr/bin:/bin"
    return outer


def wrap(
    setup: ContainerSetup, image: str, sandbox: str, argv: List[str], env: Dict[str, str]
) -> Tuple[List[str], Dict[str, str]]:
    """The container command line and environment for one job."""
    if setup.runtime == "bwrap":
        if not argv[0]:
            raise ContainerError("bubblewrap knows no entry point of an image")
        cmd = bwrap_argv(setup.path, image, sandbox, setup.binds, setup.gpu_devices, argv)
    elif setup.runtime in ("apptainer", "singularity"):
        cmd = apptainer_argv(setup.path, image, sandbox, setup.binds, bool(setup.gpu_devices), argv)
    else:
        raise ContainerError(f"no container runtime ({setup.runtime!r})")
    return cmd, container_env(setup.runtime, env, sandbox)
