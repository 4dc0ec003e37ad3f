"""Validation: operating system and architecture, against optional requirements.

``GLIDEIN_Required_OS`` (comma list such as ``Debian12,RedHat9``, matched
against ID+major version, case-insensitive) and ``GLIDEIN_Required_Arch``
(``x86_64,aarch64``). Publishes ``GLIDEIN_OS`` and ``GLIDEIN_Kernel``.
"""

from __future__ import annotations

import os
import platform
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import checks
from gconfig import Failure, Script, main


def check(script: Script) -> str:
    release = checks.os_release(checks.read_text("/etc/os-release") or "")
    name = release.get("ID", "unknown") + release.get("VERSION_ID", "").split(".")[0]
    arch = platform.machine()
    wanted_os = [
        w.strip().lower() for w in script.get("GLIDEIN_Required_OS").split(",") if w.strip()
    ]
    if wanted_os and name.lower() not in wanted_os:
        raise Failure("WN_Resource", f"OS {name} is not one of GLIDEIN_Required_OS {wanted_os}")
    wanted_arch = [
        w.strip().lower() for w in script.get("GLIDEIN_Required_Arch").split(",") if w.strip()
    ]
    if wanted_arch and arch.lower() not in wanted_arch:
        raise Failure("WN_Resource", f"arch {arch} is not one of GLIDEIN_Required_Arch")
    script.add("GLIDEIN_OS", name, slot=True)
    script.add("GLIDEIN_Kernel", platform.release(), slot=True)
    return f"{name} {arch}"


if __name__ == "__main__":
    main(check)
