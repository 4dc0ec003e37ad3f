"""ClassAd text helpers: string literals, and checking that a value is one expression.

A submit value is pasted into the job ad as ClassAd source text, so a value
that is not exactly one complete expression (`a; Cmd = "/bin/sh"`) could
smuggle attributes into the ad: it is refused before it gets there.
"""

from __future__ import annotations

from typing import TypeGuard

from glidewms import classads
from glidewms.submit.model import CLUSTER_PLACEHOLDER

_checked: dict[str, str | None] = {}


def quote(value: str) -> str:
    """A ClassAd string literal (only `\\` and `"` need escaping; newlines as \\n)."""
    text = value.replace("\\", "\\\\").replace('"', '\\"')
    if "\n" in text or "\r" in text:
        text = text.replace("\n", "\\n").replace("\r", "\\r")
    return '"' + text + '"'


def problem(text: str) -> str | None:
    """Why `text` is not one complete ClassAd expression, or None if it is (cached)."""
    text = text.strip()
    if text in _checked:
        return _checked[text]
    found = _problem(text.replace(CLUSTER_PLACEHOLDER, "0"))
    if len(_checked) > 20000:
        _checked.clear()
    _checked[text] = found
    return found


def _problem(text: str) -> str | None:
    # classad2.ExprTree stops quietly at a top-level `;` or `]` (`"a; B = 1"` parses
    # as `a`), which would let a value smuggle attributes into the job ad.
    if not text:
        return "expected a ClassAd expression"
    depth, i = 0, 0
    while i < len(text):
        c = text[i]
        if c in "\"'":
            end = i + 1
            while end < len(text) and text[end] != c:
                end += 2 if text[end] == "\\" else 1
            if end >= len(text):
                return "unterminated quote in ClassAd expression"
            i = end
        elif c == "/" and text.startswith("/*", i):
            end = text.find("*/", i + 2)
            if end < 0:
                return "unterminated comment in ClassAd expression"
            i = end + 1
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
            if depth < 0:
                return f"unbalanced {c!r} in ClassAd expression"
        elif c == ";" and depth == 0:
            return "';' is not allowed in a ClassAd expression"
        i += 1
    try:
        classads.parse_expr(text)
    except classads.ClassAdError:
        return "not a valid ClassAd expression"
    return None


def evaluate(text: str, attrs: dict[str, str] | None = None) -> object:
    """The value of an expression in the job's ad so far (for sanity checks)."""
    ad_text = "[ " + "".join(f"{k} = {v}; " for k, v in (attrs or {}).items()) + "]"
    try:
        ad = classads.parse_ad(ad_text.replace(CLUSTER_PLACEHOLDER, "0"))
        ad["_glidewms_probe"] = classads.parse_expr(text.replace(CLUSTER_PLACEHOLDER, "0"))
        return ad.eval("_glidewms_probe")
    except Exception:
        return None


def is_number(value: object) -> TypeGuard[int | float]:
    return type(value) in (int, float)  # not bool, nor classad2's IntEnum Undefined/Error
