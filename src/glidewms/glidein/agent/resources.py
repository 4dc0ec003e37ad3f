"""Detect what the node gives this pilot and describe it as a slot ad.

The slot ad uses HTCondor's attribute names and conventions (``Cpus``,
``Memory`` in MB, ``Disk`` in KiB, ``Arch`` ``X86_64``, ``OpSysAndVer``
``Debian12``, ``Machine`` the node's name, ``AvailableGPUs`` a list of GPU
property ads) so that the ClassAd expressions users and frontends already
write for HTCondor glideins match our slots unchanged.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import re
import shutil
import socket
from dataclasses import dataclass, field
from typing import Any, Sequence

from .config import GlideinConfig
from .transfer import plugins_for

log = logging.getLogger(__name__)

# platform.machine() → HTCondor's Arch (HTCondor keeps some of them lower case).
_ARCH = {
    "x86_64": "X86_64",
    "amd64": "X86_64",
    "i386": "INTEL",
    "i686": "INTEL",
    "aarch64": "aarch64",
    "arm64": "aarch64",
    "ppc64le": "ppc64le",
}

# /etc/os-release ID → HTCondor's OpSysName.
_OS_NAMES = {
    "almalinux": "AlmaLinux",
    "centos": "CentOS",
    "debian": "Debian",
    "fedora": "Fedora",
    "rhel": "RedHat",
    "rocky": "Rocky",
    "scientific": "SL",
    "sl": "SL",
    "ubuntu": "Ubuntu",
    "opensuse-leap": "openSUSE",
    "sles": "SLES",
}

# Attributes the agent owns: an entry --attr of the same name is ignored, since
# the pool must see what the agent actually tracks and offers.
RESERVED = frozenset(
    (
        "Cpus",
        "Memory",
        "Disk",
        "GPUs",
        "AvailableGPUs",
        "GLIDEIN_Id",
        "GLIDEIN_Site",
        "GLIDEIN_Entry_Name",
        "GLIDEIN_Factory",
        "GLIDEIN_Multi_Count",
        "GLIDEIN_Multi_Index",
    )
)
MULTI_ATTRS = ("GLIDEIN_Multi_Count", "GLIDEIN_Multi_Index")

# The bounds of the GPU property ads read back from glidein_config (a
# validation script wrote them, but the slot ad goes to the pool as it is).
MAX_GPUS = 64
_GPU_PROPERTIES = {
    "Id": str,
    "DeviceName": str,
    "Capability": float,
    "GlobalMemoryMb": int,
    "MaxSupportedVersion": int,
    "DriverVersion": float,
}


@dataclass
class Resources:
    """The amounts a partitionable slot can hand out (Memory MB, Disk KiB)."""

    cpus: int
    memory: int
    disk: int
    gpus: int = 0

    def as_free(self) -> dict[str, int]:
        """The ``free`` object of a claim request."""
        return {"cpus": self.cpus, "memory": self.memory, "disk": self.disk, "gpus": self.gpus}


@dataclass(frozen=True)
class Gpu:
    """One of the pilot's GPUs, which a claim holds alone while its job runs.

    ``device`` is how ``CUDA_VISIBLE_DEVICES`` names it on this node (the
    index nvidia-smi gave, which is also its ``/dev/nvidiaN``; a UUID when
    the batch system named it so); ``properties`` its ``AvailableGPUs`` ad.
    """

    device: str
    properties: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def assigned(self) -> str:
        """The name HTCondor gives it in ``AssignedGPUs``: ``GPU-`` and the first 8
        hex digits of its UUID, or ``CUDA<index>`` when the UUID is not known."""
        uuid = str(self.properties.get("Id") or "")
        if not uuid and self.device.startswith("GPU-"):
            uuid = self.device
        digits = uuid[4:].replace("-", "")[:8] if uuid.startswith("GPU-") else ""
        if re.fullmatch(r"[0-9a-fA-F]{8}", digits):
            return f"GPU-{digits}"
        return f"CUDA{self.device}"


def pilot_gpus(values: dict[str, str], count: int) -> list[Gpu]:
    """The pilot's ``count`` GPUs, in the order validation found them: the ids its
    ``CUDA_VISIBLE_DEVICES`` names (the ``gpus`` script wrote it) with their
    property ads; ``0..count-1`` when nothing names them (``GPUs`` was set by
    hand), as the node enumerates its devices."""
    visible = [d.strip() for d in values.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    ids = visible[:count] if len(visible) >= count else [str(i) for i in range(count)]
    ads = gpu_properties(values.get("GLIDEIN_GPUs_Properties", ""), count)
    return [Gpu(ids[i], ads[i] if i < len(ads) else {}) for i in range(min(count, MAX_GPUS))]


# What HTCondor's starter sets, by default, in every GPU variable of a job that
# has no GPU on a GPU machine: an index no node has, so CUDA/OpenCL see no device
# (unset would mean every GPU of the node).
UNASSIGNED_GPUS = "10000"


def gpu_environment(gpus: Sequence[Gpu]) -> dict[str, str]:
    """What a job on a GPU pilot is told of its GPUs: only its claim's, in the
    variables HTCondor's starter sets (``CUDA_VISIBLE_DEVICES``,
    ``GPU_DEVICE_ORDINAL``, ``_CONDOR_AssignedGPUs``) and the one NVIDIA's
    container runtime reads. A job that asked for none gets HTCondor's
    "unassigned" value."""
    if not gpus:
        return {
            "CUDA_VISIBLE_DEVICES": UNASSIGNED_GPUS,
            "GPU_DEVICE_ORDINAL": UNASSIGNED_GPUS,
            "_CONDOR_AssignedGPUs": UNASSIGNED_GPUS,
            "NVIDIA_VISIBLE_DEVICES": "none",
        }
    devices = ",".join(g.device for g in gpus)
    return {
        "CUDA_VISIBLE_DEVICES": devices,
        "GPU_DEVICE_ORDINAL": devices,
        "_CONDOR_AssignedGPUs": ",".join(g.assigned for g in gpus),
        "NVIDIA_VISIBLE_DEVICES": devices,
    }


def detect_cpus() -> int:
    """CPUs this process may run on: the affinity mask honours cpusets/batch pinning."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def detect_memory_mb(meminfo: str = "/proc/meminfo") -> int:
    """Total memory in MB from /proc/meminfo, or from sysconf where it is missing."""
    try:
        with open(meminfo, encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1024 * 1024)


def detect_disk_kib(path: str) -> int:
    """Free space of the file system holding ``path``, in KiB like HTCondor's Disk."""
    return shutil.disk_usage(path).free // 1024


def detect_resources(cfg: GlideinConfig, meminfo: str = "/proc/meminfo") -> Resources:
    """Explicit glidein_config amounts win; ``auto`` (None) is detected.

    One of ``GLIDEIN_Multi_Count`` pilots of one batch job (``--multi N``)
    offers its share of the node (see ``split``): of the pilots on this node,
    which under srun (``GLIDEIN_Multi_Local_Count``/``_Index``, set per task)
    may be fewer than all of them. GPUs the ``gpus`` script already assigned
    to this pilot (``GLIDEIN_GPUs_Assigned``) are its own, not split again.
    """
    whole = Resources(
        cpus=cfg.cpus if cfg.cpus is not None else detect_cpus(),
        memory=cfg.memory if cfg.memory is not None else detect_memory_mb(meminfo),
        disk=detect_disk_kib(cfg.work_dir),
        gpus=int(cfg.values["GPUs"]) if cfg.values.get("GPUs", "").isdigit() else 0,
    )
    count, index = node_share(cfg.values)
    if count > 1:
        share = split(whole, count, index)
        if cfg.values.get("GLIDEIN_GPUs_Assigned", "").lower() == "true":
            share.gpus = whole.gpus
        return share
    return whole


def node_share(values: dict[str, str]) -> tuple[int, int]:
    """(pilots sharing this node, this pilot's index among them), (1, 0) alone."""
    for prefix in ("GLIDEIN_Multi_Local_", "GLIDEIN_Multi_"):
        count, index = values.get(prefix + "Count", ""), values.get(prefix + "Index", "")
        if count.isdigit() and index.isdigit() and int(index) < int(count):
            return int(count), int(index)
    return 1, 0


def split(whole: Resources, count: int, index: int) -> Resources:
    """Pilot ``index``'s share of ``whole`` among ``count``: an even split, the
    remainder going to the first pilots, so the shares add up to the whole (a
    pilot may get 0 GPUs, never less than one CPU or one MB)."""

    def share(total: int) -> int:
        return total // count + (1 if index < total % count else 0)

    return Resources(
        cpus=max(1, share(whole.cpus)),
        memory=max(1, share(whole.memory)),
        disk=whole.disk // count,
        gpus=share(whole.gpus),
    )


def htcondor_arch(machine: str) -> str:
    """Map platform.machine() to HTCondor's Arch value."""
    return _ARCH.get(machine.lower(), machine)


def read_os_release(path: str = "/etc/os-release") -> dict[str, str]:
    """Parse os-release ``KEY=value`` lines (values may be quoted)."""
    values: dict[str, str] = {}
    try:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                key, sep, value = line.strip().partition("=")
                if sep and not key.startswith("#"):
                    values[key] = value.strip().strip("\"'")
    except OSError:
        pass
    return values


def os_attributes(os_release: dict[str, str]) -> dict[str, Any]:
    """OpSys, and OpSysName/OpSysMajorVer/OpSysAndVer when os-release tells them."""
    attrs: dict[str, Any] = {"OpSys": "LINUX"}
    ident = os_release.get("ID", "").lower()
    major = os_release.get("VERSION_ID", "").split(".")[0]
    if ident:
        attrs["OpSysName"] = _OS_NAMES.get(ident, ident.capitalize())
    if major.isdigit():
        attrs["OpSysMajorVer"] = int(major)
        if ident:
            attrs["OpSysAndVer"] = f"{attrs['OpSysName']}{major}"
    return attrs


def node_name() -> str:
    """HTCondor's ``Machine``: the node's fully qualified name, or its host name
    where the resolver only knows it as ``localhost``."""
    name = socket.getfqdn()
    if not name or name.startswith("localhost"):
        name = platform.node() or name or "localhost"
    return name


def node_attributes(machine: str, domain: str) -> dict[str, Any]:
    """``Machine``, and the domains HTCondor derives from the node's name by
    default: a node shares a file system (``should_transfer_files = NO`` jobs)
    and user ids with itself only, unless the entry says its site shares more
    (an entry attribute ``FileSystemDomain`` or ``UidDomain`` overrides these).
    ``domain`` is ``socket.getfqdn()``, the very call the submit side makes
    for a job's ``FileSystemDomain``, so a job and a pilot on one node agree."""
    return {"Machine": machine, "FileSystemDomain": domain, "UidDomain": domain}


def gpu_properties(text: str, gpus: int) -> list[dict[str, Any]]:
    """``AvailableGPUs`` from the JSON the ``gpus`` validation script wrote
    (``GLIDEIN_GPUs_Properties``), held to its known keys and types and to the
    pilot's own GPU count; [] for anything else (the count alone still matches
    plain ``request_gpus`` jobs)."""
    try:
        raw = json.loads(text) if text else []
    except ValueError:
        log.warning("GLIDEIN_GPUs_Properties is not JSON; no AvailableGPUs")
        return []
    if not isinstance(raw, list):
        return []
    ads = []
    for item in raw[: min(gpus, MAX_GPUS)]:
        if not isinstance(item, dict):
            return []
        ad: dict[str, Any] = {}
        for key, kind in _GPU_PROPERTIES.items():
            value: Any = item.get(key)
            if kind is str:
                if isinstance(value, str):
                    ad[key] = value[:128]
            elif _bounded_number(value):
                ad[key] = kind(value)
        ads.append(ad)
    return ads


def _bounded_number(value: Any) -> bool:
    """A JSON number (not a boolean) that a ClassAd keeps exactly."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return number and abs(value) < 2**53


def slot_ad(
    cfg: GlideinConfig,
    total: Resources,
    to_die: float,
    os_release: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The partitionable slot ad this pilot registers.

    Entry attributes may override what was detected (Arch, OpSys...), but not
    the resources and identity the agent itself tracks (``RESERVED``).

    ``GLIDEIN_ToDie`` (epoch seconds when the pilot stops taking jobs) lets a
    pool or frontend keep long jobs off pilots that are about to retire, as
    HTCondor glideins publish it.
    """
    ad = os_attributes(read_os_release() if os_release is None else os_release)
    ad["Arch"] = htcondor_arch(platform.machine())
    ad.update(node_attributes(node_name(), socket.getfqdn()))
    ad["PartitionableSlot"] = True
    ad["HasFileTransferPluginMethods"] = plugins_for(cfg.values).methods()  # transfer.py
    for name, value in cfg.attrs.items():
        if name in RESERVED:
            log.warning("attribute %s is set by the agent; the entry's value is ignored", name)
            continue
        ad[name] = value  # an entry may know better than detection (e.g. Arch, OpSys)
    ad.update(
        {
            "Cpus": total.cpus,
            "Memory": total.memory,
            "Disk": total.disk,
            "GPUs": total.gpus,
            "GLIDEIN_Id": cfg.glidein_id,
            "GLIDEIN_Site": cfg.site,
            "GLIDEIN_Entry_Name": cfg.entry,
            "GLIDEIN_Factory": cfg.factory_url,
            "GLIDEIN_ToDie": int(to_die),
        }
    )
    if total.gpus:
        ad["AvailableGPUs"] = gpu_properties(
            cfg.values.get("GLIDEIN_GPUs_Properties", ""), total.gpus
        )
    for key in MULTI_ATTRS:  # which of a batch job's pilots this is (--multi)
        if cfg.values.get(key, "").isdigit():
            ad[key] = int(cfg.values[key])
    return ad
