"""`if` / `elif` / `else` / `endif` in submit files, as HTCondor's config parser has them.

A condition is, after macro expansion: empty (false), a number (true unless 0),
`true`/`false` (also `yes`/`no`/`t`/`f`), `defined NAME` (NAME has a non-empty
value), or `version OP X.Y[.Z]` compared with the HTCondor version glidewms
speaks (that of the bundled htcondor library); `!` in front negates. Anything
else is refused as HTCondor refuses it ("complex conditionals are not
supported").
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from glidewms import classads  # noqa: F401  (decides CONDOR_CONFIG before htcondor2 loads)

_NUMBER = re.compile(r"-?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_VERSION = re.compile(r"version\s*(!?)([<>=]?)(=?)\s*(\S.*)?", re.IGNORECASE)
_VERSION_LITERAL = re.compile(r"[vV]?(\d+)\.(\d+)(?:\.(\d+))?")
_DEFINED = re.compile(r"defined(?:\s+(.*))?", re.IGNORECASE)
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_./]*")
_TRUE_WORDS = {"true": True, "false": False, "yes": True, "no": False, "t": True, "f": False}


def condor_version() -> tuple[int, int, int]:
    """The HTCondor version whose submit language we speak (from htcondor2)."""
    import htcondor2  # after glidewms.classads, which prepares its configuration

    m = re.search(r"(\d+)\.(\d+)\.(\d+)", htcondor2.version())
    return (int(m.group(1)), int(m.group(2)), int(m.group(3))) if m else (25, 0, 0)


def evaluate(
    text: str, expanded: bool, is_defined: Callable[[str], bool], version: tuple[int, int, int]
) -> bool:
    """The truth of an (already macro-expanded) condition, or ValueError why not."""
    expr = text.strip()
    inverted = expr.startswith("!")
    if inverted:
        expr = expr[1:].strip()
    if expanded and not expr:
        return inverted
    return _evaluate(expr, is_defined, version) != inverted


def _evaluate(expr: str, is_defined: Callable[[str], bool], version: tuple[int, int, int]) -> bool:
    if _NUMBER.fullmatch(expr):
        return float(expr) != 0
    if expr.lower() in _TRUE_WORDS:
        return _TRUE_WORDS[expr.lower()]
    if m := _VERSION.fullmatch(expr):
        negated, op, or_equal, literal = m.group(1), m.group(2), m.group(3), m.group(4) or ""
        lit = _VERSION_LITERAL.fullmatch(literal.strip())
        if lit is None or int(lit.group(1)) < 6:
            raise ValueError("the version literal is invalid")
        theirs = (
            int(lit.group(1)),
            int(lit.group(2)),
            int(lit.group(3)) if lit.group(3) is not None else version[2],
        )
        diff = (version > theirs) - (version < theirs)
        wanted = {"<": -1, "=": 0, ">": 1, "": 0}[op]
        result = diff == wanted or (bool(or_equal) and diff == 0)
        return result != bool(negated)
    if m := _DEFINED.fullmatch(expr):
        name = (m.group(1) or "").strip()
        if not name:
            return False
        if _NUMBER.fullmatch(name) or name.lower() in ("true", "false"):
            return True
        if _IDENT.fullmatch(name):
            return is_defined(name) or name.lower() in _TRUE_WORDS
        raise ValueError("defined argument must be param name, boolean, or number")
    if _IDENT.fullmatch(expr):
        raise ValueError("expression is not a conditional")
    raise ValueError("complex conditionals are not supported")


@dataclass
class IfStack:
    """Which lines are live: one frame per open `if` (taken?, any branch taken?, else seen?)."""

    max_depth: int = 60
    frames: list[list[bool]] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)  # where each open `if` is

    def enabled(self) -> bool:
        return all(f[0] for f in self.frames)

    def _outer_enabled(self) -> bool:
        return all(f[0] for f in self.frames[:-1])

    def begin_if(self, test: Callable[[], bool], line: int = 0) -> None:
        if len(self.frames) >= self.max_depth:
            raise ValueError("if nesting too deep")
        value = test() if self.enabled() else False
        self.frames.append([value, value, False])
        self.lines.append(line)

    def begin_elif(self, test: Callable[[], bool]) -> None:
        if not self.frames:
            raise ValueError("elif without matching if")
        frame = self.frames[-1]
        if frame[2]:
            raise ValueError("elif is not allowed after else")
        if frame[1] or not self._outer_enabled():
            frame[0] = False
        else:
            frame[0] = test()
            frame[1] = frame[0]

    def begin_else(self) -> None:
        if not self.frames:
            raise ValueError("else without matching if")
        frame = self.frames[-1]
        if frame[2]:
            raise ValueError("else is not allowed after else")
        frame[2] = True
        frame[0] = not frame[1]

    def end_if(self) -> None:
        if not self.frames:
            raise ValueError("endif without matching if")
        self.frames.pop()
        self.lines.pop()
