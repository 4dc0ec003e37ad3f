"""`$(...)` expansion as condor_submit does it, bounded.

The scanner follows HTCondor's `next_config_macro`: `$(name)` and `$(name:default)`
with name characters `[A-Za-z0-9_./]`, `$$(...)` left alone for the execute side,
`$(DOLLAR)` turned into `$` only at the very end, and the macro functions `$ENV`,
`$RANDOM_CHOICE`, `$RANDOM_INTEGER`, `$CHOICE`, `$SUBSTR`, `$INT`, `$REAL`,
`$STRING`, `$EVAL`, `$BASENAME`, `$DIRNAME` and `$F[pnxdqabfwu]` (see `functions`).
An undefined macro expands to nothing, as in HTCondor.

HTCondor splices a macro's raw value into the text and rescans from the start;
we expand each value recursively and then rescan the result until it is stable,
which gives the same text (names built from macros, `$(a$(b))`, included) while
keeping track of the chain of macros: a cycle is an error naming the macro, not
memory filling up, and so is any expansion past `Limits`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from glidewms.submit.model import CLUSTER_PLACEHOLDER, Limits, SubmitError

CLUSTER_SENTINEL = "\x00cluster\x00"
"""Stands for the cluster id while expanding (input text never holds NUL)."""

_PREFIX_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")
_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_./")
_DEFAULT_EXTRA = frozenset("$ ,\\:")
FUNCTIONS = frozenset(
    {
        "ENV",
        "RANDOM_CHOICE",
        "RANDOM_INTEGER",
        "CHOICE",
        "SUBSTR",
        "INT",
        "REAL",
        "STRING",
        "EVAL",
        "BASENAME",
        "DIRNAME",
    }
)
_F_LETTERS = frozenset("pnxdqabfwu")


@dataclass(frozen=True)
class MacroRef:
    """One `$...(...)` found in a text: [start, end) and its parts."""

    start: int
    end: int
    func: str | None  # None for a plain `$(name)`; "F..." for the file-name functions
    body: str


def _is_function(name: str) -> bool:
    if name in FUNCTIONS:
        return True
    return name.startswith("F") and all(c.lower() in _F_LETTERS for c in name[1:])


def _body_end(text: str, start: int, colon_rules: bool) -> int | None:
    """Index of the `)` closing a body that starts at `start`, or None if the body
    has a character HTCondor does not allow there (then it is not a macro)."""
    if not colon_rules:
        end = text.find(")", start)
        return None if end < 0 else end
    i, after_colon, n = start, False, len(text)
    while i < n:
        c = text[i]
        if c == ")":
            return i
        i += 1
        if c == ":" and not after_colon:
            after_colon = True
            continue
        if after_colon:
            if c == "(":
                close = text.find(")", i)
                if close >= 0:
                    i = close + 1
                    continue
            elif c in _DEFAULT_EXTRA:
                continue
        if c not in _ID_CHARS:
            return None
    return None


def find_macro(text: str, pos: int = 0, skip_dollar: bool = True) -> MacroRef | None:
    """The first macro at or after `pos` (`$(DOLLAR)` skipped unless asked for),
    scanning exactly as HTCondor does (so `$$$(x)` is `$` then `$(x)`)."""
    n = len(text)
    i = text.find("$", pos)
    while i >= 0:
        p = i + 1
        doubled = p < n and text[p] == "$"
        if doubled:
            p += 1
        q = p
        while q < n and text[q] in _PREFIX_CHARS:
            q += 1
        if q >= n or text[q] != "(":
            i = text.find("$", q)
            continue
        name = text[p:q]
        if doubled or (name and not _is_function(name)):
            i = text.find("$", q)
            continue
        func = name or None
        body_start = q + 1
        end = _body_end(text, body_start, func is None or func == "ENV")
        if end is None:
            i = text.find("$", body_start)
            continue
        body = text[body_start:end]
        if func is None and skip_dollar and body.lower() == "dollar":
            i = text.find("$", end)
            continue
        return MacroRef(i, end + 1, func, body)
    return None


Lookup = Callable[[str], "str | None"]


class Expander:
    """Expands text against `lookup` (name -> raw value or None), within `limits`.

    `functions` evaluates `$FUNC(...)`; it is given the expander so that it can
    look names up and expand arguments. `undefined` is told every undefined
    name met (for warnings); `volatile` becomes true when the result depended on
    a name in `volatile_names` or on a random function (so it cannot be cached).
    """

    def __init__(
        self,
        lookup: Lookup,
        limits: Limits,
        error: Callable[[str], SubmitError],
        functions: Callable[[Expander, str, str], str],
        volatile_names: frozenset[str] = frozenset(),
        undefined: Callable[[str], None] | None = None,
    ):
        self.lookup, self.limits, self.error = lookup, limits, error
        self.functions, self.volatile_names = functions, volatile_names
        self.undefined = undefined
        self.volatile = False
        self._substitutions = 0

    def expand(self, text: str) -> str:
        """Fully expanded text, `$(DOLLAR)` -> `$`, cluster placeholder restored."""
        self._substitutions = 0
        out = self.expand_inner(text, ())
        if "$" in out:
            out = self._dollars(out)
        if CLUSTER_SENTINEL in out:
            out = out.replace(CLUSTER_SENTINEL, CLUSTER_PLACEHOLDER)
        return out

    def expand_inner(self, text: str, stack: tuple[str, ...]) -> str:
        """Expanded text that may still hold sentinels and `$(DOLLAR)`."""
        if "$" not in text:
            return text
        if len(stack) > self.limits.max_macro_depth:
            raise self.error(
                f"macros nested more than {self.limits.max_macro_depth} deep "
                f"({' -> '.join(stack[-5:])} ...)"
            )
        while True:
            new = self._pass(text, stack)
            if new == text:
                return new
            text = new

    def _pass(self, text: str, stack: tuple[str, ...]) -> str:
        parts: list[str] = []
        pos = 0
        size = 0
        while (ref := find_macro(text, pos)) is not None:
            self._substitutions += 1
            if self._substitutions > self.limits.max_substitutions:
                raise self.error(
                    "macro expansion does not end: more than "
                    f"{self.limits.max_substitutions} substitutions"
                )
            if ref.func is None:
                value = self.value_of(ref.body, stack)
            else:
                value = self.functions(self, ref.func, ref.body)
            parts.append(text[pos : ref.start])
            parts.append(value)
            size += ref.start - pos + len(value)
            if size > self.limits.max_value_bytes:
                raise self.error(
                    f"a value expands to more than {self.limits.max_value_bytes} bytes"
                )
            pos = ref.end
        if not parts:
            return text
        parts.append(text[pos:])
        return "".join(parts)

    def value_of(self, body: str, stack: tuple[str, ...]) -> str:
        """`$(name)` or `$(name:default)`: the expanded value ("" when undefined)."""
        name, colon, default = body.partition(":")
        lower = name.lower()
        if lower in stack:
            chain = " -> ".join(f"$({n})" for n in (*stack[stack.index(lower) :], lower))
            raise self.error(f"macro $({name}) refers to itself ({chain})")
        if lower in self.volatile_names:
            self.volatile = True
        raw = self.lookup(lower)
        if raw is not None and raw != "":
            value = self.expand_inner(raw, (*stack, lower))
            if len(value) > self.limits.max_value_bytes:
                raise self.error(
                    f"$({name}) expands to more than {self.limits.max_value_bytes} bytes"
                )
            return value
        if colon:
            return self.expand_inner(default, stack)
        if raw is None and self.undefined is not None:
            self.undefined(name)
        return ""

    def lookup_expanded(self, name: str) -> str | None:
        """A name's expanded value, None if undefined (for the macro functions)."""
        raw = self.lookup(name.strip().lower())
        if name.strip().lower() in self.volatile_names:
            self.volatile = True
        return None if raw is None else self.expand_inner(raw, (name.strip().lower(),))

    def _dollars(self, text: str) -> str:
        parts, pos = [], 0
        while (ref := find_macro(text, pos, skip_dollar=False)) is not None:
            if ref.func is None and ref.body.lower() == "dollar":
                parts.append(text[pos : ref.start] + "$")
            else:
                parts.append(text[pos : ref.end])
            pos = ref.end
        parts.append(text[pos:])
        return "".join(parts)


def expand_self(value: str, name: str, current: str | None) -> str:
    """`name = ... $(name) ...`: only the self-references are expanded, at the
    assignment, against the previous value (undefined: "", or the default)."""
    lower = name.lower()
    if "$" not in value:
        return value
    parts, pos = [], 0
    while (ref := find_macro(value, pos)) is not None:
        parts.append(value[pos : ref.start])
        key, colon, default = ref.body.partition(":")
        if ref.func is None and key.lower() == lower:
            parts.append(current if current else (default if colon else ""))
        else:
            parts.append(value[ref.start : ref.end])
        pos = ref.end
    parts.append(value[pos:])
    return "".join(parts)


def macro_names(text: str) -> list[str]:
    """The lower-case names a text refers to as `$(name)` (for the typo check)."""
    names, pos = [], 0
    while (ref := find_macro(text, pos)) is not None:
        if ref.func is None:
            names.append(ref.body.partition(":")[0].lower())
        pos = ref.start + 2
    return names


def mapping_lookup(*layers: Mapping[str, str]) -> Lookup:
    """A lookup over dicts keyed by lower-case name, first hit wins."""

    def lookup(name: str) -> str | None:
        for layer in layers:
            if name in layer:
                return layer[name]
        return None

    return lookup
