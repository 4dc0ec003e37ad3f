"""The script side of the validation contract: glidein_config and the result file.

A validation script is run as ``SCRIPT GLIDEIN_CONFIG`` in the pilot's work
directory. It reads ``KEY VALUE`` lines from glidein_config, appends the values
it publishes (a later line wins, as in GlideinWMS) and writes one JSON object
to the file named by ``$GLIDEIN_RESULT_FILE``:

    {"status": "ok" | "failed", "category": ..., "detail": ...,
     "slot_attrs": [KEY, ...], "job_env": [KEY, ...]}

``slot_attrs`` and ``job_env`` declare which of the keys the script wrote the
pilot publishes as slot attributes and as job environment variables.
"""

from __future__ import annotations

import json
import os
import re
import sys
from typing import Any, Callable, Dict, List, Optional

CATEGORIES = ("WN_Resource", "Network", "Config", "VO_Config", "Corruption", "VO_Proxy")
# What may not be in a glidein_config line (the agent's config.py refuses it too):
# every control character but tab, NEL and the Unicode line/paragraph separators.
CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")
KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class Failure(Exception):
    """A failed check: the category says whose problem it is."""

    def __init__(self, category: str, detail: str) -> None:
        super().__init__(detail)
        if category not in CATEGORIES:
            raise ValueError(f"unknown failure category {category!r}")
        self.category = category
        self.detail = detail


def read(path: str) -> Dict[str, str]:
    """``KEY VALUE`` lines; ``#`` comments; the last line for a key wins."""
    values: Dict[str, str] = {}
    with open(path, encoding="utf-8", newline="") as handle:
        for raw in handle.read().split("\n"):
            if CONTROL.search(raw):
                raise ValueError(f"{path}: a line holds a control character: {raw[:80]!r}")
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split(None, 1)
            values[parts[0]] = parts[1].strip() if len(parts) > 1 else ""
    return values


class Script:
    """One run of a validation script: its config, what it publishes, its result."""

    def __init__(self, config_path: str) -> None:
        self.config_path = config_path
        self.values = read(config_path)
        self.slot_attrs: List[str] = []
        self.job_env: List[str] = []

    def get(self, key: str, default: str = "") -> str:
        return self.values.get(key, default) or default

    def add(self, key: str, value: Any, slot: bool = False, env: bool = False) -> None:
        """Append ``KEY VALUE`` to glidein_config; optionally publish it."""
        text = str(value).lower() if isinstance(value, bool) else str(value)
        if CONTROL.search(text) or not KEY.fullmatch(key):
            raise ValueError(f"cannot write {key!r} = {text!r} to glidein_config")
        with open(self.config_path, "a", encoding="utf-8") as handle:
            handle.write(f"{key} {text}\n")
        self.values[key] = text
        if slot and key not in self.slot_attrs:
            self.slot_attrs.append(key)
        if env and key not in self.job_env:
            self.job_env.append(key)

    def result(self, status: str, category: str = "", detail: str = "") -> None:
        body = {
            "status": status,
            "category": category,
            "detail": detail,
            "slot_attrs": self.slot_attrs,
            "job_env": self.job_env,
        }
        target = os.environ.get("GLIDEIN_RESULT_FILE")
        if target:
            with open(target, "w", encoding="utf-8") as handle:
                json.dump(body, handle)
        else:
            print(json.dumps(body))


def main(check: Callable[[Script], Optional[str]]) -> None:
    """Run ``check`` (which returns an ok detail or raises Failure) and exit.

    Exit status 0 for ok, 1 for a failed check, so a script also reads right
    to a caller that ignores the result file.
    """
    if len(sys.argv) != 2:
        sys.exit(f"usage: {os.path.basename(sys.argv[0])} GLIDEIN_CONFIG")
    script = Script(sys.argv[1])
    try:
        detail = check(script) or ""
    except Failure as exc:
        script.result("failed", exc.category, exc.detail)
        sys.exit(1)
    script.result("ok", "", detail)
