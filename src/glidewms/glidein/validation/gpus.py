"""Validation: GPUs from nvidia-smi, else from CUDA_VISIBLE_DEVICES.

Publishes HTCondor's ``GPUs``, ``GPUs_DeviceName``, ``GPUs_GlobalMemoryMb``,
``GPUs_Capability`` and ``CUDAMaxSupportedVersion`` as slot attributes and
``CUDA_VISIBLE_DEVICES`` to jobs. Each GPU's properties (HTCondor's
``AvailableGPUs`` ads, which ``require_gpus`` matches against) go to
glidein_config as one JSON line, ``GLIDEIN_GPUs_Properties``: a list of ads
is not a ``KEY VALUE`` value, so the agent reads it back (``resources.py``).
``GLIDEIN_GPUs``: ``auto`` (default), ``0`` (ignore GPUs), or N required.

One of several pilots on a node (``--multi``) takes only its block of the
node's GPUs (``checks.gpu_share``): its slot offers those, its jobs'
``CUDA_VISIBLE_DEVICES`` names those, and ``GLIDEIN_GPUs_Assigned`` tells the
agent not to split them again. ``GLIDEIN_GPUs_Node`` keeps the node's count.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import checks
from gconfig import Failure, Script, main

QUERY = ["--query-gpu=index,uuid,name,memory.total,compute_cap", "--format=csv,noheader,nounits"]


def check(script: Script) -> str:
    mode = script.get("GLIDEIN_GPUs", "auto").lower()
    if mode == "0":
        script.add("GPUs", 0, slot=True)
        return "GPUs disabled"
    rows = []
    max_version = None
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, *QUERY], capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise Failure("WN_Resource", f"nvidia-smi failed: {exc}") from None
        if out.returncode != 0:
            raise Failure(
                "WN_Resource", f"nvidia-smi exited {out.returncode}: {out.stderr.strip()[-300:]}"
            )
        rows = checks.parse_nvidia_smi(out.stdout)
        max_version = _cuda_version(smi) if rows else None
    visible = checks.visible_devices(os.environ)
    attrs = checks.gpu_attributes(rows, visible)
    count = int(str(attrs["GPUs"]))  # an int (checks.gpu_attributes) among slot values
    if mode.isdigit() and count < int(mode):
        raise Failure("WN_Resource", f"{count} GPUs found, GLIDEIN_GPUs asks {mode}")
    pilots, index = checks.node_share(script.values)
    mine = visible
    if pilots > 1:
        devices = str(attrs.get("GPUs_DeviceIds", "")).split(",") if count else []
        mine = checks.gpu_share(devices, pilots, index)
        attrs = checks.gpu_attributes(rows, mine)
        script.add("GLIDEIN_GPUs_Node", count)
        script.add("GLIDEIN_GPUs_Assigned", True)
        count = int(str(attrs["GPUs"]))
    for key, value in attrs.items():
        if key != "GPUs_DeviceIds":
            script.add(key, value, slot=True)
    properties = checks.gpu_properties(rows, mine, max_version) if count else []
    script.add("GLIDEIN_GPUs_Properties", json.dumps(properties, separators=(",", ":")))
    if max_version is not None and count:
        script.add("CUDAMaxSupportedVersion", max_version, slot=True)
    if count and "GPUs_DeviceIds" in attrs:
        script.add("CUDA_VISIBLE_DEVICES", attrs["GPUs_DeviceIds"], env=True)
    elif pilots > 1 and script.get("GLIDEIN_GPUs_Node", "0") != "0":
        script.add("CUDA_VISIBLE_DEVICES", "", env=True)  # the node's GPUs are the others'

    return f"{count} GPUs" + (f" ({attrs.get('GPUs_DeviceName')})" if count else "")


def _cuda_version(smi: str) -> int | None:
    """The driver's CUDA version (``nvidia-smi -q`` header); None if it cannot say:
    the GPUs still count, jobs asking for a runtime version then do not match."""
    try:
        out = subprocess.run([smi, "-q"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return checks.cuda_version(out.stdout) if out.returncode == 0 else None


if __name__ == "__main__":
    main(check)
