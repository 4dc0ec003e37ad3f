"""Pure node checks behind the standard validation scripts.

Every function takes what it reads (environment, file contents, command
output) as arguments, so each batch system and cgroup layout is a row in a
table-driven test; the scripts only gather the inputs and write the results.
"""

from __future__ import annotations

import base64
import json
import math
import os
import re
from typing import Dict, List, Mapping, Optional, Tuple

# -- CPUs -------------------------------------------------------------------------------


def _first_int(text: str) -> Optional[int]:
    match = re.match(r"\s*([0-9]+)", text or "")
    return int(match.group(1)) if match else None


def batch_cpus(env: Mapping[str, str], hostname: str = "") -> Optional[Tuple[int, str]]:
    """CPUs the batch system gave this job on this node, and which variable said so.

    Slurm: ``SLURM_CPUS_ON_NODE``, else ``SLURM_JOB_CPUS_PER_NODE`` (``4(x2),2``:
    the first node's count). PBS: ``PBS_NUM_PPN``, ``NCPUS`` (PBS Pro),
    ``PBS_NP``. LSF: this host's count in ``LSB_MCPU_HOSTS`` (``host1 4 host2
    2``), else ``LSB_DJOB_NUMPROC``. Grid Engine: ``NSLOTS``.
    """
    for name in ("SLURM_CPUS_ON_NODE", "SLURM_JOB_CPUS_PER_NODE", "PBS_NUM_PPN", "NCPUS", "PBS_NP"):
        value = _first_int(env.get(name, ""))
        if value:
            return value, name
    hosts = env.get("LSB_MCPU_HOSTS", "").split()
    pairs = list(zip(hosts[::2], hosts[1::2]))  # noqa: B905 (python 3.9)
    short = hostname.split(".")[0]
    for host, count in pairs:
        if short and host.split(".")[0] == short and count.isdigit():
            return int(count), "LSB_MCPU_HOSTS"
    for name in ("LSB_DJOB_NUMPROC", "NSLOTS"):
        value = _first_int(env.get(name, ""))
        if value:
            return value, name
    if pairs and pairs[0][1].isdigit():
        return int(pairs[0][1]), "LSB_MCPU_HOSTS"
    return None


def cgroup_cpus(
    cpu_max: Optional[str], cfs_quota: Optional[str] = None, cfs_period: Optional[str] = None
) -> Optional[int]:
    """CPUs a cgroup quota allows: v2 ``cpu.max`` (``QUOTA PERIOD`` or ``max``),
    else v1 ``cpu.cfs_quota_us``/``cpu.cfs_period_us`` (-1 means no quota).
    A fractional quota rounds up: 1.5 CPUs of time can keep 2 threads busy."""
    quota = period = None
    if cpu_max:
        parts = cpu_max.split()
        if parts and parts[0] != "max":
            quota, period = int(parts[0]), int(parts[1]) if len(parts) > 1 else 100000
    elif cfs_quota and cfs_period and int(cfs_quota) > 0:
        quota, period = int(cfs_quota), int(cfs_period)
    if not quota or not period:
        return None
    return max(1, math.ceil(quota / period))


def decide_cpus(
    mode: str, batch: Optional[int], cgroup: Optional[int], affinity: int, node: int
) -> Tuple[int, str]:
    """The pilot's CPUs for ``GLIDEIN_Cpus`` = a number, ``node``, ``slot`` or ``auto``.

    ``node``: the whole machine. ``slot``: what the batch system allocated (an
    error when it does not say). ``auto``: the smallest of what the batch
    system, the cgroup quota and the affinity mask allow.
    """
    mode = (mode or "auto").strip().lower()
    if mode.isdigit() and int(mode) > 0:
        return int(mode), "configured"
    if mode == "node":
        return node, "node"
    if mode == "slot":
        if batch is None:
            raise ValueError(
                "GLIDEIN_Cpus is 'slot' but no batch system variable gives the "
                "allocated CPUs (SLURM_CPUS_ON_NODE, PBS_NUM_PPN, NCPUS, ...)"
            )
        return batch, "batch"
    if mode != "auto":
        raise ValueError(f"GLIDEIN_Cpus: expected a number, auto, node or slot, got {mode!r}")
    known = [(affinity, "affinity")]
    if batch:
        known.append((batch, "batch"))
    if cgroup:
        known.append((cgroup, "cgroup"))
    return min(known)


# -- memory -----------------------------------------------------------------------------

_NO_LIMIT = 1 << 60  # cgroup v1 writes a huge number for "no limit"


def batch_memory_mb(env: Mapping[str, str], cpus: int) -> Optional[int]:
    """Memory the batch system allocated, in MB: Slurm per node or per CPU."""
    per_node = _first_int(env.get("SLURM_MEM_PER_NODE", ""))
    if per_node:
        return per_node
    per_cpu = _first_int(env.get("SLURM_MEM_PER_CPU", ""))
    if per_cpu:
        return per_cpu * cpus
    return None


def cgroup_memory_mb(memory_max: Optional[str]) -> Optional[int]:
    """A cgroup memory limit (v2 ``memory.max`` or v1 ``limit_in_bytes``) in MB."""
    if not memory_max or memory_max.strip() == "max":
        return None
    value = int(memory_max.strip())
    return None if value >= _NO_LIMIT else value // (1024 * 1024)


def decide_memory(
    mode: str, batch: Optional[int], cgroup: Optional[int], node: int
) -> Tuple[int, str]:
    """``GLIDEIN_Memory`` = MB, ``node`` or ``auto`` (smallest known limit)."""
    mode = (mode or "auto").strip().lower()
    if mode.isdigit() and int(mode) > 0:
        return int(mode), "configured"
    if mode == "node":
        return node, "node"
    if mode != "auto":
        raise ValueError(f"GLIDEIN_Memory: expected MB, auto or node, got {mode!r}")
    known = [(node, "node")]
    if batch:
        known.append((batch, "batch"))
    if cgroup:
        known.append((cgroup, "cgroup"))
    return min(known)


# -- GPUs -------------------------------------------------------------------------------


def visible_devices(env: Mapping[str, str]) -> Optional[List[str]]:
    """``CUDA_VISIBLE_DEVICES`` as a list; None when unset; [] for none at all
    (empty, ``-1``, or ``10000``: what an HTCondor slot without GPUs sets, so a
    pilot in such a slot does not count that index as a GPU)."""
    if "CUDA_VISIBLE_DEVICES" not in env:
        return None
    raw = env["CUDA_VISIBLE_DEVICES"].strip()
    if raw in ("", "NoDevFiles", "-1", "10000"):
        return []
    return [d.strip() for d in raw.split(",") if d.strip()]


def parse_nvidia_smi(text: str) -> List[Dict[str, str]]:
    """Rows of ``nvidia-smi --query-gpu=index,uuid,name,memory.total,compute_cap
    --format=csv,noheader,nounits``."""
    rows = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.split(",")]
        if len(cells) >= 5 and cells[0].isdigit():
            rows.append(
                {
                    "index": cells[0],
                    "uuid": cells[1],
                    "name": cells[2],
                    "memory": cells[3],
                    "capability": cells[4],
                }
            )
    return rows


def gpu_attributes(rows: List[Dict[str, str]], visible: Optional[List[str]]) -> Dict[str, object]:
    """HTCondor's GPU slot attributes from nvidia-smi rows and the visible list.

    The batch system's ``CUDA_VISIBLE_DEVICES`` limits the GPUs to those it
    gave us (by index or UUID); without nvidia-smi the list alone gives the count.
    """
    if visible is not None and rows:
        rows = [r for r in rows if r["index"] in visible or r["uuid"] in visible]
    if not rows:
        attrs_only: Dict[str, object] = {"GPUs": len(visible or [])}
        if visible:
            attrs_only["GPUs_DeviceIds"] = ",".join(visible)
        return attrs_only
    first = rows[0]
    attrs: Dict[str, object] = {"GPUs": len(rows), "GPUs_DeviceName": first["name"]}
    if first["memory"].isdigit():
        attrs["GPUs_GlobalMemoryMb"] = int(first["memory"])
    if re.fullmatch(r"[0-9]+\.[0-9]+", first["capability"]):
        attrs["GPUs_Capability"] = float(first["capability"])
    attrs["GPUs_DeviceIds"] = ",".join(r["index"] for r in rows)
    return attrs


MAX_GPUS = 64  # per node: more rows than this are a broken tool's output, not GPUs
_CUDA_VERSION = re.compile(r"^\s*CUDA Version\s*:\s*([0-9]{1,3})\.([0-9]{1,3})\s*$", re.MULTILINE)


def cuda_version(text: str) -> Optional[int]:
    """The driver's highest CUDA version from ``nvidia-smi -q`` output, encoded as
    HTCondor's ``MaxSupportedVersion`` (12.2 is 12020: major * 1000 + minor * 10),
    or None when the output does not say."""
    match = _CUDA_VERSION.search(text)
    if match is None:
        return None
    return int(match.group(1)) * 1000 + int(match.group(2)) * 10


def gpu_properties(
    rows: List[Dict[str, str]], visible: Optional[List[str]], max_version: Optional[int]
) -> List[Dict[str, object]]:
    """One property ad per GPU this pilot has, in HTCondor's ``AvailableGPUs``
    shape (``Id``, ``DeviceName``, ``Capability``, ``GlobalMemoryMb``,
    ``MaxSupportedVersion``, ``DriverVersion``), so ``require_gpus`` and the
    ``gpus_minimum_*`` commands match with ``countMatches``. The same filter
    as ``gpu_attributes``: only the GPUs the batch system gave us. Values that
    do not parse are left out (a property a job asks for is then undefined)."""
    if visible is not None:
        rows = [r for r in rows if r["index"] in visible or r["uuid"] in visible]
    ads: List[Dict[str, object]] = []
    for row in rows[:MAX_GPUS]:
        ad: Dict[str, object] = {"Id": row["uuid"][:128], "DeviceName": row["name"][:128]}
        if re.fullmatch(r"[0-9]+\.[0-9]+", row["capability"]):
            ad["Capability"] = float(row["capability"])
        if row["memory"].isdigit():
            ad["GlobalMemoryMb"] = int(row["memory"])
        if max_version is not None:
            ad["MaxSupportedVersion"] = max_version
            ad["DriverVersion"] = round(max_version // 1000 + max_version % 1000 / 100, 2)
        ads.append(ad)
    return ads


def node_share(values: Mapping[str, str]) -> Tuple[int, int]:
    """(pilots sharing this node, this pilot's index among them) for ``--multi``.

    Under srun only the tasks Slurm placed on this node share it
    (``GLIDEIN_Multi_Local_*``); local pilots all do (``GLIDEIN_Multi_*``).
    """
    for prefix in ("GLIDEIN_Multi_Local_", "GLIDEIN_Multi_"):
        count, index = values.get(prefix + "Count", ""), values.get(prefix + "Index", "")
        if count.isdigit() and index.isdigit() and int(index) < int(count):
            return int(count), int(index)
    return 1, 0


def gpu_share(devices: List[str], count: int, index: int) -> List[str]:
    """Pilot ``index``'s GPUs of ``devices`` among ``count`` pilots: contiguous
    blocks (neighbouring devices usually share a switch), the remainder going to
    the first pilots, as the agent splits CPUs and memory; no GPU is given twice."""
    if count <= 1:
        return list(devices)
    base, extra = divmod(len(devices), count)
    start = index * base + min(index, extra)
    return list(devices[start : start + base + (1 if index < extra else 0)])


# -- credential -------------------------------------------------------------------------


def token_expiry(token: str) -> Optional[float]:
    """The ``exp`` claim of a JWT (read, not verified: the services verify it)."""
    parts = token.strip().split(".")
    if len(parts) != 3:
        return None
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload))
    except (ValueError, TypeError):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    return float(exp) if isinstance(exp, (int, float)) else None


# -- OS ---------------------------------------------------------------------------------


def os_release(text: str) -> Dict[str, str]:
    values: Dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and not key.startswith("#"):
            values[key] = value.strip().strip("\"'")
    return values


def read_text(path: str) -> Optional[str]:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except OSError:
        return None


def own_cgroup_file(
    name: str, root: str = "/sys/fs/cgroup", proc_cgroup: str = "/proc/self/cgroup"
) -> Optional[str]:
    """Contents of a cgroup control file for this process (v2, then v1 layouts).

    ``name`` is ``cpu.max`` style (v2); v1 names are given as ``CONTROLLER/FILE``.
    The process's own cgroup is tried first, then the mount root (a container
    usually sees its own cgroup as the root).
    """
    controller, _, filename = name.rpartition("/")
    rel_paths = ["/"]
    for line in (read_text(proc_cgroup) or "").splitlines():
        _, controllers, path = [*line.split(":", 2), "", ""][:3]
        if (not controller and controllers == "") or (
            controller and controller in controllers.split(",")
        ):
            rel_paths.insert(0, path)
    base = os.path.join(root, controller) if controller else root
    for rel in rel_paths:
        text = read_text(os.path.join(base, rel.lstrip("/"), filename))
        if text is not None:
            return text.strip()
    return None


# -- HTTP proxy (squid) -----------------------------------------------------------------

PROXY_ENV = ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY")


def find_proxy(configured: str, env: Mapping[str, str]) -> Tuple[str, str]:
    """The HTTP proxy this node's downloads go through, and who said so.

    ``GLIDEIN_Proxy`` wins: a URL (``http://squid.site:3128``), ``none`` (no
    proxy, whatever the environment says) or ``auto``/empty (look around). Then
    the usual ``http_proxy`` family, then ``OSG_SQUID_LOCATION`` (``host:port``,
    what OSG sites set). ``("", "none")`` when there is none.
    """
    value = (configured or "").strip()
    if value.lower() == "none":
        return "", "GLIDEIN_Proxy"
    if value and value.lower() != "auto":
        return normalise_proxy(value), "GLIDEIN_Proxy"
    for name in PROXY_ENV:
        if env.get(name, "").strip():
            return normalise_proxy(env[name]), name
    squid = env.get("OSG_SQUID_LOCATION", "").strip()
    if squid and squid.upper() != "UNAVAILABLE":
        return normalise_proxy(squid), "OSG_SQUID_LOCATION"
    return "", "none"


def normalise_proxy(text: str) -> str:
    """``host:port`` becomes ``http://host:port``; a URL stays as it is."""
    text = text.strip()
    return text if "://" in text else "http://" + text


def proxy_address(url: str) -> Tuple[str, int]:
    """(host, port) of a proxy URL; ValueError names what is wrong."""
    rest = url.split("://", 1)[-1].split("/", 1)[0].rsplit("@", 1)[-1]
    if rest.startswith("["):  # [v6]:port
        host, _, port = rest[1:].partition("]")
        port = port.lstrip(":")
    else:
        host, _, port = rest.rpartition(":") if ":" in rest else (rest, "", "")
    if not host:
        raise ValueError(f"proxy {redact_proxy(url)!r}: no host")
    if port and not port.isdigit():
        raise ValueError(f"proxy {redact_proxy(url)!r}: bad port {port!r}")
    return host, int(port or 3128)


def redact_proxy(url: str) -> str:
    """The URL without ``user:password@``: what may be logged and published."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    _userinfo, at, tail = rest.partition("/")[0].rpartition("@")
    if not at:
        return url
    path = rest.partition("/")[2]
    return f"{scheme}{sep}{tail}" + (f"/{path}" if path else "")
