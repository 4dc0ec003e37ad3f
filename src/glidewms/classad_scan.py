"""Where the ClassAd parser would split an ad, read only as far as bounding it.

`glidewms.classad_limits` bounds one expression's text by counting its
operators outside string literals. Two things it cannot do alone, done here
before any outside text reaches the library (`glidewms.classads` calls these
in every parser):

- name the attribute of a whole ad that is too deep or too large: an ad's
  text is split where the parser splits it (at `;` outside string literals,
  quoted names and nested brackets), and each value is bounded as an
  expression of its own;
- see through comments: the parser skips `/* ... */` and `// ...`, and a
  quote inside one would hide real operators from that count (`/* " */
  1+1+... /* " */`), so the count runs on the text with string literals and
  comments blanked out (`_mask`), which is what the parser reads as code.

It also refuses numeric literals the library would read silently wrong (an
integer past 64 bits becomes 0, a real past the double range infinity).

Most real text is settled by a cheap sufficient test (`_plainly_within`:
counts that include string contents, done by `str.count` in C); only text it
cannot settle is scanned character by character.
"""

from __future__ import annotations

import dataclasses
import math
import re

from glidewms.classad_limits import INT64, AdLimitExceeded, AdLimits, check_expression


def bound_ad(text: str, limits: AdLimits) -> None:
    """A bracketed ad's text: its size, its number of attributes, and each
    attribute's value as an expression (AdLimitExceeded naming it)."""
    size = _bytes(text)
    if size > limits.max_ad_bytes:
        raise AdLimitExceeded(None, f"ad of {size} bytes; at most {limits.max_ad_bytes}")
    if _plainly_within(text, size, limits, limits.max_value_bytes, ad=True):
        return
    pieces = _attributes(text)
    if len(pieces) > limits.max_attributes:
        raise AdLimitExceeded(
            None, f"ad with {len(pieces)} attributes; at most {limits.max_attributes}"
        )
    for name, value, masked in pieces:
        if name is not None and _bytes(name) > limits.max_name_bytes:
            raise AdLimitExceeded(
                name[:40] + "…", f"name longer than {limits.max_name_bytes} bytes"
            )
        _bound_code(masked, _bytes(value), name, limits, "value")


def bound_expression(text: str, attribute: str | None, limits: AdLimits) -> None:
    """One expression's text: size, operators, nesting and numeric literals
    (AdLimitExceeded naming `attribute`)."""
    size = _bytes(text)
    if _plainly_within(text, size, limits, limits.max_expression_bytes, ad=False):
        return
    _bound_code(_mask(text), size, attribute, limits, "expression")


def _bound_code(code: str, size: int, attribute: str | None, limits: AdLimits, what: str) -> None:
    """The checks on masked text (`_mask`) of an attribute's value or of an
    expression given alone, whose unmasked size is `size`."""
    most = limits.max_value_bytes if what == "value" else limits.max_expression_bytes
    if size > most:
        raise AdLimitExceeded(attribute, f"{what} of {size} bytes; at most {most}")
    for found in _NUMBER.finditer(code):
        literal = found.group(0)
        real = found.group(1) or found.group(2) or found.group(3)
        value = float(literal) if real else int(literal)
        if (isinstance(value, int) and value >= INT64) or not math.isfinite(value):
            raise AdLimitExceeded(attribute, f"number {literal[:40]} is out of range")
    # the masked text: neither strings nor comments hide operators from the count
    check_expression(code, attribute, dataclasses.replace(limits, max_expression_bytes=size + 1))


def _bytes(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


_OPERATORS = "+-*/%<>=!&|?:^~."  # as classad_limits counts them
_LONG_NUMBER = re.compile(r"\d{19}|[eE][+-]?\d{3}")
# a numeric literal: integer part, fraction, exponent (not inside a name)
_NUMBER = re.compile(r"(?<![A-Za-z0-9_.])(?:\d+(\.\d*)?|(\.\d+))([eE][+-]?\d+)?")


def _plainly_within(text: str, size: int, limits: AdLimits, value_bytes: int, *, ad: bool) -> bool:
    """A cheap sufficient test (str.count runs in C): every operator character,
    bracket and `;` counted, even inside strings and comments, is within the
    bounds, and nothing looks like an oversized number. Almost every real ad
    and expression passes here; the rest take the exact scan."""
    if size > value_bytes or _LONG_NUMBER.search(text):
        return False
    if ad and text.count(";") + 1 > limits.max_attributes:
        return False
    brackets = text.count("(") + text.count("[") + text.count("{")
    if brackets > limits.max_nesting + (1 if ad else 0):
        return False
    return sum(map(text.count, _OPERATORS)) <= limits.max_operators


def _mask(text: str) -> str:
    """The text with the contents of string literals, quoted names and
    comments blanked out (same length, so positions still match `text`):
    what is left is what the parser reads as code."""
    out = list(text)
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch in "\"'":
            i += 1
            while i < n and text[i] != ch:
                skip = 2 if text[i] == "\\" else 1
                out[i : i + skip] = " " * len(out[i : i + skip])
                i += skip
        elif ch == "/" and text.startswith("/*", i):
            end = text.find("*/", i + 2)
            end = n if end < 0 else end + 2
            out[i:end] = " " * (end - i)
            i = end - 1
        elif ch == "/" and text.startswith("//", i):
            end = text.find("\n", i)
            end = n if end < 0 else end
            out[i:end] = " " * (end - i)
            i = end - 1
        i += 1
    return "".join(out)


def _attributes(text: str) -> list[tuple[str | None, str, str]]:
    """(name, value, masked value) of each top-level attribute of a bracketed ad,
    split where the parser splits: at `;` outside strings, comments and
    nested brackets."""
    inner = text.strip()[1:-1]
    masked = _mask(inner)
    pieces: list[tuple[str | None, str, str]] = []
    depth = start = 0
    for i, ch in enumerate(masked):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == ";" and depth == 0:
            pieces.append(_piece(inner[start:i], masked[start:i]))
            start = i + 1
    pieces.append(_piece(inner[start:], masked[start:]))
    return [p for p in pieces if p[2].strip() or p[0] is not None]


def _piece(text: str, masked: str) -> tuple[str | None, str, str]:
    """One `Name = value` piece: its name (None without an `=`; a quoted
    name's quotes dropped), its value, and its value masked."""
    at = masked.find("=")
    if at < 0:
        return None, text, masked
    return text[:at].strip().strip("'") or None, text[at + 1 :], masked[at + 1 :]
