"""Validation: free space in the work directory (GLIDEIN_Min_Disk_MB, default 1000).

Marked periodic in scripts.list: a disk that fills up under the pilot stops
new jobs from starting.
"""

from __future__ import annotations

import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from gconfig import Failure, Script, main


def check(script: Script) -> str:
    work = script.get("GLIDEIN_Work_Dir", os.path.dirname(os.path.abspath(script.config_path)))
    minimum = int(script.get("GLIDEIN_Min_Disk_MB", "1000") or 0)
    free = shutil.disk_usage(work).free // (1024 * 1024)
    if free < minimum:
        raise Failure("WN_Resource", f"{free} MB free in {work}, GLIDEIN_Min_Disk_MB is {minimum}")
    return f"{free} MB free in {work}"


if __name__ == "__main__":
    main(check)
