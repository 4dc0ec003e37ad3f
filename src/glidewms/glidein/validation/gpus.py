"""Validation: GPUs from nvidia-smi, else from CUDA_VISIBLE_DEVICES.

Publishes HTCondor's ``GPUs``, ``GPUs_DeviceName``, ``GPUs_GlobalMemoryMb``,
``GPUs_Capability`` as slot attributes and ``CUDA_VISIBLE_DEVICES`` to jobs.
``GLIDEIN_GPUs``: ``auto`` (default), ``0`` (ignore GPUs), or N required.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import checks
from gconfig import Failure, Script, main

QUERY = ["--query-gpu=index,uuid,name,memory.total,compute_cap",
         "--format=csv,noheader,nounits"]


def check(script: Script) -> str:
    mode = script.get("GLIDEIN_GPUs", "auto").lower()
    if mode == "0":
        script.add("GPUs", 0, slot=True)
        return "GPUs disabled"
    rows = []
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, *QUERY], capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise Failure("WN_Resource", f"nvidia-smi failed: {exc}") from None
        if out.returncode != 0:
            raise Failure("WN_Resource", f"nvidia-smi exited {out.returncode}: "
                                         f"{out.stderr.strip()[-300:]}")
        rows = checks.parse_nvidia_smi(out.stdout)
    attrs = checks.gpu_attributes(rows, checks.visible_devices(os.environ))
    count = int(attrs["GPUs"])  # type: ignore[call-overload]
    if mode.isdigit() and count < int(mode):
        raise Failure("WN_Resource", f"{count} GPUs found, GLIDEIN_GPUs asks {mode}")
    for key, value in attrs.items():
        if key != "GPUs_DeviceIds":
            script.add(key, value, slot=True)
    if count and "GPUs_DeviceIds" in attrs:
        script.add("CUDA_VISIBLE_DEVICES", attrs["GPUs_DeviceIds"], env=True)
    return f"{count} GPUs" + (f" ({attrs.get('GPUs_DeviceName')})" if count else "")


if __name__ == "__main__":
    main(check)
