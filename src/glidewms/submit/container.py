"""Universes, and container jobs: `universe = container | docker`, `container_image`,
`docker_image`, and the GlideinWMS-era `+SingularityImage`.

The job ad gets what condor_submit gives it (`WantContainer` or `WantDocker`,
`ContainerImage`/`DockerImage`, one of `WantDockerImage`/`WantSIF`/
`WantSandboxImage` for the image kind, `ContainerImageSource`), and its
Requirements a clause naming the slot attributes a pilot publishes when it has
a runtime for that kind: `HasContainer` and `HasDockerURL`/`HasSIF`/
`HasSandboxImage`, or `HasDocker` for the docker universe. A pilot without
one never claims the job, so it cannot fail it as a black hole would.

Image transfer is condor_submit's: docker:// and oras:// images are pulled on
the execute node, images under /cvmfs (CONTAINER_SHARED_FS) are used in place,
`transfer_container = false` uses the path as is, and any other image (a local
.sif file or directory, or an http(s) URL) travels with the job, the ad
naming it by its base name. One difference: an absolute path that does not
exist here is taken as a path on the execute node (with a warning) instead
of refused, since pilots often carry images at site paths.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from glidewms.submit.exprs import quote

if TYPE_CHECKING:
    from glidewms.submit.build import Got, JobBuilder

_OTHER = "it runs vanilla, container and docker universe jobs"
_SHARED_FS = ("/cvmfs",)
_KIND = {
    "docker": ("WantDockerImage", "HasDockerURL"),
    "sif": ("WantSIF", "HasSIF"),
    "sandbox": ("WantSandboxImage", "HasSandboxImage"),
}


def universe(job: JobBuilder) -> None:
    got = job.get("universe")
    written = got.value if got else "vanilla"
    name = written.lower()
    if name in ("vanilla", "5"):
        name = "vanilla"
    elif name not in ("container", "docker"):
        raise job.fail(got, f"{written!r} is not supported by glidewms: {_OTHER}")
    container_image, docker_image = job.get("container_image"), job.get("docker_image")
    if name == "docker":
        if container_image:
            raise job.fail(
                container_image,
                "the docker universe does not allow container_image (use docker_image)",
            )
        if docker_image is None:
            raise job.fail(got, "docker jobs require a docker_image")
    elif container_image and docker_image:
        raise job.fail(docker_image, "cannot declare both docker_image and container_image")
    elif container_image or docker_image:
        name = "container"
    elif name == "container":
        raise job.fail(got, "container jobs require a container_image or docker_image")
    job.attrs["JobUniverse"] = "5"
    job.flags["universe"] = name
    if name == "docker":
        job.attrs["WantDocker"] = "true"
        job.flags["container"] = True
    elif name == "container":
        job.attrs["WantContainer"] = "true"
        job.flags["container"] = True


def image(job: JobBuilder) -> None:
    kind = job.flags.get("universe")
    if kind == "docker":
        docker = job.get("docker_image")
        assert docker is not None
        job.attrs["DockerImage"] = quote(_unquote(docker.value))
        job.clauses.append("TARGET.HasDocker")
        _network(job)
    elif kind == "container":
        docker, container = job.get("docker_image"), job.get("container_image")
        if docker is not None:
            job.attrs["DockerImage"] = quote(_unquote(docker.value))
            job.attrs["WantDockerImage"] = "true"
            job.clauses += ["TARGET.HasContainer", "TARGET.HasDockerURL"]
        elif container is not None:
            _container_image(job, container)
        _network(job)
    else:
        _forced_image(job)


def _container_image(job: JobBuilder, got: Got) -> None:
    value = _unquote(got.value)
    if value.startswith(("instance://", "library://", "shub://")):
        raise job.fail(
            got,
            f"{value!r} is not a valid container image (instance://, "
            "library:// and shub:// are not)",
        )
    kind = image_kind(value)
    want, has = _KIND[kind]
    job.attrs[want] = "true"
    job.clauses += ["TARGET.HasContainer", f"TARGET.{has}"]
    scheme = value.split("://", 1)[0].lower() if "://" in value else ""
    if not job.boolean("transfer_container", True) or value.startswith(_SHARED_FS):
        job.attrs["ContainerImage"] = quote(value)
        job.attrs["ContainerImageSource"] = quote("local")
    elif scheme in ("docker", "oras") or value.startswith("docker:"):
        job.attrs["ContainerImage"] = quote(value)
        job.attrs["ContainerImageSource"] = quote(scheme or "docker")
    elif scheme:
        if scheme not in ("http", "https"):
            raise job.fail(
                got, f"not supported by glidewms: {scheme}:// images (http and https URLs are)"
            )
        job.urls.append(value)
        job.clauses.append(f'stringListIMember("{scheme}", TARGET.HasFileTransferPluginMethods)')
        job.attrs["ContainerImage"] = quote(_base(value))
        job.attrs["ContainerImageFullPath"] = quote(value)
        job.attrs["ContainerImageSource"] = quote(scheme)
    else:
        path = Path(os.path.normpath(job.iwd / value))
        if not job.ctx.stat(path)[0]:
            if not os.path.isabs(value):
                raise job.fail(
                    got,
                    f"no such image: {value!r} (looked for {path}); set "
                    "transfer_container = false for an image on the execute node",
                )
            job.ctx.warn(
                got.source,
                got.line,
                f"{got.key}: {value} is not on this machine: "
                "it is used as a path on the execute node (transfer_container = "
                "false says so)",
            )
            job.attrs["ContainerImage"] = quote(value)
            job.attrs["ContainerImageSource"] = quote("local")
            return
        job.inputs.append(path)
        job.attrs["ContainerImage"] = quote(_base(value))
        job.attrs["ContainerImageFullPath"] = quote(str(path))
        job.attrs["ContainerImageSource"] = quote("cedar")


def _forced_image(job: JobBuilder) -> None:
    """`+SingularityImage` (GlideinWMS) or `+ContainerImage`: match a runtime for it too."""
    for name in ("my.singularityimage", "my.containerimage"):
        assign = job.block.macros.get(name)
        if assign is None:
            continue
        text = job.expand(assign.value, assign.source, assign.line).strip()
        if len(text) >= 2 and text[0] == text[-1] == '"':
            _, has = _KIND[image_kind(text[1:-1])]
            job.clauses += ["TARGET.HasContainer", f"TARGET.{has}"]
        return


def _network(job: JobBuilder) -> None:
    if got := job.get("docker_network_type"):
        job.attrs["DockerNetworkType"] = quote(got.value)
        if got.value.lower() not in ("host", "none", "nat"):
            job.clauses.append("stringListMember(MY.DockerNetworkType, TARGET.DockerNetworks)")


def image_kind(value: str) -> str:
    """condor_submit's image type: docker (docker:), sif (.sif), else a sandbox dir."""
    value = value.strip()
    if value.startswith("docker:"):
        return "docker"
    if value.endswith(".sif"):
        return "sif"
    return "sandbox"


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1].strip()
    return value


def _base(value: str) -> str:
    return os.path.basename(value.rstrip("/"))
