"""Checks for values that end up in a script, a config line or a command line.

A value from a frontend's request, an entry or a service's configuration may
travel to a pilot's command line, then into ``glidein_config`` (one
``KEY VALUE`` line each), a batch job script or a submit description. One
newline in it and the pilot reads extra lines: a frontend's ``pool_url`` with
``\\nGLIDEIN_Black_Hole_Jobs 0`` once turned off black-hole protection. So
every such value is checked where it enters (configuration models, the
factory's request model) and again where it leaves (``pilot_args``):

- names by a pattern that must match the *whole* value (``re.fullmatch``: a
  ``$`` also matches before a trailing newline with ``re.match``);
- free text without control characters: C0 and DEL, the C1 range (NEL, U+0085,
  ends a line for Python's ``str.splitlines``) and the Unicode line and
  paragraph separators;
- URLs parsed: scheme http or https, a host, a valid port, no blank and no
  control character anywhere.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

# Characters that end or bend a line somewhere downstream (bash, Python's
# splitlines, a terminal): C0, DEL, C1, U+2028, U+2029.
CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def control_character(value: str) -> str | None:
    """The first control character of ``value`` as an escape (``'\\n'``), or None."""
    found = CONTROL.search(value)
    return None if found is None else repr(found.group())[1:-1]


def one_line(value: str, what: str = "value") -> str:
    """``value`` unchanged, or ValueError naming ``what`` and the character."""
    bad = control_character(value)
    if bad is not None:
        raise ValueError(f"{what}: control character {bad} is not allowed")
    return value


def full_match(pattern: re.Pattern[str], value: str, what: str, expected: str) -> str:
    """``value`` if ``pattern`` matches all of it; else ValueError saying what was expected."""
    if pattern.fullmatch(value) is None:
        raise ValueError(f"{what}: expected {expected}, got {value!r}")
    return value


def http_url(value: str, what: str = "URL") -> str:
    """An http:// or https:// URL with a host (and a valid port, if any), on one
    line and without blanks; returned unchanged."""
    one_line(value, what)
    if any(ch.isspace() for ch in value):
        raise ValueError(f"{what}: blanks are not allowed in a URL, got {value!r}")
    try:
        parts = urlsplit(value)
        port = parts.port  # ValueError for a port out of range or not a number
    except ValueError as exc:
        raise ValueError(f"{what}: not a URL ({exc}): {value!r}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{what}: expected http(s)://host[:port][/path], got {value!r}")
    if port is None and parts.netloc.endswith(":"):
        raise ValueError(f"{what}: empty port in {value!r}")
    return value
